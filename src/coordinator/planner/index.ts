/**
 * @module The edge-moe placement planner (pure, no I/O). Given the live placement and smoothed
 * per-expert loads it proposes a small diff — add/remove replicas, add an instance — and new
 * replica shares for every expert.
 *
 * Objective: per layer, the busiest instance's load (each layer's fan-out is a barrier, so the
 * slowest instance sets its latency). Loads are tokens per window; max/mean is the busiest
 * instance's load over the mean over all instances of the placement.
 *
 * Unlike EPLB (the benchmark baseline, scripts/lib/eplb.ts), which rebuilds every slot from one
 * window of counts, it:
 * 1. re-balances shares first, for free (no copies). For a fixed placement the shares minimising
 *    Σ load² also minimise the busiest instance's load (fractional load balancing on a bipartite
 *    graph has a majorisation-minimal solution), and Σ load² is minimised one expert at a time by
 *    water-filling its load over its replicas; Gauss–Seidel sweeps converge to it. A variance term
 *    (`loadVariance`, `spread`) makes it minimise the EXPECTED Σ load² of the next window, which
 *    spreads an uncertain expert over its replicas instead of topping up the emptiest instance
 *    exactly — exact fits to last window's counts are what degrade online.
 * 2. has hysteresis: nothing moves when every layer is within `threshold` of balance.
 * 3. otherwise starts from the live placement and adds one replica at a time where it pays: an
 *    expert loading the busiest instances gets a replica on the least-loaded instance with room
 *    (evicting a spare replica whose load can go elsewhere if memory is full), then spends the rest
 *    of the copy budget hedging — a replica for the expert with the most load per replica (EPLB's
 *    criterion, applied incrementally) — and drops the whole plan if it gains less than `minGain`.
 * Invariants: ≥ 1 replica per expert, and one that already existed before the plan, so the
 * Coordinator can drain before it loads (see `drainPlacement`); never two replicas of one expert
 * on one instance; per-instance memory budgets (bytes, across all layers) hold after every op.
 */

import type { PlacementOp, Replica } from "../placement";
import { buildState, validate, type PlannerInput } from "./state";
import { exportShares, maxLoad, ratio, rebalanceLayer } from "./shares";
import { applyMove, bestHedge, bestMove, type Move } from "./moves";
import { modelled, stateLatencyMs } from "./latency";

export type { PlannerInput } from "./state";
export type { LatencyModel } from "./latency";
export { waterFill } from "./shares";
export { DEFAULT_MAX_LATENCY_LOSS, planRelease } from "./release";
export { planConsolidation, consolidationLatency, type ConsolidationInput } from "./consolidate";

/** Sweeps after each balancing move (its successor needs fresh loads); a full re-balance runs at the end. */
const SWEEPS_PER_MOVE = 4;
/** Sweeps after a hedge: it is chosen by load per replica, which shares do not change. */
const SWEEPS_PER_HEDGE = 2;

export interface LayerPrediction {
  /** Live placement, live shares. */
  before: number;
  /** Live placement, re-balanced shares: what publishing new shares alone gives. */
  sharesOnly: number;
  /** Planned placement and shares. */
  after: number;
}

export interface PlanResult {
  /** In execution order: for each move, its `add-instance`, the removals that make room, then the add. */
  ops: PlacementOp[];
  /** [layer][expert] → replicas with shares, for the placement after `ops` (what `applyOps` takes). */
  shares: Replica[][][];
  /**
   * Predicted max/mean instance load under `loads`. `before`, `sharesOnly`, `after`: the WORST
   * layer; `meanBefore`, `meanAfter`: the mean over layers; `perLayer`: every layer.
   */
  predicted: {
    before: number;
    sharesOnly: number;
    after: number;
    meanBefore: number;
    meanAfter: number;
    perLayer: LayerPrediction[];
  };
  reason: "balanced" | "planned" | "gain-below-min" | "no-move" | "not-faster";
  /** add-replica ops in `ops`. */
  copies: number;
  /**
   * With `input.latency`: the modelled latency (ms, Σ over layers of the expected layer call) of
   * the live placement with re-balanced shares, and after the plan.
   */
  latency?: { before: number; after: number };
}

