/**
 * The re-plan policy (`replanStep`): an idle window copies nothing, a hot expert gets a copy,
 * an idle expert's extra replica is released, the threshold and copy budget hold, shares alone
 * are republished only past the hysteresis; and the config read from deployment variables.
 */
import { describe, expect, it } from "vitest";
import { checkPlacementInvariants, applyOps, type Placement, type Replica } from "../../../src/coordinator/placement";
import {
  DEFAULT_REPLAN_CONFIG,
  createReplanWindow,
  foldReplanWindow,
  replanConfigFromEnv,
  replanStep,
  type ReplanConfig,
} from "../../../src/coordinator/replan";
import { ConfigError } from "../../../src/platform/env";

/** One layer, 8 experts round-robin over 4 instances (expert e on e mod 4), room for 3 each. */
function placement(extra: Record<number, Replica[]> = {}): Placement {
  const replicas = [Array.from({ length: 8 }, (_, e) => extra[e] ?? [{ instance: e % 4, share: 1 }])];
  const instances = Array.from({ length: 4 }, (_, id) => ({ id, name: `m/h${id}`, budgetBytes: 3 }));
  return { model: "m", version: 1, nLayers: 1, nExperts: 8, instances, replicas };
}

const config = (over: Partial<ReplanConfig> = {}): ReplanConfig => ({ ...DEFAULT_REPLAN_CONFIG, ...over });

/** Steps the policy over `windows` of counts from a fresh EMA; returns the last decision. */
function run(p: Placement, windows: number[][], cfg = config()) {
  let state = createReplanWindow(p, cfg);
  let folded = foldReplanWindow(state, [windows[0]]);
  for (const counts of windows) {
    folded = foldReplanWindow(state, [counts]);
    state = folded.state;
  }
  return { decision: replanStep({ placement: p, expertBytes: 1 }, folded, cfg), window: folded };
}

const HOT = [400, 10, 10, 10, 10, 10, 10, 10];

describe("replanStep", () => {
  it("copies the hot expert when the window carried traffic", () => {
    const p = placement();
    const { decision } = run(p, [HOT, HOT]);
    expect(decision.reason).toBe("planned");
    const adds = decision.ops.filter((o) => o.op === "add-replica");
    expect(adds.length).toBeGreaterThan(0);
    expect(adds[0]).toMatchObject({ op: "add-replica", layer: 0, expert: 0 }); // the hot one first
    expect(decision.copies).toBe(adds.length);
    expect(decision.predicted.after).toBeLessThan(decision.predicted.before);
    const next = applyOps(p, decision.ops, decision.shares!);
    expect(checkPlacementInvariants(next, undefined, 1)).toEqual([]);
  });

  it("copies nothing on a window without traffic, however hot the forecast", () => {
    const p = placement();
    const { decision, window } = run(p, [HOT, HOT, new Array(8).fill(0)]);
    expect(window.carriedTraffic).toBe(false);
    expect(window.state.expert[0][0]).toBeGreaterThan(100); // decayed, still hot
    expect(decision.ops.filter((o) => o.op === "add-replica")).toEqual([]);
    expect(decision.copies).toBe(0);
  });

  it("releases the extra replica of an expert that went idle", () => {
    // Expert 0 on h0 and h1; it gets no traffic, the rest is balanced (h0's other expert carries 20).
    const p = placement({
      0: [
        { instance: 0, share: 0.5 },
        { instance: 1, share: 0.5 },
      ],
    });
    const counts = [0, 10, 10, 10, 20, 10, 10, 10];
    const { decision } = run(p, [counts, counts]);
    expect(decision.reason).toBe("released-idle");
    expect(decision.ops).toEqual([{ op: "remove-replica", layer: 0, expert: 0, instance: 1 }]);
    expect(decision.shares![0][0]).toEqual([{ instance: 0, share: 1 }]);
    expect(checkPlacementInvariants(applyOps(p, decision.ops, decision.shares!), undefined, 1)).toEqual([]);
  });

  it("moves nothing while every layer is within the threshold, and copies past it", () => {
    const p = placement();
    // h0 carries 23, the others 20: max/mean ≈ 1.11.
    const counts = [13, 10, 10, 10, 10, 10, 10, 10];
    const within = run(p, [counts, counts], config({ threshold: 0.2 })).decision;
    expect(within.ops).toEqual([]);
    expect(within.reason).toBe("balanced");
    expect(within.shares).toBeNull();
    const past = run(p, [counts, counts], config({ threshold: 0.05 })).decision;
    expect(past.copies).toBeGreaterThan(0);
  });

  it("spends at most maxCopies copies", () => {
    const p = placement();
    const hot = [400, 300, 200, 10, 10, 10, 10, 10];
    for (const maxCopies of [0, 1, 2]) {
      const { decision } = run(p, [hot, hot], config({ maxCopies }));
      expect(decision.copies).toBeLessThanOrEqual(maxCopies);
      expect(decision.ops.filter((o) => o.op === "add-replica")).toHaveLength(decision.copies);
    }
  });

  it("republishes shares alone only when one moves past the hysteresis", () => {
    // Expert 0 on h0 and h1 with shares far from what the loads want; nothing to copy.
    const skewed = placement({
      0: [
        { instance: 0, share: 0.9 },
        { instance: 1, share: 0.1 },
      ],
    });
    const counts = [40, 10, 10, 10, 10, 30, 30, 30];
    const moved = run(skewed, [counts, counts], config({ maxCopies: 0 })).decision;
    expect(moved.ops).toEqual([]);
    expect(moved.shares).not.toBeNull();
    // Publish those shares; the next step with the same loads leaves them.
    const next = { ...skewed, version: 2, replicas: moved.shares! };
    const again = run(next, [counts, counts], config({ maxCopies: 0 })).decision;
    expect(again.shares).toBeNull();
  });
});

describe("replanConfigFromEnv", () => {
  it("takes the defaults for unset or empty variables", () => {
    expect(replanConfigFromEnv({})).toEqual(DEFAULT_REPLAN_CONFIG);
    expect(replanConfigFromEnv({ REPLAN_THRESHOLD: "", MAX_COPIES_PER_REPLAN: " " })).toEqual(DEFAULT_REPLAN_CONFIG);
  });

  it("reads every replan variable", () => {
    const cfg = replanConfigFromEnv({
      REPLAN_INTERVAL_MS: "500",
      MAX_COPIES_PER_REPLAN: "0",
      REPLAN_THRESHOLD: "0.3",
      MAX_EXPERT_HOSTS: "12",
      SPARE_SLOT_FRACTION: "0",
    });
    expect(cfg).toMatchObject({ windowMs: 500, maxCopies: 0, threshold: 0.3, maxInstances: 12, spareSlotFraction: 0 });
  });

  it("refuses a bad value with a ConfigError naming the variable", () => {
    const bad: [string, string][] = [
      ["REPLAN_INTERVAL_MS", "50"],
      ["MAX_COPIES_PER_REPLAN", "1.5"],
      ["REPLAN_THRESHOLD", "abc"],
      ["REPLAN_THRESHOLD", "-0.1"],
      ["MAX_EXPERT_HOSTS", "0"],
      ["SPARE_SLOT_FRACTION", "0.95"],
    ];
    for (const [name, value] of bad) {
      let err: unknown;
      try {
        replanConfigFromEnv({ [name]: value });
      } catch (e) {
        err = e;
      }
      expect(err, `${name}=${value}`).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).variable).toBe(name);
      expect((err as Error).message).toContain(`"${value}"`);
    }
  });
});
