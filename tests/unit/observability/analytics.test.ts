/** Analytics Engine output: one data point per (layer, expert), hottest first, capped; none without a binding. */
import { describe, expect, it } from "vitest";
import type { CoordinatorStatus } from "../../../src/coordinator/coordinator";
import { writeLoadPoints } from "../../../src/observability/analytics";

function status(loads: number[][], layers?: number[]): CoordinatorStatus {
  const nExperts = loads[0].length;
  return {
    placement: {
      model: "m",
      version: 7,
      nLayers: loads.length,
      nExperts,
      layers,
      instances: [
        { id: 0, name: "m/h0", budgetBytes: 1 },
        { id: 1, name: "m/h1", budgetBytes: 1 },
      ],
      replicas: loads.map((row) =>
        row.map((_, e) =>
          e === 0
            ? [
                { instance: 0, share: 0.5 },
                { instance: 1, share: 0.5 },
              ]
            : [{ instance: 0, share: 1 }],
        ),
      ),
    },
    loads,
    windowMs: 1000,
    windows: 3,
    balance: loads.map(() => 1),
    lastReplans: [],
    lastReconcile: null,
    startedAt: 0,
    busySince: null,
    counters: { replans: [], ops: {}, loadFailures: 0, bytesMoved: 0, staleReports: 0, busyTurns: 0 },
  };
}

describe("writeLoadPoints", () => {
  it("writes model, layer, expert, load, replicas and version per (layer, expert), hottest first", () => {
    const points: AnalyticsEngineDataPoint[] = [];
    const env = {
      EXPERT_LOAD_AE: { writeDataPoint: (p?: AnalyticsEngineDataPoint) => p && points.push(p) },
    } as unknown as Env;
    expect(
      writeLoadPoints(
        env,
        "m",
        status(
          [
            [1, 5],
            [0, 2],
          ],
          [1, 3],
        ),
      ),
    ).toBe(4);
    expect(points[0]).toEqual({ indexes: ["m"], blobs: ["m"], doubles: [1, 1, 5, 1, 7] });
    expect(points.map((p) => p.doubles)).toEqual([
      [1, 1, 5, 1, 7],
      [3, 1, 2, 1, 7],
      [1, 0, 1, 2, 7],
      [3, 0, 0, 2, 7],
    ]);
  });

  it("caps a large model at Analytics Engine's 250 points per invocation, and needs the binding", () => {
    let n = 0;
    const env = { EXPERT_LOAD_AE: { writeDataPoint: () => n++ } } as unknown as Env;
    const big = Array.from({ length: 58 }, (_, l) => Array.from({ length: 256 }, (_, e) => l + e));
    expect(writeLoadPoints(env, "m", status(big))).toBe(250);
    expect(n).toBe(250);
    expect(writeLoadPoints({} as Env, "m", status(big))).toBe(0);
  });
});
