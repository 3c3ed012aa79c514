/**
 * Consolidation after a burst (planner/consolidate.ts, its step in replan.ts, its execution in
 * execute.ts): lone experts the burst left on added instances move home when the load is idle and
 * the placement has settled, never under load or while replicated; budgets hold; an instance is
 * retired only when empty; the execution loads the new copy before any version routes to it and
 * unloads the old one only after the drain.
 */
import { describe, expect, it } from "vitest";
import { initialPlacement } from "../../../src/coordinator/initial-placement";
import { applyOps, checkPlacementInvariants, type Placement, type Replica } from "../../../src/coordinator/placement";
import { planConsolidation } from "../../../src/coordinator/planner";
import {
  DEFAULT_REPLAN_CONFIG,
  createReplanWindow,
  foldReplanWindow,
  replanStep,
  type ReplanConfig,
} from "../../../src/coordinator/replan";
import { executeMoves, type ExecuteDeps } from "../../../src/coordinator/execute";
import type { ExpertLoadResult, ExpertRef } from "../../../src/experts/protocol";

const HOME = 3;
/** Fresh: one layer, 6 experts round-robin over 3 instances (room for 3 each). */
const fresh = (): Placement =>
  initialPlacement({ model: "m", nLayers: 1, nExperts: 6, expertBytes: 1, budgetBytes: 3, minInstances: HOME });

/** The fresh placement grown to `n` instances, with `lone` experts' only copy moved to other instances. */
function afterBurst(n: number, lone: Record<number, number>, budgetBytes = 3): Placement {
  const p = fresh();
  const instances = Array.from({ length: n }, (_, id) => ({ id, name: `m/h${id}`, budgetBytes }));
  const replicas: Replica[][][] = [
    p.replicas[0].map((reps, e) => [{ instance: lone[e] ?? reps[0].instance, share: 1 }]),
  ];
  return { ...p, version: 9, instances, replicas };
}

const config = (over: Partial<ReplanConfig> = {}): ReplanConfig => ({ ...DEFAULT_REPLAN_CONFIG, ...over });

describe("planConsolidation", () => {
  it("moves burst-added lone experts home and retires the emptied instances", () => {
    const p = afterBurst(6, { 1: 3, 2: 4 }); // experts 1 and 2 alone on h3 and h4; h5 empty
    const ops = planConsolidation({ placement: p, expertBytes: 1, homeInstances: HOME, maxCopies: 16 });
    expect(ops).toEqual([
      { op: "add-replica", layer: 0, expert: 1, instance: 1 },
      { op: "add-replica", layer: 0, expert: 2, instance: 2 },
      { op: "remove-replica", layer: 0, expert: 1, instance: 3 },
      { op: "remove-replica", layer: 0, expert: 2, instance: 4 },
      { op: "remove-instance", instance: 5 },
      { op: "remove-instance", instance: 4 },
      { op: "remove-instance", instance: 3 },
    ]);
    const next = applyOps(p, ops, [p.replicas[0].map((_, e) => [{ instance: e % HOME, share: 1 }])]);
    expect(next.instances).toHaveLength(HOME);
    expect(next.replicas).toEqual(fresh().replicas); // the fresh placement again
    expect(checkPlacementInvariants(next, undefined, 1)).toEqual([]);
  });

  it("moves nothing while an expert is replicated, and nothing when already home", () => {
    const p = afterBurst(5, { 1: 3 });
    p.replicas[0][0] = [
      { instance: 0, share: 0.5 },
      { instance: 4, share: 0.5 },
    ];
    expect(planConsolidation({ placement: p, expertBytes: 1, homeInstances: HOME, maxCopies: 16 })).toEqual([]);
    expect(planConsolidation({ placement: fresh(), expertBytes: 1, homeInstances: HOME, maxCopies: 16 })).toEqual([]);
  });

  it("respects budgets: a full home sends an added instance's expert to the roomiest fresh one, or leaves it", () => {
    // Budget 2. Expert 0 moved h0 → h2 (h2 now full: 0 and 5), expert 2 alone on the added h3.
    const p = afterBurst(4, { 2: 3, 0: 2 }, 2);
    const ops = planConsolidation({ placement: p, expertBytes: 1, homeInstances: HOME, maxCopies: 16 });
    // Expert 2 first (it widens the fan-out): its home h2 is full, h0 has a slot. Expert 0's home
    // h0 is then full (its old copy on h2 leaves only after the drain): it stays for a later plan.
    expect(ops).toEqual([
      { op: "add-replica", layer: 0, expert: 2, instance: 0 },
      { op: "remove-replica", layer: 0, expert: 2, instance: 3 },
      { op: "remove-instance", instance: 3 },
    ]);
    const full = afterBurst(4, { 2: 3 }, 2);
    full.instances[2].budgetBytes = 1; // h2 holds expert 5 and nothing more; h0 and h1 hold 2 of 2
    expect(checkPlacementInvariants(full, undefined, 1)).toEqual([]);
    // No room anywhere: h3 keeps expert 2 and stays listed.
    expect(planConsolidation({ placement: full, expertBytes: 1, homeInstances: HOME, maxCopies: 16 })).toEqual([]);
  });

  it("retires an instance only when empty, from the tail", () => {
    // Expert 1 alone on h4 and unable to move (every fresh instance full): the empty h5 goes; h4
    // (holding it) stays, and so does the empty h3 before it (ids are indices).
    const p = afterBurst(6, { 1: 4 }, 2);
    p.instances[1].budgetBytes = 1;
    expect(checkPlacementInvariants(p, undefined, 1)).toEqual([]);
    const ops = planConsolidation({ placement: p, expertBytes: 1, homeInstances: HOME, maxCopies: 16 });
    expect(ops).toEqual([{ op: "remove-instance", instance: 5 }]);
    const kept = p.replicas;
    expect(() => applyOps(p, [{ op: "remove-instance", instance: 4 }], kept)).toThrow(/not the last/);
    const cut = applyOps(p, ops, kept);
    expect(() => applyOps(cut, [{ op: "remove-instance", instance: 4 }], kept)).toThrow(/still holds/);
  });

  it("spends at most maxCopies moves, and retires nothing still holding an expert", () => {
    const p = afterBurst(6, { 0: 3, 1: 4, 2: 5 });
    const ops = planConsolidation({ placement: p, expertBytes: 1, homeInstances: HOME, maxCopies: 2 });
    expect(ops.filter((o) => o.op === "add-replica")).toHaveLength(2);
    expect(ops.filter((o) => o.op === "remove-instance")).toEqual([]); // expert 2 still on h5
    const next = applyOps(p, ops, [
      p.replicas[0].map((reps, e) => [{ instance: e < 2 ? e : reps[0].instance, share: 1 }]),
    ]);
    const rest = planConsolidation({ placement: next, expertBytes: 1, homeInstances: HOME, maxCopies: 2 });
    expect(rest.filter((o) => o.op === "remove-instance")).toHaveLength(3);
  });
});

