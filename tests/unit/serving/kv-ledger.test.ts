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
});
