/**
 * The step loop's yields between steps (src/serving/step-yield.ts, StepBatcher): the policy as a
 * pure function, and a StepBatcher whose member's consumer needs several turns of the event loop per
 * token (as a response's start does in workerd) keeps that member in every step only with the
 * catch-up yields — with one timer a step it falls LOOKAHEAD tokens behind and drops out of steps.
 */
import { describe, expect, it, vi } from "vitest";
import { fakeStep } from "../../support/fake-step";
import type { Session } from "../../../src/serving/forward";
import { LOOKAHEAD, StepBatcher, type StepStreamSpec } from "../../../src/serving/step-batcher";
import { CATCH_UP_YIELDS, consumerBehind, macrotask } from "../../../src/serving/step-yield";

function spec(prompt: number[], maxTokens: number): StepStreamSpec {
  return {
    session: { length: 0, maxLen: 64 } as unknown as Session,
    promptIds: prompt,
    maxTokens,
    sampling: { temperature: 0, topP: 1 },
    rng: () => 0,
    eos: new Set(),
  };
}

/** Takes every token after `turns` turns of the event loop (a response being started and written). */
async function slowCollect(b: StepBatcher, sp: StepStreamSpec, turns: number): Promise<number[]> {
  const ids: number[] = [];
  for await (const id of b.tokens(sp)) {
    ids.push(id);
    for (let i = 0; i < turns; i++) await macrotask();
  }
  return ids;
}

async function collect(b: StepBatcher, sp: StepStreamSpec): Promise<number[]> {
  const ids: number[] = [];
  for await (const id of b.tokens(sp)) ids.push(id);
  return ids;
}

describe("consumerBehind", () => {
  it("is true while a member's first token is untaken or it holds LOOKAHEAD untaken tokens", () => {
    expect(consumerBehind([], LOOKAHEAD)).toBe(false);
    // Nothing produced yet (a prompt being read), or a consumer that keeps up: no extra yield.
    expect(consumerBehind([{ produced: 0, untaken: 0 }], LOOKAHEAD)).toBe(false);
    expect(consumerBehind([{ produced: 5, untaken: 1 }], LOOKAHEAD)).toBe(false);
    expect(consumerBehind([{ produced: 5, untaken: 0 }], LOOKAHEAD)).toBe(false);
    // A first token its consumer has not taken: the response is still starting.
    expect(consumerBehind([{ produced: 1, untaken: 1 }], LOOKAHEAD)).toBe(true);
    // A consumer LOOKAHEAD behind would drop out of the next step.
    expect(consumerBehind([{ produced: 7, untaken: LOOKAHEAD }], LOOKAHEAD)).toBe(true);
    // One such member among others is enough.
    const keeping = { produced: 9, untaken: 1 };
    expect(consumerBehind([keeping, keeping, { produced: 2, untaken: 2 }], LOOKAHEAD)).toBe(true);
  });
});

describe("the step loop's catch-up yields", () => {
  /** Segments per step while both members run, and what each member received. */
  async function run(catchUpYields: number) {
    const segments: number[] = [];
    const b = new StepBatcher(
      async (segs) => fakeStep(segs),
      undefined,
      (segs) => segments.push(segs),
      { catchUpYields },
    );
    // A keeps up; B needs 3 turns per token, more than the one timer a step gives it.
    const [a, s] = await Promise.all([collect(b, spec([1], 12)), slowCollect(b, spec([4], 12), 3)]);
    return { a, s, segments, steps: b.steps };
  }

  it("keep a member whose consumer needs several turns in every step; tokens unchanged", async () => {
    const off = await run(0);
    const on = await run(CATCH_UP_YIELDS);
    // The same tokens either way.
    expect(on.a).toEqual([2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5]);
    expect(on.s).toEqual([5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0]);
    expect(off.a).toEqual(on.a);
    expect(off.s).toEqual(on.s);
    // With catch-up yields both members share every step after B's prompt joined (A's first step
    // runs before B arrives, so B's last token takes a step alone): 13 steps.
    expect(on.steps).toBe(13);
    expect(on.segments.slice(1, -1).every((n) => n === 2)).toBe(true);
    // With one timer a step B falls behind and drops out of steps: more steps, some of A alone.
    expect(off.steps).toBeGreaterThan(on.steps);
    expect(off.segments.slice(1, -1).some((n) => n === 1)).toBe(true);
  });

  it("cost consumers that keep up no extra turn: one 0 ms timer a step at most", async () => {
    const b = new StepBatcher(async (segs) => fakeStep(segs));
    const timers = vi.spyOn(globalThis, "setTimeout");
    try {
      await Promise.all([collect(b, spec([1], 12)), collect(b, spec([4], 12))]);
      // The step loop's yields are its only 0 ms timers (waits carry their deadline).
      const zero = timers.mock.calls.filter(([, ms]) => ms === 0).length;
      expect(zero).toBeGreaterThan(0);
      expect(zero).toBeLessThanOrEqual(b.steps);
    } finally {
      timers.mockRestore();
    }
  });
});
