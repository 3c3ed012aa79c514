/**
 * An isolate's recorder: what it records, that a flush sends it once, that a failed flush keeps
 * it for the next one, and that flushes are batched (one per interval however many requests).
 */
import { describe, expect, it, vi } from "vitest";
import { METRICS } from "../../../src/observability/catalog";
import {
  FLUSH_INTERVAL_MS,
  flushNow,
  recordGeneration,
  recordRequest,
  routeLabel,
  scheduleFlush,
} from "../../../src/observability/recorder";
import { MetricSet, type MetricDelta } from "../../../src/observability/registry";

function fakeEnv(fail = () => false): { env: Env; sent: MetricDelta[] } {
  const sent: MetricDelta[] = [];
  const hub = {
    ingest: async (d: MetricDelta) => {
      if (fail()) throw new Error("hub unavailable");
      sent.push(d);
    },
  };
  return { env: { METRICS_HUB: { getByName: () => hub } } as unknown as Env, sent };
}

const merged = (ds: MetricDelta[]) => {
  const m = new MetricSet();
  for (const d of ds) m.merge(d);
  return m;
};

describe("recorder", () => {
  it("labels known routes and folds the rest into 'other' (bounded cardinality)", () => {
    expect(routeLabel("/v1/completions")).toBe("/v1/completions");
    expect(routeLabel("/v1/completions/")).toBe("/v1/completions");
    expect(routeLabel("/wp-admin/x.php")).toBe("other");
    expect(routeLabel("/")).toBe("/");
  });

  it("counts requests, refusals and generations, and a flush sends them exactly once", async () => {
    const { env, sent } = fakeEnv();
    await flushNow(env); // start from an empty recorder
    sent.length = 0;
    recordRequest("/v1/completions", "POST", 200);
    recordRequest("/v1/completions", "POST", 429);
    recordRequest("/v1/chat/completions", "POST", 503);
    recordGeneration({
      model: "m",
      ttftMs: 120,
      e2eMs: 520,
      promptTokens: 7,
      completionTokens: 5,
      decodeMs: 400,
      finish: "length",
    });
    expect(await flushNow(env)).toBe(true);
    expect(await flushNow(env)).toBe(false); // nothing new
    expect(sent).toHaveLength(1);
    const m = merged(sent);
    expect(m.counter(METRICS.requests.name, { route: "/v1/completions", method: "POST", status: "429" })).toBe(1);
    expect(m.counter(METRICS.refusals.name, { route: "/v1/completions", status: "429" })).toBe(1);
    expect(m.counter(METRICS.refusals.name, { route: "/v1/chat/completions", status: "503" })).toBe(1);
    expect(m.counter(METRICS.refusals.name, { route: "/v1/completions", status: "200" })).toBe(0);
    expect(m.counter(METRICS.completionTokens.name, { model: "m" })).toBe(5);
    const tpot = sent[0].histograms.find((h) => h.name === METRICS.tpot.name)!;
    expect(tpot.sum).toBeCloseTo(0.1, 9); // 400 ms over the 4 tokens after the first
    expect(sent[0].histograms.find((h) => h.name === METRICS.ttft.name)!.sum).toBeCloseTo(0.12, 9);
  });

  it("keeps the values when the hub call fails and sends them with the next flush", async () => {
    let down = true;
    const { env, sent } = fakeEnv(() => down);
    await flushNow(env);
    recordRequest("/health", "GET", 200);
    vi.spyOn(console, "error").mockImplementation(() => {});
    expect(await flushNow(env)).toBe(false);
    down = false;
    recordRequest("/health", "GET", 200);
    expect(await flushNow(env)).toBe(true);
    expect(merged(sent).counter(METRICS.requests.name, { route: "/health", method: "GET", status: "200" })).toBe(2);
  });

  it(
    "batches: many requests inside one interval make one flush, kept alive by waitUntil",
    async () => {
      const { env, sent } = fakeEnv();
      await flushNow(env);
      sent.length = 0;
      const kept: Promise<unknown>[] = [];
      for (let i = 0; i < 20; i++) {
        recordRequest("/v1/models", "GET", 200);
        scheduleFlush(env, (p) => kept.push(p));
      }
      expect(kept).toHaveLength(1); // later requests join the scheduled flush
      await Promise.all(kept);
      expect(sent).toHaveLength(1);
      expect(merged(sent).counter(METRICS.requests.name, { route: "/v1/models", method: "GET", status: "200" })).toBe(
        20,
      );
    },
    FLUSH_INTERVAL_MS * 5,
  );
});