describe("replanStep: consolidation", () => {
  const MiB = 2 ** 20;
  const burst = () => afterBurst(6, { 1: 3, 2: 4 }, 12 * MiB);
  /** Folds `windows` of (counts, calls) from a fresh EMA; returns the last folded window. */
  function fold(p: Placement, windows: [number[], number][]) {
    let state = createReplanWindow(p, config());
    let folded = foldReplanWindow(state, [windows[0][0]], 1, undefined, [windows[0][1]]);
    for (const [counts, calls] of windows) {
      folded = foldReplanWindow(state, [counts], 1, undefined, [calls]);
      state = folded.state;
    }
    return folded;
  }
  const live = (stableWindows: number, homeInstances: number | null = HOME, expertBytes = 4 * MiB) => ({
    placement: burst(),
    expertBytes,
    stableWindows,
    ...(homeInstances ? { homeInstances } : {}),
  });
  const idle = () =>
    fold(burst(), [
      [[1, 1, 1, 1, 1, 1], 1],
      [[0, 0, 0, 0, 0, 0], 0],
    ]);

  it("moves the lone experts home on an idle window once the placement has settled", () => {
    const d = replanStep(live(DEFAULT_REPLAN_CONFIG.consolidateAfterWindows), idle(), config());
    expect(d.reason).toBe("consolidated");
    expect(d.copies).toBe(2);
    const next = applyOps(burst(), d.ops, d.shares!);
    expect(next.instances).toHaveLength(HOME);
    expect(next.replicas).toEqual(fresh().replicas);
  });

  it("waits consolidateAfterWindows unchanged windows, and needs the fresh placement's size", () => {
    expect(replanStep(live(DEFAULT_REPLAN_CONFIG.consolidateAfterWindows - 1), idle(), config()).ops).toEqual([]);
    expect(replanStep(live(5), idle(), config({ consolidateAfterWindows: 6 })).ops).toEqual([]);
    expect(replanStep(live(50, null), idle(), config()).ops).toEqual([]);
  });

  it("moves nothing under load: two hot experts would share their home instance", () => {
    // Experts 1 and 4 (both at home on h1) carry the load; the burst left 1 on h3.
    const hot = fold(burst(), [
      [[1, 100, 1, 1, 100, 1], 50],
      [[1, 100, 1, 1, 100, 1], 50],
    ]);
    // As deployed the planner copies the hot experts; with copies ruled out (a huge threshold) the
    // latency model still refuses the moves.
    for (const cfg of [config(), config({ threshold: 100 })]) {
      const d = replanStep(live(50), hot, cfg);
      expect(d.reason).not.toBe("consolidated");
      expect(d.ops.filter((o) => o.op === "remove-replica" || o.op === "remove-instance")).toEqual([]);
    }
    // Without the latency model a loaded window never consolidates.
    // (A single stream: a row per expert a window, two rows a call; copies ruled out as above.)
    const low = fold(burst(), [[[1, 1, 1, 1, 1, 1], 3]]);
    expect(replanStep(live(50), low, config({ latency: null, threshold: 100 })).reason).not.toBe("consolidated");
    // With it, a light load where fewer instances per call is cheaper does: small experts, whose
    // kernel time is below what a wider fan-out costs; where a pass costs more than the wider
    // fan-out (4 MiB experts at 0.4 ms a MiB: 1.6 ms, a slower machine than the deployed costs
    // describe), two rows in parallel win and it does not.
    expect(replanStep(live(50, HOME, MiB / 4), low, config({ threshold: 100 })).reason).toBe("consolidated");
    // At the deployed costs (0.13 + 0.02 ms a MiB: 0.6 ms a row of 4 MiB) the wider fan-out costs more.
    expect(replanStep(live(50), low, config({ threshold: 100 })).reason).toBe("consolidated");
    const slowKernel = { rpcMs: 1, passMsPerMiB: 0.4, rowMsPerMiB: 0, loadMsPerMiB: 5 };
    expect(replanStep(live(50), low, config({ threshold: 100, latency: slowKernel })).reason).not.toBe("consolidated");
  });
});