/** Plans the next placement diff and shares. Pure and deterministic; see the module comment. */
export function planPlacement(input: PlannerInput): PlanResult {
  validate(input);
  const threshold = input.threshold ?? 0.02;
  const target = input.target ?? threshold / 2;
  const minGain = input.minGain ?? threshold / 2;
  const n0 = input.placement.instances.length;
  const maxInstances = Math.max(n0, input.maxInstances ?? n0);
  const newBudget = input.newInstanceBudgetBytes ?? Math.max(...input.placement.instances.map((i) => i.budgetBytes));

  const st = buildState(input);
  const before = st.layers.map((ls) => ratio(ls, n0));
  // Shares are solved from even splits, not from the live ones: then every decision below is a
  // function of (replica sets, loads) alone, and re-planning an unchanged input gives the same
  // answer. (Warm starts saved ~15% of the sweeps, but made decisions near the hysteresis and
  // gain thresholds depend on the previous plan's shares: the plan → publish → plan loop then
  // failed to settle on unchanged loads.)
  for (const ls of st.layers) {
    ls.instLoad.fill(0);
    for (let e = 0; e < ls.share.length; e++) {
      const k = ls.inst[e].length;
      ls.share[e].fill(1 / k);
      for (const i of ls.inst[e]) ls.instLoad[i] += ls.load[e] / k;
    }
    rebalanceLayer(ls, n0, st.maxSweeps);
  }
  const sharesOnly = st.layers.map((ls) => ratio(ls, n0));
  const model = modelled(input.latency) ? input.latency : undefined;
  const latencyBefore = model ? stateLatencyMs(st, n0, model) : 0;
  const maxBefore = st.layers.map(maxLoad);
  const meanBefore = st.layers.map((ls) => ls.total / n0);

  const result = (
    ops: PlacementOp[],
    reason: PlanResult["reason"],
    after: number[],
    copies: number,
    latencyAfter = latencyBefore,
  ): PlanResult => ({
    ...(model ? { latency: { before: latencyBefore, after: latencyAfter } } : {}),
    ops,
    shares: exportShares(st),
    predicted: {
      before: Math.max(...before),
      sharesOnly: Math.max(...sharesOnly),
      after: Math.max(...after),
      meanBefore: mean(before),
      meanAfter: mean(after),
      perLayer: before.map((b, l) => ({ before: b, sharesOnly: sharesOnly[l], after: after[l] })),
    },
    reason,
    copies,
  });

  const balanced = sharesOnly.every((r) => r <= 1 + threshold);
  if (balanced || input.maxCopies === 0) return result([], balanced ? "balanced" : "no-move", sharesOnly, 0);
  // What is returned if nothing pays: the live placement with re-balanced shares.
  const snapshot = st.layers.map((ls) => ({
    inst: ls.inst.map((is) => is.slice()),
    share: ls.share.map((sh) => sh.slice()),
  }));
  const sharesOnlyResult = (reason: PlanResult["reason"]): PlanResult => {
    st.layers.forEach((ls, l) => {
      ls.inst = snapshot[l].inst;
      ls.share = snapshot[l].share;
    });
    return result([], reason, sharesOnly, 0);
  };

  const ops: PlacementOp[] = [];
  const touched = new Set<number>();
  let copies = 0;
  let n = n0;
  const stuck = new Set<number>();
  // With a latency model: the modelled latency after each move, counting each copy's load time
  // on its destination (see `latency.ts`); the plan is later cut to its fastest prefix.
  const latencies: number[] = [];
  const loading: number[] = [];
  const record = (move: Move, nBefore: number): void => {
    if (!model) return;
    const j = move.instance < 0 ? nBefore : move.instance;
    loading[j] = (loading[j] ?? 0) + st.bytes(move.layer, move.expert);
    latencies.push(stateLatencyMs(st, n, model, loading));
  };
  while (copies < input.maxCopies) {
    let l = -1;
    let worst = 1 + target;
    for (let k = 0; k < st.nLayers; k++) {
      const r = ratio(st.layers[k], n);
      if (!stuck.has(k) && r > worst) {
        worst = r;
        l = k;
      }
    }
    if (l < 0) break;
    const move = bestMove(st, l, n, n < maxInstances);
    if (!move || move.score <= 0) {
      stuck.add(l);
      continue;
    }
    const nBefore = n;
    n = applyMove(st, move, ops, n, newBudget, touched, SWEEPS_PER_MOVE);
    record(move, nBefore);
    copies++;
  }
  if (input.hedge ?? true) {
    const margin = input.hedgeMargin ?? 0.25;
    while (copies < input.maxCopies) {
      const move = bestHedge(st, n, margin);
      if (!move) break;
      const nBefore = n;
      n = applyMove(st, move, ops, n, newBudget, touched, SWEEPS_PER_HEDGE);
      record(move, nBefore);
      copies++;
    }
  }
  if (ops.length === 0) return sharesOnlyResult("no-move");
  if (model) {
    // Keep the prefix of moves with the lowest modelled latency, and only if it beats the live
    // placement by `minLatencyGain`: a copy that makes layer calls slower at this load is not made.
    // Each further copy kept must gain `MIN_COPY_GAIN` of the live latency on its own, more than
    // a release tolerates losing (`planRelease`), so a kept copy is not released next window.
    let k = 0;
    let bestMs = latencyBefore;
    latencies.forEach((ms, i) => {
      if (ms < bestMs - MIN_COPY_GAIN * latencyBefore) {
        bestMs = ms;
        k = i + 1;
      }
    });
    if (k === 0 || bestMs > latencyBefore * (1 - (input.minLatencyGain ?? DEFAULT_MIN_LATENCY_GAIN)))
      return sharesOnlyResult("not-faster");
    if (k < copies) {
      // The greedy is deterministic and stops at its copy budget, so the cut plan is a re-run.
      const cut = planPlacement({ ...input, maxCopies: k, latency: undefined });
      if (cut.ops.length === 0) return { ...cut, latency: { before: latencyBefore, after: latencyBefore } };
      return { ...cut, latency: { before: latencyBefore, after: latencies[k - 1] } };
    }
  }
  for (const l of touched) rebalanceLayer(st.layers[l], n, st.maxSweeps);

  let gain = 0;
  st.layers.forEach((ls, l) => {
    if (meanBefore[l] > 0) gain += (maxBefore[l] - maxLoad(ls)) / meanBefore[l];
  });
  if (gain < minGain) return sharesOnlyResult("gain-below-min");
  return result(
    ops,
    "planned",
    st.layers.map((ls) => ratio(ls, n)),
    copies,
    model ? stateLatencyMs(st, n, model, loading) : latencyBefore,
  );
}

/** Every copy a plan keeps must lower the modelled latency by this fraction of the live one. */
const MIN_COPY_GAIN = 0.02;

/** A plan must beat the live placement's modelled latency by this fraction. */
export const DEFAULT_MIN_LATENCY_GAIN = 0.05;

function mean(xs: readonly number[]): number {
  return xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length;
}
