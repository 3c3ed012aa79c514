import { describe, expect, it } from "vitest";
import { KvLedger } from "../../../src/serving/kv-ledger";

describe("KvLedger", () => {
  it("admits sessions until the budget is full, refuses the next, and frees on remove", () => {
    const kv = new KvLedger<string>(100);
    expect(kv.admit(40).ok).toBe(true);
    kv.add("a", 40, "A", 0);
    kv.add("b", 40, "B", 0);
    const full = kv.admit(40);
    expect(full).toEqual({ ok: false, reason: "full", needBytes: 40, freeBytes: 20 });
    expect(kv.refused).toBe(1);
    expect(kv.remove("a")).toBe("A");
    expect(kv.admit(40).ok).toBe(true);
    expect(kv.usedBytes).toBe(40);
    expect(kv.peak).toBe(80);
  });

  it("says a session larger than the whole budget can never fit (not a retryable 'full')", () => {
    const kv = new KvLedger(100);
    expect(kv.admit(101)).toMatchObject({ ok: false, reason: "too_long" });
  });

  it("reports sessions idle for longer than the limit; use refreshes them", () => {
    const kv = new KvLedger(100);
    kv.add("a", 10, 1, 0);
    kv.add("b", 10, 2, 0);
    kv.get("b", 900);
    expect(kv.idle(1000, 500)).toEqual(["a"]);
    expect(kv.remove("zzz")).toBeUndefined();
  });

  it("never reports a session a call is running on, however long the call takes; idle time counts from its end", () => {
    const kv = new KvLedger<string>(100);
    kv.add("a", 10, "A", 0);
    expect(kv.acquire("a", 100)).toBe("A");
    // A chunk waiting on cold experts and later stages for longer than the idle limit.
    expect(kv.idle(100 + 90_000, 60_000)).toEqual([]);
    kv.release("a", 90_100);
    expect(kv.idle(90_100 + 59_000, 60_000)).toEqual([]);
    expect(kv.idle(90_100 + 61_000, 60_000)).toEqual(["a"]);
    // Two calls in flight: in use until both ended; unknown ids are ignored.
    kv.acquire("a", 200_000);
    kv.acquire("a", 200_000);
    kv.release("a", 200_001);
    expect(kv.idle(400_000, 60_000)).toEqual([]);
    kv.release("a", 200_002);
    expect(kv.idle(400_000, 60_000)).toEqual(["a"]);
    expect(kv.acquire("zzz", 0)).toBeUndefined();
    kv.release("zzz", 0);
  });

  it("ending a session a call runs on frees it only when the last call releases it", () => {
    const kv = new KvLedger<string>(100);
    kv.add("a", 10, "A", 0);
    kv.acquire("a", 1);
    kv.acquire("a", 1);
    // A client abort mid-chunk: nothing to free yet, and the session is gone for new callers.
    expect(kv.remove("a")).toBeUndefined();
    expect(kv.get("a", 2)).toBeUndefined();
    expect(kv.acquire("a", 2)).toBeUndefined();
    expect(kv.remove("a")).toBeUndefined();
    expect(() => kv.add("a", 10, "A2", 2)).toThrow(/still running/);
    expect(kv.usedBytes).toBe(10);
    expect(kv.idle(1_000_000, 1)).toEqual([]);
    expect(kv.release("a", 3)).toBeUndefined();
    expect(kv.usedBytes).toBe(10);
    // The last call's release hands the value back to free, once.
    expect(kv.release("a", 4)).toBe("A");
    expect(kv.usedBytes).toBe(0);
    expect(kv.size).toBe(0);
    expect(kv.release("a", 5)).toBeUndefined();
    // A session no call runs on is removed at once, and release of a live one returns nothing.
    kv.add("b", 10, "B", 0);
    kv.acquire("b", 1);
    expect(kv.release("b", 2)).toBeUndefined();
    expect(kv.remove("b")).toBe("B");
  });
});
