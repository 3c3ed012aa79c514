/**
 * @module The re-plan policy, pure: what the Coordinator does with one folded load window. The
 * Coordinator's alarm, `npm run bench:placement` and `npm run simulate` all call `replanStep`
 * with a `ReplanConfig`, so a benchmark result describes the policy that ships. The deployed
 * knobs are `wrangler.toml` `[vars]`, read by `replanConfigFromEnv`; `DEFAULT_REPLAN_CONFIG`
 * holds the defaults (the same values as `wrangler.toml`; a test checks they agree).
 *
 * One step: fold the window's counts into the EMA loads (or decay them when nothing was counted);
 * plan from the live placement — copies only when the window carried traffic (no copies are spent
 * on a forecast nobody is sending), and, with the latency model (`config.latency` and call counts
 * in the reports), only copies that make layer calls faster at the current load; when the plan
 * copies nothing, release the extra replicas of experts that went idle, then those the model says
 * no longer pay; once released and unchanged for `consolidateAfterWindows` windows, move lone
 * experts back home and retire the emptied instances (planner/consolidate.ts) — on an idle window,
 * or with the latency model when that is no slower at the current load; otherwise publish
 * re-balanced shares only when one moved noticeably.
 */
import { intVar, numberVar, type Vars } from "../platform/env";
import {
  createLoadWindow,
  decayIdle,
  foldWindow,
  forecastLoads,
  loadVariance,
  type LoadWindowConfig,
  type LoadWindowState,
} from "./load-window";
import { sharesAfter, type ExpertBytes, type Placement, type PlacementOp, type Replica } from "./placement";
import {
  consolidationLatency,
  DEFAULT_MAX_LATENCY_LOSS,
  planConsolidation,
  planPlacement,
  planRelease,
  type LatencyModel,
  type PlanResult,
} from "./planner";

export interface ReplanConfig {
  /** Load window and re-plan period (`REPLAN_INTERVAL_MS`). */
  windowMs: number;
  /** Most new replicas (weight copies) per re-plan (`MAX_COPIES_PER_REPLAN`). */
  maxCopies: number;
  /** No copies while every layer's max/mean instance load is ≤ 1 + this (`REPLAN_THRESHOLD`). */
  threshold: number;
  /** Instances the planner may grow the placement to (`MAX_EXPERT_HOSTS`). */
  maxInstances: number;
  /** Share of each instance's slots left free for replicas at the first placement (`SPARE_SLOT_FRACTION`). */
  spareSlotFraction: number;
  /** An expert whose forecast is at most this fraction of its layer's mean (or 0.5 tokens) is idle. */
  idleFraction: number;
  /** Shares alone are republished only when one replica's share moves by more than this. */
  shareHysteresis: number;
  /** The planner's `spread`: relative variance added to every expert's forecast. */
  spread: number;
  /** Feed the window's measured forecast variance to the planner (false: Poisson, variance = load). */
  useVariance: boolean;
  /** EMA smoothing of the load window. */
  loadWindow: Required<Pick<LoadWindowConfig, "halfLifeWindows" | "riseAlpha" | "trendAlpha">>;
  /**
   * The latency model's measured costs (planner/latency.ts): one RPC round trip of a layer call
   * (`PLACEMENT_RPC_MS`), an expert pass's weight read per MiB of expert weights
   * (`PLACEMENT_PASS_MS_PER_MIB`), the compute a routed row adds to it per MiB
   * (`PLACEMENT_ROW_MS_PER_MIB`), and a replica's load time per MiB. null (all three vars 0):
   * balance alone decides, as before the model.
   */
  latency: { rpcMs: number; rowMsPerMiB: number; passMsPerMiB: number; loadMsPerMiB: number } | null;
  /**
   * Windows the placement must stay unchanged (no copy, release or move) before lone experts are
   * moved home after a burst: the release settles first, and a load that comes back within them
   * keeps its placement (hysteresis against the replication; 20 windows = 10 s, so one user's
   * pause between requests does not copy experts that the next request's burst may move again).
   */
  consolidateAfterWindows: number;
}

/**
 * The deployed policy. `wrangler.toml` `[vars]` sets the first five to the same values; the rest
 * have no variable. Chosen with `npm run bench:placement` and `npm run simulate` (README,
 * "Placement: measured"): the best online balance and latency for the copies they cost.
 */
export const DEFAULT_REPLAN_CONFIG: Readonly<ReplanConfig> = Object.freeze({
  windowMs: 500,
  maxCopies: 16,
  threshold: 0.05,
  maxInstances: 8,
  spareSlotFraction: 0.25,
  idleFraction: 0.02,
  shareHysteresis: 0.05,
  spread: 0.2,
  useVariance: true,
  loadWindow: Object.freeze({ halfLifeWindows: 2, riseAlpha: 1, trendAlpha: 0.3 }),
  latency: Object.freeze({ rpcMs: 1, passMsPerMiB: 0.13, rowMsPerMiB: 0.02, loadMsPerMiB: 5 }),
  consolidateAfterWindows: 20,
});

