/**
 * Load reports from a Worker isolate: layer calls are counted beside the routed pairs, and a
 * Coordinator answering a newer placement version than the counts were routed with makes the
 * isolate re-check its placement at once (a replica for a hot spot is used within one report).
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { initialPlacement, type PlacementInit } from "../../../src/coordinator/initial-placement";
import type { Placement } from "../../../src/coordinator/placement";
import { flushLoad, recordLoad } from "../../../src/experts/load-reporter";
import { currentPlacement, forgetPlacement } from "../../../src/experts/placement-cache";
import type { LoadReport } from "../../../src/experts/protocol";

const init: PlacementInit = { model: "r", nLayers: 2, nExperts: 4, expertBytes: 1, budgetBytes: 8, minInstances: 2 };

function fakeEnv() {
  const state = {
    placement: { ...initialPlacement(init), version: 1 } as Placement,
    reports: [] as LoadReport[],
    versionChecks: 0,
  };
  const stub = {
    placementVersion: async () => {
      state.versionChecks++;
      return state.placement.version;
    },
    ensurePlacement: async () => state.placement,
    getPlacement: async () => state.placement,
    reportLoad: async (r: LoadReport) => {
      state.reports.push(r);
      return state.placement.version;
    },
  };
  return { env: { COORDINATOR: { getByName: () => stub } } as unknown as Env, state };
}

describe("load reporter", () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(2_000_000);
    forgetPlacement("r");
  });
  afterEach(() => vi.useRealTimers());

  it("counts layer calls, and re-checks the placement at once when the Coordinator has a newer one", async () => {
    const { env, state } = fakeEnv();
    const placement = await currentPlacement(env, init);
    recordLoad(placement, 0, [0, 1, 1, 2], new Map([[0, 4]]));
    recordLoad(placement, 1, [3, -1], new Map([[1, 1]]));
    recordLoad(placement, 1, [3, 2], new Map([[1, 2]]));
    state.placement = { ...state.placement, version: 2 }; // a re-plan published meanwhile
    const pending: Promise<unknown>[] = [];
    flushLoad(env, "r", (p) => pending.push(p), true);
    await Promise.all(pending);
    expect(state.reports).toHaveLength(1);
    expect(state.reports[0].calls).toEqual([1, 2]);
    expect(state.reports[0].counts).toEqual([1, 2, 1, 0, 0, 0, 1, 2]);
    expect(state.reports[0].version).toBe(1);
    // Within PLACEMENT_CHECK_MS, yet the next call asks (and gets version 2).
    vi.setSystemTime(2_000_010);
    expect((await currentPlacement(env, init)).version).toBe(2);
    expect(state.versionChecks).toBe(1);
  });
});
