/**
 * @module placement-cache.test — the Worker's placement copy: checked at most every
 * PLACEMENT_CHECK_MS, served from the last good copy (logged once) while the Coordinator is
 * unreachable, for at most PLACEMENT_MAX_STALE_MS; a 503 with Retry-After when there is none.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { PlacementInit } from "../../../src/coordinator/initial-placement";
import { initialPlacement } from "../../../src/coordinator/initial-placement";
import type { Placement } from "../../../src/coordinator/placement";
import { ApiError } from "../../../src/errors";
import {
  PLACEMENT_MAX_STALE_MS,
  PLACEMENT_READ_TIMEOUT_MS,
  currentPlacement,
  forgetPlacement,
  markPlacementStale,
  refreshedPlacement,
} from "../../../src/experts/placement-cache";
import { PLACEMENT_CHECK_MS } from "../../../src/experts/placement-timing";

const init: PlacementInit = { model: "m", nLayers: 2, nExperts: 4, expertBytes: 1, budgetBytes: 8, minInstances: 2 };

/** A Coordinator stand-in: `down` makes every call fail as an unreachable Durable Object would. */
function fakeEnv() {
  const state = { placement: { ...initialPlacement(init), version: 1 } as Placement, down: false, calls: 0 };
  const ask =
    <T>(f: () => T) =>
    async (): Promise<T> => {
      state.calls++;
      if (state.down) throw Object.assign(new Error("Network connection lost."), { retryable: true });
      return f();
    };
  const stub = {
    placementVersion: ask(() => state.placement.version),
    ensurePlacement: ask(() => state.placement),
    getPlacement: ask(() => state.placement),
  };
  const env = { COORDINATOR: { getByName: () => stub } } as unknown as Env;
  return { env, state };
}

describe("placement cache", () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(1_000_000);
    forgetPlacement("m");
  });
  afterEach(() => {
    vi.useRealTimers();
    vi.restoreAllMocks();
  });

  it("asks the Coordinator at most every PLACEMENT_CHECK_MS and follows a new version", async () => {
    const { env, state } = fakeEnv();
    expect((await currentPlacement(env, init)).version).toBe(1);
    await currentPlacement(env, init);
    expect(state.calls).toBe(1);
    state.placement = { ...state.placement, version: 2 };
    vi.setSystemTime(1_000_000 + PLACEMENT_CHECK_MS);
    expect((await currentPlacement(env, init)).version).toBe(2);
    markPlacementStale("m");
    const before = state.calls;
    await currentPlacement(env, init);
    expect(state.calls).toBe(before + 1);
  });

  it("refuses a placement cut into another number of expert slices than this deployment's", async () => {
    const { env, state } = fakeEnv();
    state.placement = { ...initialPlacement({ ...init, slices: 2 }), version: 1 };
    expect((await currentPlacement(env, { ...init, slices: 2 })).slices).toBe(2);
    forgetPlacement("m");
    const err = await currentPlacement(env, init).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).code).toBe("placement_slices_mismatch");
    expect((err as ApiError).message).toMatch(/2 slice\(s\), this deployment into 1/);
  });

  it("serves the last good placement while the Coordinator is down, logs once, up to the staleness bound", async () => {
    const { env, state } = fakeEnv();
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    const log = vi.spyOn(console, "log").mockImplementation(() => {});
    await currentPlacement(env, init);
    state.down = true;
    for (let i = 1; i <= 5; i++) {
      vi.setSystemTime(1_000_000 + i * PLACEMENT_CHECK_MS);
      expect((await currentPlacement(env, init)).version).toBe(1);
    }
    expect(warn).toHaveBeenCalledTimes(1);
    expect(String(warn.mock.calls[0][0])).toMatch(/unreachable/);
    vi.setSystemTime(1_000_000 + PLACEMENT_MAX_STALE_MS + PLACEMENT_CHECK_MS);
    const err = await currentPlacement(env, init).catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(503);
    expect(err.retryAfter).toBeGreaterThan(0);
    // Back up: served again, and a later outage is logged again.
    state.down = false;
    vi.setSystemTime(1_000_000 + PLACEMENT_MAX_STALE_MS + 2 * PLACEMENT_CHECK_MS);
    expect((await currentPlacement(env, init)).version).toBe(1);
    expect(String(log.mock.calls[0][0])).toMatch(/reachable again/);
  });

  it("serves the cached placement when the Coordinator does not answer within its deadline", async () => {
    const { env, state } = fakeEnv();
    await currentPlacement(env, init);
    vi.spyOn(console, "warn").mockImplementation(() => {});
    const stub = env.COORDINATOR.getByName("m") as unknown as { placementVersion: () => Promise<number> };
    stub.placementVersion = () => new Promise(() => {});
    vi.useRealTimers();
    vi.useFakeTimers({ toFake: ["Date", "setTimeout", "clearTimeout"] });
    vi.setSystemTime(1_000_000 + PLACEMENT_CHECK_MS);
    const pending = currentPlacement(env, init);
    await vi.advanceTimersByTimeAsync(PLACEMENT_READ_TIMEOUT_MS);
    expect((await pending).version).toBe(state.placement.version);
  });

  it("answers 503 with Retry-After when the Coordinator is down and nothing is cached", async () => {
    const { env, state } = fakeEnv();
    state.down = true;
    const err = await currentPlacement(env, init).catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(503);
    expect(err.code).toBe("placement_unavailable");
  });

  it("refreshes on demand to a newer version, and keeps the one it has when the Coordinator is down", async () => {
    const { env, state } = fakeEnv();
    const p1 = await currentPlacement(env, init);
    state.placement = { ...state.placement, version: 3 };
    expect((await refreshedPlacement(env, p1)).version).toBe(3);
    // The refreshed copy is what later requests get without waiting for the check interval.
    expect((await currentPlacement(env, init)).version).toBe(3);
    state.down = true;
    vi.spyOn(console, "warn").mockImplementation(() => {});
    expect((await refreshedPlacement(env, p1)).version).toBe(3);
  });
});
