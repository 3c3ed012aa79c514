/**
 * Load reports at the Coordinator: counts and calls of every report are kept, rows per instance
 * only from reports routed under the live placement version.
 */
import { describe, expect, it } from "vitest";
import { LoadIntake } from "../../../src/coordinator/load-intake";
import type { Placement } from "../../../src/coordinator/placement";
import type { LoadReport } from "../../../src/experts/protocol";

const placement: Placement = {
  model: "m",
  version: 5,
  nLayers: 2,
  nExperts: 2,
  instances: [
    { id: 0, name: "m/h0", budgetBytes: 1 },
    { id: 1, name: "m/h1", budgetBytes: 1 },
  ],
  replicas: [0, 1].map(() => [0, 1].map((e) => [{ instance: e, share: 1 }])),
};

function report(version: number, over: Partial<LoadReport> = {}): LoadReport {
  return {
    model: "m",
    nLayers: 2,
    nExperts: 2,
    counts: [3, 1, 2, 2],
    calls: [2, 2],
    instanceRows: { 0: 5, 1: 3 },
    version,
    ...over,
  };
}

describe("LoadIntake", () => {
  it("keeps counts and calls from every version, instance rows from the live one only", () => {
    const intake = new LoadIntake();
    expect(intake.add(placement, report(5))).toBe(true);
    expect(intake.add(placement, report(4))).toBe(true); // routed under the last version
    expect(intake.staleReports).toBe(1);
    const taken = intake.take(placement);
    expect(taken.expertCounts).toEqual([
      [6, 2],
      [4, 4],
    ]);
    expect(taken.calls).toEqual([4, 4]);
    expect(taken.instanceCounts).toEqual([5, 3]);
    expect(taken.tokens).toBe(16);
    // take() starts afresh.
    const empty = intake.take(placement);
    expect(empty.tokens).toBe(0);
    expect(empty.calls).toBeUndefined();
  });

  it("refuses a report of another shape or model, and ignores bad values", () => {
    const intake = new LoadIntake();
    expect(intake.add(placement, report(5, { model: "other" }))).toBe(false);
    expect(intake.add(placement, report(5, { counts: [1, 2, 3] }))).toBe(false);
    expect(intake.add(placement, report(5, { counts: [Number.NaN, -1, 2, 1], instanceRows: { 99999: 4, 1: 2 } }))).toBe(
      true,
    );
    const taken = intake.take(placement);
    expect(taken.tokens).toBe(3);
    expect(taken.instanceCounts).toEqual([0, 2]);
  });
});
