/**
 * @module coalescer.test — the continuous-batching queue: calls of one turn leave as one batch and
 * get their own results back; a full batch leaves at once; a quorum is waited for, boundedly; a
 * full queue and a queue deadline refuse with QueueFullError (a Retry-After in seconds); one
 * caller aborting leaves the others alone; a failing batch fails its callers only.
 */
import { describe, expect, it } from "vitest";
import { Coalescer, QueueFullError, type BatchEntry, type CoalescerLimits } from "../../../src/platform/coalescer";

const LIMITS: CoalescerLimits = {
  maxWaitMs: 0,
  maxRows: 100,
  maxInFlight: 1,
  maxQueuedRows: 1000,
  queueDeadlineMs: 50,
};
const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

/** A coalescer doubling numbers, recording each batch it ran. */
function doubler(limits: Partial<CoalescerLimits> = {}, quorum?: () => number, hold?: Promise<void>) {
  const batches: number[][] = [];
  const c = new Coalescer<number, number>(
    async (entries: readonly BatchEntry<number>[]) => {
      batches.push(entries.map((e) => e.item));
      if (hold) await hold;
      return entries.map((e) => ({ ok: true as const, value: e.item * 2 }));
    },
    { ...LIMITS, ...limits },
    quorum,
  );
  return { c, batches };
}

describe("Coalescer", () => {
  it("sends the calls of one turn as one batch and splits the results back", async () => {
    const { c, batches } = doubler();
    const got = await Promise.all([1, 2, 3].map((v) => c.submit(v, 1)));
    expect(got).toEqual([2, 4, 6]);
    expect(batches).toEqual([[1, 2, 3]]);
    expect(c.batches).toBe(1);
    expect(c.callers).toBe(3);
  });

  it("sends a full batch at once and the rest in the next", async () => {
    const { c, batches } = doubler({ maxRows: 4, maxInFlight: 2 });
    const got = await Promise.all([1, 2, 3, 4, 5].map((v) => c.submit(v, 2)));
    expect(got).toEqual([2, 4, 6, 8, 10]);
    expect(batches).toEqual([[1, 2], [3, 4], [5]]);
  });

  it("waits for the quorum, boundedly", async () => {
    const { c, batches } = doubler({ maxWaitMs: 200 }, () => 2);
    const first = c.submit(1, 1);
    await tick(20);
    expect(batches).toEqual([]); // still waiting for the second caller
    const second = c.submit(2, 1);
    expect(await Promise.all([first, second])).toEqual([2, 4]);
    expect(batches).toEqual([[1, 2]]);

    const t0 = Date.now();
    const { c: lone, batches: loneBatches } = doubler({ maxWaitMs: 30 }, () => 3);
    expect(await lone.submit(7, 1)).toBe(14);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(25);
    expect(loneBatches).toEqual([[7]]);
  });

  it("runs a call at once, without a turn or a timer, when no other caller is expected", async () => {
    const { c, batches } = doubler({ maxWaitMs: 1000 }, () => 1);
    let settled = false;
    const p = c.submit(5, 1).then((v) => {
      settled = true;
      return v;
    });
    // Within the microtasks of this very turn: no macrotask (timer) ran in between.
    for (let i = 0; i < 10 && !settled; i++) await undefined;
    expect(settled).toBe(true);
    expect(await p).toBe(10);
    expect(batches).toEqual([[5]]);
  });

  it("hands answers over directly (a Durable Object's one context): one turn of microtasks, no timer", async () => {
    const { c, batches } = doubler({ turn: "microtasks", handOver: "direct" });
    let settled = 0;
    const all = Promise.all(
      [1, 2, 3].map((v) =>
        c.submit(v, 1).then((x) => {
          settled++;
          return x;
        }),
      ),
    );
    for (let i = 0; i < 200 && settled < 3; i++) await undefined;
    expect(settled).toBe(3);
    expect(await all).toEqual([2, 4, 6]);
    expect(batches).toEqual([[1, 2, 3]]);
  });

  it("refuses a caller beyond the queue's size with a Retry-After", async () => {
    let release = () => {};
    const hold = new Promise<void>((r) => (release = r));
    const { c } = doubler({ maxRows: 10, maxQueuedRows: 10, queueDeadlineMs: 2000 }, undefined, hold);
    const running = c.submit(1, 10); // leaves at once (full) and holds the only slot
    const queued = c.submit(2, 10);
    const refused = c.submit(3, 1);
    await expect(refused).rejects.toBeInstanceOf(QueueFullError);
    await expect(refused).rejects.toMatchObject({ retryAfterS: 2 });
    release();
    expect(await Promise.all([running, queued])).toEqual([2, 4]);
  });

  it("refuses queued work past its deadline instead of letting it wait forever", async () => {
    let release = () => {};
    const hold = new Promise<void>((r) => (release = r));
    const { c } = doubler({ maxRows: 1, queueDeadlineMs: 30 }, undefined, hold);
    const running = c.submit(1, 1);
    const late = c.submit(2, 1);
    await expect(late).rejects.toBeInstanceOf(QueueFullError);
    release();
    expect(await running).toBe(2);
  });

  it("refuses a caller whose batch does not answer within the run deadline", async () => {
    const stuck = new Coalescer<number, number>(() => new Promise(() => {}), { ...LIMITS, runDeadlineMs: 30 });
    await expect(stuck.submit(1, 1)).rejects.toBeInstanceOf(QueueFullError);
  });

  it("lets one caller abort without touching the others", async () => {
    const { c, batches } = doubler({ maxWaitMs: 50 }, () => 3);
    const a = new AbortController();
    const gone = c.submit(1, 1, a.signal);
    const stays = c.submit(2, 1);
    a.abort(new Error("client went away"));
    await expect(gone).rejects.toThrow("client went away");
    const third = c.submit(3, 1);
    expect(await Promise.all([stays, third])).toEqual([4, 6]);
    expect(batches).toEqual([[2, 3]]); // the aborted caller's row never left the queue

    const pre = new AbortController();
    pre.abort();
    await expect(c.submit(4, 1, pre.signal)).rejects.toBeDefined();
  });

  it("fails only the callers whose result failed, and every caller when the batch throws", async () => {
    const c = new Coalescer<number, number>(
      async (entries) =>
        entries.map((e) =>
          e.item < 0 ? { ok: false as const, error: new Error("bad row") } : { ok: true as const, value: e.item },
        ),
      LIMITS,
    );
    const [good, bad] = await Promise.allSettled([c.submit(1, 1), c.submit(-1, 1)]);
    expect(good).toEqual({ status: "fulfilled", value: 1 });
    expect(bad.status).toBe("rejected");

    const broken = new Coalescer<number, number>(async () => {
      throw new Error("pass failed");
    }, LIMITS);
    const all = await Promise.allSettled([broken.submit(1, 1), broken.submit(2, 1)]);
    expect(all.map((r) => r.status)).toEqual(["rejected", "rejected"]);
  });
});
