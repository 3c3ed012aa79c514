import { afterEach, describe, expect, it, vi } from "vitest";
import { Flight, HEARTBEAT_MS, ORPHANED_MS, OrphanedWorkError, shareWork } from "../../../src/platform/shared-work";

afterEach(() => {
  vi.useRealTimers();
});

describe("Flight", () => {
  it("hands the starter's value to joiners and runs the work once", async () => {
    let runs = 0;
    let release!: (v: string) => void;
    const f = new Flight(() => {
      runs++;
      return new Promise<string>((r) => (release = r));
    });
    const joined = [f.join(), f.join()];
    release("weights");
    expect(await f.promise).toBe("weights");
    expect(await Promise.all(joined)).toEqual(["weights", "weights"]);
    expect(f.settled).toBe(true);
    expect(await f.join()).toBe("weights");
    expect(runs).toBe(1);
  });

  it("hands a failure to joiners too", async () => {
    const f = new Flight(async () => {
      await new Promise((r) => setTimeout(r, 5));
      throw new Error("R2 down");
    });
    await expect(f.join()).rejects.toThrow("R2 down");
    await expect(f.promise).rejects.toThrow("R2 down");
  });

  it("a joiner gives up with OrphanedWorkError once the starter's heartbeat stopped", async () => {
    vi.useFakeTimers();
    const f = new Flight(() => new Promise<number>(() => {}));
    // The starter's request is gone: its timers (the heartbeat) went with it.
    vi.clearAllTimers();
    const joined = f.join();
    const seen = joined.catch((err: unknown) => err);
    await vi.advanceTimersByTimeAsync(ORPHANED_MS + 20 * HEARTBEAT_MS);
    expect(await seen).toBeInstanceOf(OrphanedWorkError);
    expect(f.orphaned).toBe(true);
  });

  it("a live starter's long work is not taken for orphaned", async () => {
    vi.useFakeTimers();
    let release!: (v: number) => void;
    const f = new Flight(() => new Promise<number>((r) => (release = r)));
    const joined = f.join();
    await vi.advanceTimersByTimeAsync(10 * ORPHANED_MS);
    expect(f.orphaned).toBe(false);
    release(7);
    await vi.advanceTimersByTimeAsync(2 * HEARTBEAT_MS);
    expect(await joined).toBe(7);
  });

  it("stops waiting when the joiner's own request is aborted", async () => {
    const f = new Flight(() => new Promise<number>((r) => setTimeout(() => r(1), 200)));
    const ctl = new AbortController();
    const joined = f.join(ctl.signal);
    ctl.abort(new Error("client went away"));
    await expect(joined).rejects.toThrow("client went away");
    expect(await f.promise).toBe(1);
  });
});

describe("shareWork", () => {
  it("starts the work when there is none, joins it otherwise, starts again after an orphan", async () => {
    vi.useFakeTimers();
    let current: Flight<number> | null = null;
    let runs = 0;
    const start = () => {
      const n = ++runs;
      current = new Flight(() => (n === 1 ? new Promise<number>(() => {}) : Promise.resolve(n)));
      return current;
    };
    void shareWork(() => current, start); // the starter, whose request then goes away
    vi.clearAllTimers();
    const a = shareWork(() => current, start);
    const b = shareWork(() => current, start);
    await vi.advanceTimersByTimeAsync(ORPHANED_MS + 20 * HEARTBEAT_MS);
    expect(await a).toBe(2);
    expect(await b).toBe(2);
    expect(runs).toBe(2);
  });
});
