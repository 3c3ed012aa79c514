/**
 * The keep-alive's decisions on a plain object in place of a Durable Object's state: when it writes
 * an alarm, when an alarm re-arms and when the host is let go idle (the workerd behaviour is
 * tests/integration/keep-alive.test.ts).
 */
import { describe, expect, it } from "vitest";
import { hostKeepAliveMs, KEEPALIVE_TICK_MS, KeepAlive } from "../../../src/platform/keep-alive";

function fakeCtx() {
  const alarms: number[] = [];
  const pending: Promise<unknown>[] = [];
  return {
    alarms,
    pending,
    storage: { setAlarm: async (t: number) => void alarms.push(t) },
    waitUntil: (p: Promise<unknown>) => void pending.push(p),
  };
}

describe("KeepAlive", () => {
  it("arms one alarm per tick however many calls arrive", async () => {
    const ctx = fakeCtx();
    const k = new KeepAlive(ctx, () => 60_000);
    k.touch(1000);
    k.touch(1200);
    k.touch(3000);
    await Promise.all(ctx.pending);
    expect(ctx.alarms).toEqual([1000 + KEEPALIVE_TICK_MS]);
    expect(k.lastCallAt).toBe(3000);
  });

  it("re-arms while the last call is within the window, then lets the host go idle", async () => {
    const ctx = fakeCtx();
    const k = new KeepAlive(ctx, () => 20_000);
    k.touch(0 + 1);
    expect(await k.alarm(5_001)).toBe(true);
    expect(await k.alarm(20_000)).toBe(true);
    expect(await k.alarm(20_001)).toBe(false);
    expect(ctx.alarms.slice(1)).toEqual([5_001 + KEEPALIVE_TICK_MS, 20_000 + KEEPALIVE_TICK_MS]);
    // A call after it went idle arms again.
    k.touch(30_000);
    await Promise.all(ctx.pending);
    expect(ctx.alarms.at(-1)).toBe(30_000 + KEEPALIVE_TICK_MS);
  });

  it("keeps re-arming while the owner holds something, whatever the window", async () => {
    const ctx = fakeCtx();
    let held = false;
    const k = new KeepAlive(
      ctx,
      () => 0,
      () => held,
    );
    k.touch(0); // window 0 (off): the call alone does not arm
    held = true; // e.g. a session admitted
    k.holdNow(10);
    await Promise.all(ctx.pending);
    expect(ctx.alarms).toEqual([10 + KEEPALIVE_TICK_MS]);
    expect(await k.alarm(1_000_000)).toBe(true);
    held = false;
    expect(await k.alarm(1_005_000)).toBe(false);
  });

  it("does not keep an instance its own pending alarm woke after an eviction", async () => {
    const ctx = fakeCtx();
    const k = new KeepAlive(ctx, () => 60_000); // a fresh instance: it has served nothing
    expect(await k.alarm(5_000)).toBe(false);
    expect(ctx.alarms).toEqual([]);
  });

  it("writes no alarm with the window off and nothing held", async () => {
    const ctx = fakeCtx();
    const k = new KeepAlive(ctx, () => 0);
    k.touch(0);
    k.holdNow(0);
    expect(ctx.pending).toEqual([]);
  });

  it("reads HOST_KEEPALIVE_MS: 60 s by default, 0 allowed, a bad value named", () => {
    expect(hostKeepAliveMs({})).toBe(60_000);
    expect(hostKeepAliveMs({ HOST_KEEPALIVE_MS: "0" })).toBe(0);
    expect(hostKeepAliveMs({ HOST_KEEPALIVE_MS: "15000" })).toBe(15_000);
    expect(() => hostKeepAliveMs({ HOST_KEEPALIVE_MS: "-1" })).toThrow(/HOST_KEEPALIVE_MS/);
    expect(() => hostKeepAliveMs({ HOST_KEEPALIVE_MS: "1.5s" })).toThrow(/HOST_KEEPALIVE_MS/);
  });
});
