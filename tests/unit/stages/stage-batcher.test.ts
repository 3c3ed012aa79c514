/**
 * StageBatcher (src/stages/stage-batcher.ts): calls delivered together run as one merged pass and
 * each gets its own rows; a call alone runs the per-call path; calls queued while a pass runs form
 * the next pass; a session twice in one pass fails its later call only; a full queue refuses with
 * QueueFullError (the StageHost's `busy`); a failed call in a merged pass fails only itself; with
 * BATCHING off (one-row passes) calls still run one pass at a time, each alone.
 */
import { describe, expect, it } from "vitest";
import { Session } from "../../../src/serving/forward";
import { QueueFullError } from "../../../src/platform/coalescer";
import {
  shareByRows,
  StageBatcher,
  StageCallError,
  type StageCall,
  type StagePassRunner,
} from "../../../src/stages/stage-batcher";

const D = 4;
const LIMITS = { maxRows: 16, maxQueuedRows: 16, queueDeadlineMs: 5_000, runDeadlineMs: 5_000 };

/** Holds and releases of sessions by passes, in order. */
const holds: string[] = [];

function call(session: Session, n: number, v: number, start = session.length): StageCall {
  const hold = () => {
    holds.push(`hold ${v}`);
    return () => holds.push(`release ${v}`);
  };
  return { session, x: new Float32Array(n * D).fill(v), start, rng: () => 0, gone: () => false, hold };
}

/** A runner doubling rows; records each pass's calls; `hold` keeps passes open until released. */
function runner(fail?: (c: StageCall) => boolean) {
  const passes: { kind: "alone" | "merged"; sizes: number[] }[] = [];
  let release: () => void = () => {};
  let held: Promise<void> | null = null;
  const wait = () => held ?? Promise.resolve();
  const double = (c: StageCall) => {
    c.session.length += c.x.length / D; // as the layers advance it
    return { y: c.x.map((v) => 2 * v), rpcs: 1 };
  };
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

  it("with a one-row pass limit (BATCHING off), runs concurrent calls alone, one pass at a time", async () => {
    const t = runner();
    let running = 0;
    let most = 0;
    const counted: StagePassRunner = {
      async alone(c) {
        most = Math.max(most, ++running);
        try {
          return await t.r.alone(c);
        } finally {
          running--;
        }
      },
      merged: (calls) => t.r.merged(calls),
    };
    const b = new StageBatcher(counted, D, { ...LIMITS, maxRows: 1, maxQueuedRows: 64 }, "test");
    expect(b.merges).toBe(false);
    expect(new StageBatcher(t.r, D, LIMITS, "test").merges).toBe(true);
    t.hold();
    const out = [1, 2, 3].map((v) => b.run(call(session(), v, v)));
    await new Promise((r) => setTimeout(r, 5));
    expect(t.passes).toEqual([{ kind: "alone", sizes: [1] }]); // the others wait for it, not beside it
    t.release();
    (await Promise.all(out)).forEach((o, i) =>
      expect(Array.from(o.y)).toEqual(new Array((i + 1) * D).fill(2 * (i + 1))),
    );
    expect(t.passes).toEqual([1, 2, 3].map((n) => ({ kind: "alone", sizes: [n] })));
    expect(most).toBe(1);
    expect(b.stats()).toMatchObject({ passes: 3, calls: 3, mergedPasses: 0 });
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

  it("holds every session of a pass until the pass ends, even after its caller was refused", async () => {
    holds.length = 0;
    const t = runner();
    const b = new StageBatcher(t.r, D, { ...LIMITS, queueDeadlineMs: 5, runDeadlineMs: 5 }, "test");
    t.hold();
    const r = await Promise.allSettled([b.run(call(session(), 1, 1)), b.run(call(session(), 1, 2))]);
    // Both callers gave up (their StageHost `run` releases its own hold) while the pass still runs.
    expect(r.map((x) => x.status)).toEqual(["rejected", "rejected"]);
    expect(holds).toEqual(["hold 1", "hold 2"]);
    t.release();
    await new Promise((res) => setTimeout(res, 5));
    expect(holds).toEqual(["hold 1", "hold 2", "release 1", "release 2"]);
  });

  it("fails a call whose session ended before its pass, and runs the others", async () => {
    const t = runner();
    const b = new StageBatcher(t.r, D, LIMITS, "test");
    const ended = { ...call(session(), 1, 1), hold: () => null };
    const r = await Promise.allSettled([b.run(ended), b.run(call(session(), 1, 2)), b.run(call(session(), 1, 3))]);
    expect(r.map((x) => x.status)).toEqual(["rejected", "fulfilled", "fulfilled"]);
    expect((r[0] as PromiseRejectedResult).reason).toMatchObject({ code: "session_lost" });
    expect(t.passes).toEqual([{ kind: "merged", sizes: [1, 1] }]);
  });

  it("checks a call's position when its pass runs: a duplicate queued behind its session's pass fails", async () => {
    const t = runner();
    const b = new StageBatcher(t.r, D, LIMITS, "test");
    const s = session();
    t.hold();
    const first = b.run(call(s, 2, 1, 0));
    await new Promise((res) => setTimeout(res, 5));
    const dup = b.run(call(s, 2, 1, 0));
    const other = b.run(call(session(), 1, 2));
    t.release();
    const r = await Promise.allSettled([first, dup, other]);
    expect(r.map((x) => x.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    const reason = (r[1] as PromiseRejectedResult).reason;
    expect(reason).toBeInstanceOf(StageCallError);
    expect(reason).toMatchObject({ code: "bad_request" });
    expect(s.length).toBe(2);
    expect(t.passes).toEqual([
      { kind: "alone", sizes: [2] },
      { kind: "alone", sizes: [1] },
    ]);
  });

  it("fails only the call past its session's room or with misshapen rows; the others run merged", async () => {
    const t = runner();
    const b = new StageBatcher(t.r, D, LIMITS, "test");
    const misshapen = { ...call(session(), 1, 3), x: new Float32Array(D + 1) };
    const r = await Promise.allSettled([
      b.run(call(session(), 1, 1)),
      b.run(call(new Session(2, [], []), 3, 2)),
      b.run(misshapen),
      b.run(call(session(), 2, 4)),
    ]);
    expect(r.map((x) => x.status)).toEqual(["fulfilled", "rejected", "rejected", "fulfilled"]);
    for (const i of [1, 2]) expect((r[i] as PromiseRejectedResult).reason).toMatchObject({ code: "bad_request" });
    expect(t.passes).toEqual([{ kind: "merged", sizes: [1, 2] }]);
  });

  it("shares a merged pass's expert RPCs over the calls it served by rows, summing to the pass's", () => {
    expect(shareByRows(10, [1, 1, 2])).toEqual([3, 2, 5]);
    expect(shareByRows(7, [3, 0, 1])).toEqual([5, 0, 2]);
    expect(shareByRows(1, [0, 4])).toEqual([0, 1]);
    expect(shareByRows(5, [0, 0])).toEqual([0, 0]);
    for (const [total, rows] of [
      [13, [1, 2, 3, 4]],
      [3, [5, 5, 5, 5, 5]],
      [0, [1, 2]],
    ] as const)
      expect(shareByRows(total, rows).reduce((t, v) => t + v, 0)).toBe(total);
  });
});
