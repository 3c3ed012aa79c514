/**
 * StageBatcher (src/stages/stage-batcher.ts): calls delivered together run as one merged pass and
 * each gets its own rows; a call alone runs the per-call path; calls queued while a pass runs form
 * the next pass; a session twice in one pass fails its later call only; a full queue refuses with
 * QueueFullError (the StageHost's `busy`); a failed call in a merged pass fails only itself.
 */
import { describe, expect, it } from "vitest";
import { Session } from "../../../src/serving/forward";
import { QueueFullError } from "../../../src/platform/coalescer";
import { StageBatcher, type StageCall, type StagePassRunner } from "../../../src/stages/stage-batcher";

const D = 4;
const LIMITS = { maxRows: 16, maxQueuedRows: 16, queueDeadlineMs: 5_000, runDeadlineMs: 5_000 };

function call(session: Session, n: number, v: number): StageCall {
  return { session, x: new Float32Array(n * D).fill(v), rng: () => 0, gone: () => false };
}

/** A runner doubling rows; records each pass's calls; `hold` keeps passes open until released. */
function runner(fail?: (c: StageCall) => boolean) {
  const passes: { kind: "alone" | "merged"; sizes: number[] }[] = [];
  let release: () => void = () => {};
  let held: Promise<void> | null = null;
  const wait = () => held ?? Promise.resolve();
  const double = (c: StageCall) => ({ y: c.x.map((v) => 2 * v), rpcs: 1 });
  const r: StagePassRunner = {
    async alone(c) {
      passes.push({ kind: "alone", sizes: [c.x.length / D] });
      await wait();
      return double(c);
    },
    async merged(calls) {
      passes.push({ kind: "merged", sizes: calls.map((c) => c.x.length / D) });
      await wait();
      return calls.map((c) => (fail?.(c) ? { ok: false, error: new Error("lost") } : { ok: true, value: double(c) }));
    },
  };
  return {
    r,
    passes,
    hold() {
      held = new Promise((res) => (release = res));
    },
    release() {
      held = null;
      release();
    },
  };
}

const session = () => new Session(64, [], []);

describe("StageBatcher", () => {
  it("runs calls delivered together as one merged pass, each getting its own rows", async () => {
    const t = runner();
    const b = new StageBatcher(t.r, D, LIMITS, "test");
    const out = await Promise.all([1, 2, 3].map((v) => b.run(call(session(), v, v))));
    expect(t.passes).toEqual([{ kind: "merged", sizes: [1, 2, 3] }]);
    out.forEach((o, i) => expect(Array.from(o.y)).toEqual(new Array((i + 1) * D).fill(2 * (i + 1))));
    expect(b.stats()).toMatchObject({
      passes: 1,
      calls: 3,
      mergedPasses: 1,
      mergedCalls: 3,
      mergedRows: 6,
      maxCalls: 3,
    });
  });

  it("runs a call alone on the per-call path, and queues calls arriving meanwhile for the next pass", async () => {
    const t = runner();
    const b = new StageBatcher(t.r, D, LIMITS, "test");
    t.hold();
    const first = b.run(call(session(), 1, 1));
    await new Promise((r) => setTimeout(r, 5));
    const later = [b.run(call(session(), 1, 2)), b.run(call(session(), 1, 3))];
    await new Promise((r) => setTimeout(r, 5));
    expect(t.passes).toEqual([{ kind: "alone", sizes: [1] }]);
    t.release();
    await Promise.all([first, ...later]);
    expect(t.passes).toEqual([
      { kind: "alone", sizes: [1] },
      { kind: "merged", sizes: [1, 1] },
    ]);
  });

  it("fails the later of two calls on one session in a pass, and only a failed call in a merged pass", async () => {
    const s = session();
    const t = runner((c) => c.x[0] === 9);
    const b = new StageBatcher(t.r, D, LIMITS, "test");
    const r = await Promise.allSettled([
      b.run(call(s, 1, 1)),
      b.run(call(s, 1, 2)),
      b.run(call(session(), 1, 9)),
      b.run(call(session(), 1, 4)),
    ]);
    expect(r.map((x) => x.status)).toEqual(["fulfilled", "rejected", "rejected", "fulfilled"]);
    expect(t.passes).toEqual([{ kind: "merged", sizes: [1, 1, 1] }]);
  });

  it("refuses a call past the queue's rows with QueueFullError", async () => {
    const t = runner();
    const b = new StageBatcher(t.r, D, LIMITS, "test");
    t.hold();
    const first = b.run(call(session(), 1, 1));
    await new Promise((r) => setTimeout(r, 5));
    const queued = b.run(call(session(), 16, 1));
    await expect(b.run(call(session(), 1, 1))).rejects.toBeInstanceOf(QueueFullError);
    t.release();
    await Promise.all([first, queued]);
  });
});
