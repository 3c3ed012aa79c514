/**
 * Reconcile against fake hosts: every instance of the placement, and those past it up to the
 * instance cap, is told exactly what the placement assigns it; unreachable hosts are reported.
 */
import { describe, expect, it } from "vitest";
import type { Placement } from "../../../src/coordinator/placement";
import { reconcileHosts, type ReconcileTarget } from "../../../src/coordinator/reconcile";
import type { ExpertRef } from "../../../src/experts/protocol";

const p: Placement = {
  model: "m",
  version: 7,
  nLayers: 2,
  nExperts: 2,
  layers: [1, 3], // MoE rows are model layers 1 and 3
  instances: [0, 1].map((id) => ({ id, name: `m/h${id}`, budgetBytes: 10 })),
  replicas: [
    [
      [{ instance: 0, share: 1 }],
      [
        { instance: 1, share: 0.5 },
        { instance: 0, share: 0.5 },
      ],
    ],
    [[{ instance: 1, share: 1 }], [{ instance: 0, share: 1 }]],
  ],
};

/** Hosts holding `held`, unloading as a real one would; "m/h3" is unreachable. */
function fakeHosts(held: Record<string, ExpertRef[]>) {
  const told: Record<string, ExpertRef[]> = {};
  const host = (name: string): ReconcileTarget => ({
    async reconcile(_model, assigned) {
      if (name === "m/h3") throw new Error("unreachable");
      told[name] = assigned;
      const keep = new Set(assigned.map((e) => `${e.layer}:${e.expert}`));
      const unloaded = (held[name] ?? []).filter((e) => !keep.has(`${e.layer}:${e.expert}`));
      held[name] = (held[name] ?? []).filter((e) => keep.has(`${e.layer}:${e.expert}`));
      return { ok: true, unloaded };
    },
  });
  return { host, told, held };
}

describe("reconcileHosts", () => {
  it("tells each instance its assignment in model layers and collects what they unloaded", async () => {
    const f = fakeHosts({
      "m/h0": [
        { layer: 1, expert: 0 },
        { layer: 1, expert: 1 },
        { layer: 3, expert: 0 },
        { layer: 3, expert: 1 },
      ],
      "m/h1": [
        { layer: 1, expert: 1 },
        { layer: 3, expert: 0 },
      ],
      "m/h2": [{ layer: 1, expert: 0 }], // left by an add-instance that was never published
    });
    const report = await reconcileHosts(p, 3, f.host);
    expect(f.told["m/h0"]).toEqual([
      { layer: 1, expert: 0 },
      { layer: 1, expert: 1 },
      { layer: 3, expert: 1 },
    ]);
    expect(f.told["m/h1"]).toEqual([
      { layer: 1, expert: 1 },
      { layer: 3, expert: 0 },
    ]);
    expect(f.told["m/h2"]).toEqual([]);
    expect(report.unloaded).toEqual({ "m/h0": [{ layer: 3, expert: 0 }], "m/h2": [{ layer: 1, expert: 0 }] });
    expect(report).toMatchObject({ version: 7, failed: [] });
  });

  it("reports a host it cannot reach", async () => {
    const f = fakeHosts({});
    const report = await reconcileHosts(p, 4, f.host);
    expect(report.failed).toEqual(["m/h3: unreachable"]);
    expect(Object.keys(f.told).sort()).toEqual(["m/h0", "m/h1", "m/h2"]);
  });
});
