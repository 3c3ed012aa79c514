/**
 * A stage's pass queue refusing a call (src/stages/stage-pass.ts, src/serving/stage-client.ts): the
 * queue holds a whole prefill chunk beside four passes even when a pass carries fewer rows than a
 * chunk, and a refusal reaches the client as its own 503 `stage_overloaded` with a short Retry-After,
 * not as a full KV cache.
 */
import { describe, expect, it } from "vitest";
import { Session } from "../../../src/serving/forward";
import { PREFILL_CHUNK } from "../../../src/serving/stage-budgets";
import { stageError } from "../../../src/serving/stage-client";
import { ApiError } from "../../../src/errors";
import { StageBatcher, stageQueueRows, type StagePassRunner } from "../../../src/stages/stage-batcher";

const D = 2;

describe("a stage's pass queue", () => {
  it("queues a whole prefill chunk behind others though a pass carries fewer rows", async () => {
    const maxRows = 16;
    expect(stageQueueRows(maxRows)).toBeGreaterThanOrEqual(4 * maxRows + PREFILL_CHUNK);
    let release: () => void = () => {};
    const held = new Promise<void>((r) => (release = r));
    const sizes: number[][] = [];
    const runner: StagePassRunner = {
      async alone(c) {
        sizes.push([c.x.length / D]);
        await held;
        return { y: c.x, rpcs: 0 };
      },
      async merged(calls) {
        sizes.push(calls.map((c) => c.x.length / D));
        await held;
        return calls.map((c) => ({ ok: true, value: { y: c.x, rpcs: 0 } }));
      },
    };
    const limits = { maxRows, maxQueuedRows: stageQueueRows(maxRows), queueDeadlineMs: 5_000, runDeadlineMs: 5_000 };
    const b = new StageBatcher(runner, D, limits, "test");
    const call = (n: number) => {
      const session = new Session(256, [], []);
      return { session, x: new Float32Array(n * D), start: 0, rng: () => 0, gone: () => false, hold: () => () => {} };
    };
    const running = b.run(call(1));
    await new Promise((r) => setTimeout(r, 5));
    const queued = [b.run(call(maxRows)), b.run(call(PREFILL_CHUNK))];
    release();
    await Promise.all([running, ...queued]);
    expect(sizes).toEqual([[1], [maxRows], [PREFILL_CHUNK]]);
  });

  it("answers a refusal as 503 stage_overloaded with a short Retry-After", () => {
    const e = stageError({ ok: false, code: "overloaded", message: "queue full", retryAfterMs: 1000 });
    expect(e).toBeInstanceOf(ApiError);
    expect(e).toMatchObject({ status: 503, code: "stage_overloaded", headers: { "Retry-After": "1" } });
  });
});
