/**
 * The EPLB baseline: DeepSeek's published README example reproduced exactly, and the global
 * policy's own guarantees (every GPU gets the same number of slots, replica counts follow load),
 * and the planner contract edge-moe's planner passes too (tests/unit/coordinator/planner.test.ts).
 */
import { describe, expect, it } from "vitest";
import {
  balancedPacking,
  eplbPlacement,
  rebalanceExperts,
  rebalanceExpertsGlobal,
  replicateExperts,
  roundRobinPlacement,
} from "../../scripts/lib/eplb";
import { checkPlacementInvariants } from "../../src/coordinator/placement";
import { createRng } from "../../src/serving/sampling";

describe("EPLB: the published example (github.com/deepseek-ai/EPLB README)", () => {
  // 2 layers × 12 experts, 16 physical slots, 4 groups, 2 nodes, 8 GPUs → the hierarchical policy.
  const weight = [
    [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
    [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
  ];
  it("gives the published physical-to-logical map", () => {
    const { phy2log, logcnt, log2phy } = rebalanceExperts(weight, 16, 4, 2, 8);
    expect(phy2log).toEqual([
      [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
      [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1],
    ]);
    // Consistency of the three views.
    logcnt.forEach((row, l) => {
      expect(row.reduce((a, b) => a + b, 0)).toBe(16);
      row.forEach((c, e) => {
        const slots = log2phy[l][e].filter((s) => s >= 0);
        expect(slots).toHaveLength(c);
        for (const s of slots) expect(phy2log[l][s]).toBe(e);
      });
    });
  });
});

describe("EPLB: global policy", () => {
  it("replicates the expert with the highest load per replica, first on ties", () => {
    const r = replicateExperts([10, 40, 20], 6);
    // 40 → 2 (20/replica); then 20,20 tie with expert 1 first → expert 1 gets a 3rd (13.3); then expert 2 (20).
    expect(r.phy2log).toEqual([0, 1, 2, 1, 1, 2]);
    expect(r.logcnt).toEqual([1, 3, 2]);
    expect(r.rank).toEqual([0, 0, 0, 1, 2, 1]);
  });

  it("packs heaviest first onto the lightest pack with room, equal counts per pack", () => {
    const { packIndex, rankInPack } = balancedPacking([9, 1, 8, 2, 7, 3], 3);
    // 9→p0, 8→p1, 7→p2, 3→p2 (7), 2→p1 (8), 1→p0 (9)
    expect(packIndex).toEqual([0, 0, 1, 1, 2, 2]);
    expect(rankInPack).toEqual([0, 1, 0, 1, 0, 1]);
  });

  it("fills every slot, the same number per GPU, and its placement is well-formed", () => {
    const loads = [Array.from({ length: 64 }, (_, e) => Math.round(5000 / (1 + e)))];
    const slots = 6;
    const { phy2log } = rebalanceExpertsGlobal(loads, 16 * slots, 16);
    expect(phy2log[0]).toHaveLength(96);
    expect(new Set(phy2log[0]).size).toBe(64);
    const instances = Array.from({ length: 16 }, (_, id) => ({ id, name: `h${id}`, budgetBytes: slots }));
    const p = eplbPlacement(loads, slots, { model: "t", instances });
    expect(checkPlacementInvariants(p, undefined, 1)).toEqual([]);
    // Expert 0 (the hottest) has the most replicas, each with an even share.
    const k0 = p.replicas[0][0].reduce((a, r) => a + r.share, 0);
    expect(k0).toBeCloseTo(1, 9);
    expect(p.replicas[0][0].length).toBeGreaterThan(p.replicas[0][63].length);
  });

  it("merges two slots of one expert on one instance into one replica with the summed share", () => {
    // One instance with 3 slots and 2 experts: EPLB puts expert 0 twice on it.
    const p = eplbPlacement([[100, 1]], 3, { model: "t", instances: [{ id: 0, name: "h0", budgetBytes: 3 }] });
    expect(p.replicas[0][0]).toEqual([{ instance: 0, share: 1 }]);
    expect(p.replicas[0][1]).toEqual([{ instance: 0, share: 1 }]);
  });

  it("rejects shapes it cannot split", () => {
    expect(() => rebalanceExpertsGlobal([[1, 2, 3]], 7, 2)).toThrow(/do not split over 2 GPUs/);
    expect(() => replicateExperts([1, 2, 3], 2)).toThrow(/cannot hold 3 experts/);
  });
});

describe("round-robin placement", () => {
  it("puts expert e of layer l on instance (e + l) mod N, share 1", () => {
    const instances = Array.from({ length: 3 }, (_, id) => ({ id, name: `h${id}`, budgetBytes: 10 }));
    const p = roundRobinPlacement(2, 4, { model: "t", instances });
    expect(p.replicas[0].map((r) => r[0].instance)).toEqual([0, 1, 2, 0]);
    expect(p.replicas[1].map((r) => r[0].instance)).toEqual([1, 2, 0, 1]);
    expect(checkPlacementInvariants(p, undefined, 1)).toEqual([]);
  });
});

describe("EPLB: the planner contract", () => {
  it("yields valid placements within slot budgets over random Zipf loads", () => {
    for (let seed = 1; seed <= 80; seed++) {
      const rng = createRng(seed * 13);
      const randInt = (lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1));
      const nInstances = randInt(2, 10);
      const nExperts = nInstances * randInt(1, 4);
      const slots = nExperts / nInstances + randInt(0, 3);
      const instances = Array.from({ length: nInstances }, (_, id) => ({ id, name: `h${id}`, budgetBytes: slots }));
      let placement = roundRobinPlacement(1, nExperts, { model: "t", instances });
      for (let w = 0; w < 3; w++) {
        const loads = [
          Array.from({ length: nExperts }, (_, e) => Math.round(1000 / (1 + ((e * 7 + w * 3) % nExperts)) ** 1.1)),
        ];
        placement = eplbPlacement(loads, slots, { model: "t", instances, version: placement.version + 1 });
        expect(checkPlacementInvariants(placement, undefined, 1), `eplb seed ${seed}`).toEqual([]);
      }
    }
  });
});