/** A deployment's re-plan config: `DEFAULT_REPLAN_CONFIG` with its `[vars]` applied (ConfigError on a bad value). */
export function replanConfigFromEnv(vars: Vars): ReplanConfig {
  const d = DEFAULT_REPLAN_CONFIG;
  return {
    ...d,
    loadWindow: { ...d.loadWindow },
    windowMs: intVar(vars, "REPLAN_INTERVAL_MS", d.windowMs, { min: 100 }),
    maxCopies: intVar(vars, "MAX_COPIES_PER_REPLAN", d.maxCopies, { min: 0 }),
    threshold: numberVar(vars, "REPLAN_THRESHOLD", d.threshold, { min: 0 }),
    maxInstances: intVar(vars, "MAX_EXPERT_HOSTS", d.maxInstances, { min: 1 }),
    spareSlotFraction: numberVar(vars, "SPARE_SLOT_FRACTION", d.spareSlotFraction, { min: 0, max: 0.9 }),
    latency: latencyFromEnv(vars, d.latency),
  };
}

function latencyFromEnv(vars: Vars, d: ReplanConfig["latency"]): ReplanConfig["latency"] {
  const rpcMs = numberVar(vars, "PLACEMENT_RPC_MS", d?.rpcMs ?? 0, { min: 0 });
  const rowMsPerMiB = numberVar(vars, "PLACEMENT_ROW_MS_PER_MIB", d?.rowMsPerMiB ?? 0, { min: 0 });
  const passMsPerMiB = numberVar(vars, "PLACEMENT_PASS_MS_PER_MIB", d?.passMsPerMiB ?? 0, { min: 0 });
  if (rpcMs === 0 && rowMsPerMiB === 0 && passMsPerMiB === 0) return null;
  return { rpcMs, rowMsPerMiB, passMsPerMiB, loadMsPerMiB: d?.loadMsPerMiB ?? 0 };
}

/** The planner's latency model for a folded window, or undefined (no costs, or no call counts yet). */
export function latencyModel(state: LoadWindowState, config: ReplanConfig): LatencyModel | undefined {
  if (!config.latency || !state.calls.some((c) => c > 0)) return undefined;
  // Calls follow the forecast as the loads do (rate + trend), so rows per call stay what was seen.
  const forecast = forecastLoads(state);
  const calls = state.calls.map((c, l) => {
    const rate = state.expert[l].reduce((a, b) => a + b, 0);
    const next = forecast[l].reduce((a, b) => a + b, 0);
    return rate > 0 ? (c * next) / rate : 0;
  });
  return { ...config.latency, windowMs: config.windowMs, calls };
}

// ── the load window ───────────────────────────────────────────────────────────────────────────

/** A folded window: the EMA state the planner forecasts from, and whether the window carried traffic. */
export interface ReplanWindow {
  state: LoadWindowState;
  carriedTraffic: boolean;
  /**
   * The window carried at least half the traffic forecast before it (absent: true). A falling load
   * gets no new copies: they would arrive as the load leaves (the EMA releases slowly on purpose).
   */
  sustained?: boolean;
}

/** A window below this fraction of the forecast before it is a falling load (no copies). */
const SUSTAINED_FRACTION = 0.5;

/** An empty load window for `placement`'s shape with the config's smoothing. */
export function createReplanWindow(placement: Placement, config: ReplanConfig): LoadWindowState {
  return createLoadWindow(placement.nLayers, placement.nExperts, config.loadWindow);
}

/**
 * Folds one window's counts into `state` (`windows`: how many windows they span — a late alarm
 * spans more than one); a window without any count only decays the loads.
 */
export function foldReplanWindow(
  state: LoadWindowState,
  expertCounts: readonly (readonly number[])[],
  windows = 1,
  instanceCounts?: readonly number[],
  calls?: readonly number[],
): ReplanWindow {
  let total = 0;
  for (const row of expertCounts) for (const c of row) total += Math.max(c, 0);
  if (total <= 0) return { state: decayIdle(state, windows), carriedTraffic: false, sustained: false };
  let expected = 0;
  for (const row of forecastLoads(state)) for (const v of row) expected += v;
  const sustained = total / windows >= SUSTAINED_FRACTION * expected;
  return {
    state: foldWindow(state, { expertCounts, instanceCounts, windows, calls }),
    carriedTraffic: true,
    sustained,
  };
}

// ── one step ──────────────────────────────────────────────────────────────────────────────────

/** The live placement and what its experts weigh. */
export interface LivePlacement {
  placement: Placement;
  expertBytes: ExpertBytes;
  /** Instances of the model's fresh placement (the experts' homes); absent: no consolidation. */
  homeInstances?: number;
  /** Re-plan windows since the placement's replica sets last changed (absent: 0). */
  stableWindows?: number;
}