describe("executeMoves", () => {
  function deps(failOn: string | null = null) {
    const events: string[] = [];
    const published: Placement[] = [];
    const d: ExecuteDeps = {
      host: (name) => ({
        load: async (_m: string, experts: ExpertRef[]): Promise<ExpertLoadResult> => {
          events.push(`load ${name} ${experts.map((e) => `${e.layer}:${e.expert}`).join(",")}`);
          if (name === failOn) return { ok: false as const, code: "budget_exceeded", message: "full" };
          return { ok: true as const, stats: {} as never };
        },
        unload: async (_m: string, experts: ExpertRef[]) => {
          events.push(`unload ${name} ${experts.map((e) => `${e.layer}:${e.expert}`).join(",")}`);
          return {} as never;
        },
      }),
      publish: (p) => {
        events.push(`publish v${p.version} ${p.instances.length} instances`);
        published.push(p);
      },
      drainMs: 0,
    };
    return { d, events, published };
  }

  it("loads the new copies, publishes them with the emptied instances retired, then unloads the old ones", async () => {
    const p = afterBurst(6, { 1: 3, 2: 4 });
    const ops = planConsolidation({ placement: p, expertBytes: 1, homeInstances: HOME, maxCopies: 16 });
    const { d, events, published } = deps();
    const done = await executeMoves(p, ops, d);
    expect(events).toEqual([
      "load m/h1 0:1",
      "load m/h2 0:2",
      "publish v10 3 instances",
      "unload m/h3 0:1",
      "unload m/h4 0:2",
    ]);
    expect(published).toHaveLength(1); // no version without a loaded copy of every expert
    expect(done.placement.replicas).toEqual(fresh().replicas);
    expect(done.applied).toEqual(ops);
    expect(done.failedLoads).toEqual([]);
  });

  it("keeps the old copy, and its instance, when the new copy fails to load", async () => {
    const p = afterBurst(6, { 1: 3, 2: 4 });
    const ops = planConsolidation({ placement: p, expertBytes: 1, homeInstances: HOME, maxCopies: 16 });
    const { d, events } = deps("m/h2");
    const done = await executeMoves(p, ops, d);
    expect(done.failedLoads).toEqual(["m/h2: full"]);
    expect(done.placement.replicas[0][2]).toEqual([{ instance: 4, share: 1 }]);
    expect(done.placement.replicas[0][1]).toEqual([{ instance: 1, share: 1 }]);
    expect(done.placement.instances).toHaveLength(5); // h5 retired; h4 still holds expert 2
    expect(events.filter((e) => e.startsWith("unload"))).toEqual(["unload m/h3 0:1"]);
    expect(checkPlacementInvariants(done.placement, undefined, 1)).toEqual([]);
  });
  it("publishes nothing when every load fails and no instance can be retired", async () => {
    // One lone expert on h3, the only added instance: its move home fails, so h3 stays listed.
    const p = afterBurst(4, { 1: 3 });
    const ops = planConsolidation({ placement: p, expertBytes: 1, homeInstances: HOME, maxCopies: 16 });
    expect(ops.some((o) => o.op === "add-replica")).toBe(true);
    const { d, events, published } = deps("m/h1");
    const done = await executeMoves(p, ops, d);
    expect(published).toEqual([]);
    expect(done.placement).toBe(p);
    expect(done.applied).toEqual([]);
    expect(events.filter((e) => e.startsWith("unload"))).toEqual([]);
  });
});
