/**
 * The workload's prompts (scripts/lib/skewed-prompts.ts): distinct requests are numbered, never
 * repeat within a run, and keep their phase's skew (phase A's requests say only "apple", phase B's
 * only count), the phase moving every `phaseEvery` requests.
 */
import { describe, expect, it } from "vitest";
import { distinctRequests, numberedPrompt, SKEW_PHASES } from "../../../scripts/lib/skewed-prompts";

/** The prompt without its number. */
const body = (content: string) => content.replace(/^\d+\. /, "");

describe("distinctRequests", () => {
  it("numbers every request, so no two prompts are the same", () => {
    const reqs = distinctRequests(1, 40, 16);
    expect(reqs.map((r) => r.content.split(".")[0])).toEqual(Array.from({ length: 40 }, (_, k) => String(k + 1)));
    expect(new Set(reqs.map((r) => r.content)).size).toBe(40);
    expect(reqs[16].content).toBe(numberedPrompt(17, body(reqs[16].content)));
    expect(reqs[16].content.startsWith("17. ")).toBe(true);
  });

  it("keeps each phase's skew: its own variants only, all of them, the phase moving every phaseEvery", () => {
    const reqs = distinctRequests(1, 32, 8);
    expect(reqs.map((r) => r.phase)).toEqual([0, 1, 0, 1].flatMap((p) => Array(8).fill(p)));
    for (const r of reqs) expect(SKEW_PHASES[r.phase].variants).toContain(body(r.content));
    for (const [phase, { variants }] of SKEW_PHASES.entries()) {
      const used = new Set(reqs.filter((r) => r.phase === phase).map((r) => body(r.content)));
      expect(used).toEqual(new Set(variants));
    }
    // Phase A's prompts are one word repeated; B's count from 1.
    expect(
      body(reqs[0].content)
        .split(" ")
        .every((w) => w === "apple"),
    ).toBe(true);
    expect(body(reqs[8].content).startsWith("1 2 3 ")).toBe(true);
  });

  it("numbers on from `first`: a run's next level repeats none of its earlier prompts", () => {
    const first = distinctRequests(1, 8, 4);
    const next = distinctRequests(9, 32, 16);
    expect(next[0].content.startsWith("9. ")).toBe(true);
    const all = [...first, ...next].map((r) => r.content);
    expect(new Set(all).size).toBe(all.length);
    // The same level numbered again is the same requests (--after-burst's single streams).
    expect(distinctRequests(1, 8, 4)).toEqual(first);
  });

  it("refuses a phase length below one request", () => {
    expect(() => distinctRequests(1, 4, 0)).toThrow(/phaseEvery/);
    expect(distinctRequests(1, 0, 4)).toEqual([]);
  });
});
