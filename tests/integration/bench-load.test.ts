/**
 * `npm run bench:load`'s library, short form: a real local server with a small chat model, N = 1
 * and 2, a few tokens each. The report has every field the CLI prints, each stream matches the same
 * request run alone (0 tokens lost or changed), the prefix cache reset after the references leaves
 * the levels copying only what distinct prompts share, and the loopback rule refuses other hosts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { runLoad, type LoadProgress } from "../../scripts/lib/bench-load";
import { compareChunks, loopbackUrl, percentile } from "../../scripts/lib/load-client";
import { ADMIN_TOKEN_FOR_TESTS } from "../../scripts/lib/local-worker";
import { makeSmallChatModel, startWithModels } from "./helpers";

let w: LocalWorker;

beforeAll(async () => {
  w = await startWithModels({ chat: makeSmallChatModel() }, { DEFAULT_MODEL: "chat", RATE_LIMIT_ENABLED: "false" });
});
afterAll(() => w?.dispose());

describe("bench:load library", () => {
  it("drives N = 1 and 2 streaming clients and reports throughput, latencies, failures and placement", async () => {
    const seen: LoadProgress[] = [];
    const report = await runLoad({
      url: w.url.href,
      concurrency: [1, 2],
      requests: (n) => 2 * n,
      maxTokens: 4,
      levelMs: 60_000,
      graceMs: 30_000,
      phaseMs: 300,
      adminToken: ADMIN_TOKEN_FOR_TESTS,
      onProgress: (p) => seen.push(p),
    });
    // Distinct prompts: every request of the run its own, each run alone just before its level.
    expect(report.prompts).toBe("distinct");
    expect(report.warnings).toEqual([]);
    expect(report.references).toBe(2 + 4);
    expect(report.levels.map((l) => l.concurrency)).toEqual([1, 2]);
    for (const l of report.levels) {
      expect(l.requests).toBe(2 * l.concurrency);
      expect(l.failed).toBe(0);
      expect(l.refusals).toEqual([]);
      expect(l.completed).toBe(l.requests);
      expect(l.completionTokens).toBeGreaterThan(0);
      expect(l.completionTokens).toBeLessThanOrEqual(4 * l.requests);
      expect(l.decodeTokensPerSec).toBeGreaterThan(0);
      expect(l.ttftMs.p50).toBeGreaterThan(0);
      expect(l.ttftMs.p99).toBeGreaterThanOrEqual(l.ttftMs.p50 ?? 0);
      // Every request with its start and TTFT, in the JSON: the largest TTFT is the p99's source.
      expect(l.perRequest).toHaveLength(l.requests);
      expect(Math.min(...l.perRequest.map((q) => q.startMs))).toBe(0);
      expect(Math.max(...l.perRequest.map((q) => q.ttftMs ?? 0))).toBe(Math.round(l.ttftMs.p99 ?? -1));
      expect(l.perRequest.reduce((t, q) => t + q.completionTokens, 0)).toBe(l.completionTokens);
      expect(l.tpotMs.p50 === null || l.tpotMs.p50 > 0).toBe(true);
      expect(l.cutByTimeLimit).toBe(0);
      expect(l.tokensLost).toBe(0);
      expect(l.tokensChanged).toBe(0);
      expect(l.placementVersions.length).toBeGreaterThanOrEqual(1);
      expect(l.instances?.min).toBeGreaterThanOrEqual(1);
      // Its prompts' tokens from /metrics, read after the isolate's flush: every request's counted.
      expect(l.promptTokens).toBeGreaterThanOrEqual(l.requests);
      expect(l.sharedPromptTokens).toBeGreaterThanOrEqual(0);
      // The reset released the references' kept donors: the level copies at most the chat
      // template's opening its numbered prompts share, not the prompts its references ran.
      expect(l.prefixCacheReset?.released).toBeGreaterThanOrEqual(l.requests);
      expect(l.sharedPromptTokens).toBeLessThan((l.promptTokens ?? 0) / 2);
    }
    expect(report.placementVersionsSeen.length).toBeGreaterThanOrEqual(1);
    expect(seen.filter((p) => p.stage === "reference" && p.concurrency === 2).at(-1)).toMatchObject({
      done: 4,
      total: 4,
    });
    expect(seen.filter((p) => p.stage === "load" && p.concurrency === 2).at(-1)).toMatchObject({ done: 4, total: 4 });
  });

  it("refuses anything but a loopback server", async () => {
    expect(loopbackUrl("http://127.0.0.1:8787").port).toBe("8787");
    expect(loopbackUrl("http://localhost:1").hostname).toBe("localhost");
    expect(loopbackUrl("http://[::1]:8787").hostname).toBe("[::1]");
    expect(() => loopbackUrl("https://edge-moe.example.workers.dev")).toThrow(/loopback/);
    expect(() => loopbackUrl("http://10.0.0.1:8787")).toThrow(/loopback/);
    expect(() => loopbackUrl("ftp://127.0.0.1")).toThrow(/http/);
    await expect(
      runLoad({
        url: "http://192.168.1.1",
        concurrency: [1],
        requests: 1,
        maxTokens: 1,
        levelMs: 1,
        graceMs: 1,
        phaseMs: 1,
      }),
    ).rejects.toThrow(/loopback/);
  });

  it("counts lost and changed chunks, and takes nearest-rank percentiles", () => {
    expect(compareChunks(["a", "b", "c"], ["a", "b", "c"])).toEqual({ changed: 0, lost: 0 });
    expect(compareChunks(["a", "x"], ["a", "b", "c"])).toEqual({ changed: 1, lost: 1 });
    expect(compareChunks(["a", "b", "c", "d"], ["a", "b", "c"])).toEqual({ changed: 1, lost: 0 });
    // Cut short by the benchmark's own time limit: only what arrived is compared.
    expect(compareChunks(["a"], ["a", "b", "c"], true)).toEqual({ changed: 0, lost: 0 });
    expect(compareChunks(["x"], ["a", "b", "c"], true)).toEqual({ changed: 1, lost: 0 });
    expect(percentile([5, 1, 3, 2, 4], 50)).toBe(3);
    expect(percentile([5, 1, 3, 2, 4], 99)).toBe(5);
    expect(percentile([], 50)).toBeNull();
  });
});