export interface ReplanDecision {
  /** Diff to execute make-before-break (empty: nothing to copy or release). */
  ops: PlacementOp[];
  /** Shares for the placement after `ops`; null: nothing to publish, the live table stands. */
  shares: Replica[][][] | null;
  reason: PlanResult["reason"] | "released-idle" | "released-unpaid" | "consolidated";
  /** The planner's predicted worst-layer max/mean: live, with new shares only, and after the plan. */
  predicted: { before: number; sharesOnly: number; after: number };
  /** add-replica ops in `ops`. */
  copies: number;
  /** With the latency model: modelled ms per token over all layers, live (shares re-balanced) and after. */
  latency?: { before: number; after: number };
}

/** What the Coordinator does with one folded window; see the module comment. Pure and deterministic. */
export function replanStep(live: LivePlacement, window: ReplanWindow, config: ReplanConfig): ReplanDecision {
  const p = live.placement;
  const loads = forecastLoads(window.state);
  const input = {
    placement: p,
    loads,
    loadVariance: config.useVariance ? loadVariance(window.state) : undefined,
    spread: config.spread,
    expertBytes: live.expertBytes,
    maxCopies: window.carriedTraffic && window.sustained !== false ? config.maxCopies : 0,
    threshold: config.threshold,
    maxInstances: Math.max(p.instances.length, config.maxInstances),
    latency: latencyModel(window.state, config),
  };
  const plan = planPlacement(input);
  const predicted = {
    before: plan.predicted.before,
    sharesOnly: plan.predicted.sharesOnly,
    after: plan.predicted.after,
  };
  const latency = plan.latency;
  const decision = (ops: PlacementOp[], shares: Replica[][][] | null, reason: ReplanDecision["reason"]) => ({
    ops,
    shares,
    reason,
    predicted,
    copies: ops.filter((o) => o.op === "add-replica").length,
    ...(latency ? { latency } : {}),
  });
  if (plan.ops.length > 0) return decision(plan.ops, plan.shares, plan.reason);
  const idle = releaseIdle(p, loads, config.idleFraction);
  if (idle.length > 0) return decision(idle, sharesAfter(p, idle, null), "released-idle");
  // Replicas the latency model says no longer pay at this load (none without the model).
  const unpaid = planRelease(input);
  if (unpaid.length > 0) return decision(unpaid, sharesAfter(p, unpaid, null), "released-unpaid");
  const moves = consolidation(live, window, config, input);
  if (moves.length > 0) return decision(moves, sharesAfter(p, moves, null), "consolidated");
  const moved = sharesMoved(p.replicas, plan.shares, config.shareHysteresis);
  return decision([], moved ? plan.shares : null, plan.reason);
}

/**
 * The consolidation ops (planner/consolidate.ts) when they are due: the fresh placement's size is
 * known, the placement has been unchanged for `consolidateAfterWindows` windows, and the window
 * carried no traffic — or the latency model says the moves cost at most what a release may
 * (`DEFAULT_MAX_LATENCY_LOSS`) at this load. Without the model a loaded window moves nothing.
 */
function consolidation(
  live: LivePlacement,
  window: ReplanWindow,
  config: ReplanConfig,
  input: Parameters<typeof consolidationLatency>[0],
): PlacementOp[] {
  if (live.homeInstances === undefined || (live.stableWindows ?? 0) < config.consolidateAfterWindows) return [];
  const ops = planConsolidation({
    placement: live.placement,
    expertBytes: live.expertBytes,
    homeInstances: live.homeInstances,
    maxCopies: config.maxCopies,
  });
  if (ops.length === 0 || !window.carriedTraffic) return ops;
  const ms = consolidationLatency(input, ops);
  return ms && ms.after <= ms.before * (1 + DEFAULT_MAX_LATENCY_LOSS) ? ops : [];
}

/**
 * remove-replica ops for every extra replica of an idle expert — forecast load at most
 * `idleFraction` of its layer's mean expert load, or 0.5 tokens per window — keeping its
 * first-listed replica (the oldest).
 */
export function releaseIdle(
  placement: Placement,
  loads: readonly (readonly number[])[],
  idleFraction: number,
): PlacementOp[] {
  const ops: PlacementOp[] = [];
  placement.replicas.forEach((row, layer) => {
    const layerLoads = loads[layer] ?? [];
    const mean = layerLoads.reduce((s, v) => s + v, 0) / Math.max(1, row.length);
    const idleBelow = Math.max(0.5, idleFraction * mean);
    row.forEach((reps, expert) => {
      if (reps.length > 1 && (layerLoads[expert] ?? 0) <= idleBelow) {
        for (const r of reps.slice(1)) ops.push({ op: "remove-replica", layer, expert, instance: r.instance });
      }
    });
  });
  return ops;
}

type Shares = readonly (readonly (readonly Replica[])[])[];

/** Does any replica's share differ by more than `tolerance` between `a` and `b` (or exist in `a` only)? */
export function sharesMoved(a: Shares, b: Shares, tolerance: number): boolean {
  for (let l = 0; l < a.length; l++) {
    for (let e = 0; e < a[l].length; e++) {
      for (const r of a[l][e]) {
        const o = b[l]?.[e]?.find((x) => x.instance === r.instance);
        if (!o || Math.abs(o.share - r.share) > tolerance) return true;
      }
    }
  }
  return false;
}
