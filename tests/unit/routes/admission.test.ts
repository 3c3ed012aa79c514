/**
 * The Worker's admission gate: the cap, FIFO hand-over of freed slots, the bounded queue (429 with
 * Retry-After), the queue deadline (503 with Retry-After), a client leaving while queued, and the
 * first-event-before-headers wrapper that moves prefill failures in front of the 200.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { ApiError } from "../../../src/errors";
import { AdmissionGate, firstEventBeforeHeaders, readAdmission } from "../../../src/routes/admission";
import { ConfigError } from "../../../src/platform/env";

const config = { maxInflight: 2, maxQueued: 1, queueTimeoutMs: 500 };

afterEach(() => vi.useRealTimers());

describe("AdmissionGate", () => {
  it("admits up to the cap, queues one, refuses the next with 429 + Retry-After", async () => {
    const seen: [number, number][] = [];
    const g = new AdmissionGate(config, (i, q) => seen.push([i, q]));
    const a = await g.acquire();
    await g.acquire();
    const queued = g.acquire();
    expect([g.inflight, g.queued]).toEqual([2, 1]);
    const err = await g.acquire().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    const e = err as ApiError;
    expect(e.status).toBe(429);
    expect(e.code).toBe("too_many_concurrent_requests");
    expect(e.retryAfter).toBeGreaterThanOrEqual(1);
    expect(e.toBody().error.type).toBe("rate_limit_error");
    a();
    a(); // a second release of the same slot does nothing
    await queued; // the freed slot went to the waiter
    expect([g.inflight, g.queued]).toEqual([2, 0]);
    expect(seen.at(-1)).toEqual([2, 0]);
  });

  it("hands freed slots to waiters in arrival order, not to newcomers", async () => {
    const g = new AdmissionGate({ maxInflight: 1, maxQueued: 5, queueTimeoutMs: 5000 });
    const first = await g.acquire();
    const order: number[] = [];
    const waits = [1, 2, 3].map((n) =>
      g.acquire().then((rel) => {
        order.push(n);
        return rel;
      }),
    );
    first();
    for (const w of waits) (await w)();
    expect(order).toEqual([1, 2, 3]);
    expect([g.inflight, g.queued]).toEqual([0, 0]);
  });

  it("a queued request past its deadline gets 503 queue_timeout with Retry-After and leaves the queue", async () => {
    vi.useFakeTimers();
    const g = new AdmissionGate(config);
    await g.acquire();
    await g.acquire();
    const waiting = g.acquire().catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(501);
    const e = (await waiting) as ApiError;
    expect(e).toBeInstanceOf(ApiError);
    expect([e.status, e.code, e.type]).toEqual([503, "queue_timeout", "service_unavailable"]);
    expect(e.headers["Retry-After"]).toMatch(/^[1-9][0-9]*$/);
    expect(g.queued).toBe(0);
  });

  it("a client that leaves while queued frees its place", async () => {
    const g = new AdmissionGate(config);
    const r1 = await g.acquire();
    await g.acquire();
    const ac = new AbortController();
    const waiting = g.acquire(ac.signal).catch((e: unknown) => e);
    ac.abort(new Error("client gone"));
    expect(((await waiting) as Error).message).toBe("client gone");
    expect(g.queued).toBe(0);
    r1();
    expect(g.inflight).toBe(1); // nobody was waiting for the freed slot
  });
});

describe("readAdmission", () => {
  it("reads the vars with defaults and names a bad one", () => {
    expect(readAdmission({})).toEqual({ maxInflight: 32, maxQueued: 128, queueTimeoutMs: 20_000 });
    expect(readAdmission({ MAX_INFLIGHT_REQUESTS: "4", MAX_QUEUED_REQUESTS: "0" }).maxQueued).toBe(0);
    expect(() => readAdmission({ MAX_INFLIGHT_REQUESTS: "0" })).toThrow(ConfigError);
    expect(() => readAdmission({ ADMISSION_QUEUE_TIMEOUT_MS: "soon" })).toThrow(/ADMISSION_QUEUE_TIMEOUT_MS/);
  });
});

describe("firstEventBeforeHeaders", () => {
  it("runs to the first event up front and then yields every event once", async () => {
    let started = false;
    async function* gen() {
      started = true;
      yield 1;
      yield 2;
    }
    const wrapped = await firstEventBeforeHeaders(gen());
    expect(started).toBe(true);
    const got: number[] = [];
    for await (const x of wrapped) got.push(x);
    expect(got).toEqual([1, 2]);
  });

  it("throws a failure before the first event to the caller (before any 200)", async () => {
    // biome-ignore lint/correctness/useYield: a generator that fails before its first event.
    async function* gen(): AsyncGenerator<number> {
      throw new ApiError(503, "no replica answered", "service_unavailable", null, "expert_unavailable");
    }
    await expect(firstEventBeforeHeaders(gen())).rejects.toMatchObject({ status: 503 });
  });

  it("ending early ends the original generator (its finally frees the session)", async () => {
    let freed = false;
    async function* gen() {
      try {
        yield 1;
        yield 2;
      } finally {
        freed = true;
      }
    }
    const wrapped = await firstEventBeforeHeaders(gen());
    for await (const _ of wrapped) break;
    expect(freed).toBe(true);
  });
});
