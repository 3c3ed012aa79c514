/**
 * @module The placement policies the benchmark and the simulator compare, stepped window by
 * window, and their online evaluation. `edge-moe` is the Coordinator's own policy: the folded
 * window and `replanStep` from src/coordinator/replan.ts, with a `ReplanConfig` (the deployed one
 * unless a flag overrides a knob; scripts/lib/replan-config.ts). The baselines: static
 * round-robin and DeepSeek's EPLB re-planned from scratch every window (scripts/lib/eplb.ts).
 */
import { cpus, hostname, loadavg } from "node:os";
import { forecastLoads, foldWindow, createLoadWindow } from "../../src/coordinator/load-window";
import { applyOps, checkPlacementInvariants, type Placement } from "../../src/coordinator/placement";
import {
  createReplanWindow,
  foldReplanWindow,
  replanStep,
  type LivePlacement,
  type ReplanConfig,
  type ReplanWindow,
} from "../../src/coordinator/replan";
import {
  DEFAULT_BATCH,
  DispatchModel,
  maxOverMean,
  oracleRows,
  splitRows,
  type BatchModel,
  type DispatchMode,
} from "./dispatch-model";
import { eplbPlacement, roundRobinPlacement } from "./eplb";
import type { LoadTrace } from "./workloads";

// ── policies ──────────────────────────────────────────────────────────────────────────────────

/**
 * `eplb-ema`: EPLB re-planned every window from edge-moe's smoothed forecast instead of window t.
 * `edge-moe-today`: the policy before the latency model — balance alone (`latency: null`), a 2 s
 * window (every `TODAY_WINDOW_MS / windowMs` windows here) and a one-window half-life.
 */
export type PolicyName = "static" | "eplb" | "eplb-ema" | "edge-moe" | "edge-moe-today";
export const POLICIES: PolicyName[] = ["static", "eplb", "eplb-ema", "edge-moe", "edge-moe-today"];
/** The re-plan window before the latency model (REPLAN_INTERVAL_MS was 2000). */
export const TODAY_WINDOW_MS = 2000;
/**
 * Run by default; `eplb-ema` (--eplb-ema) measured weaker than `eplb` (README), so EPLB on window t
 * is the baseline.
 */
export const DEFAULT_POLICIES: PolicyName[] = ["static", "eplb", "edge-moe"];
/** The dispatches each placement is scored under (a static placement has one replica: `split` only). */
export const DISPATCHES: Record<PolicyName, DispatchMode[]> = {
  static: ["split"],
  eplb: ["split", "least-loaded", "oracle"],
  "eplb-ema": ["split", "least-loaded", "oracle"],
  "edge-moe": ["split", "least-loaded", "oracle"],
  "edge-moe-today": ["split", "least-loaded", "oracle"],
};

export interface ClusterShape {
  nInstances: number;
  /** Expert slots per instance and layer: ⌈nExperts / nInstances⌉ (the minimum) + spare. */
  slotsPerInstance: number;
  /** Layers sharing an instance's memory: its budget is slots × layers × expert bytes. */
  nLayers: number;
  /** Bytes of one expert (all equal here); budgets are slots × bytes. */
  expertBytes: number;
}

/** One `replanStep` call's input, recorded to re-time it. */
export interface ReplanInput {
  live: LivePlacement;
  window: ReplanWindow;
}

export interface PolicyStep {
  /** Placement in force during window t+1 (planned from windows ≤ t). */
  placement: Placement;
  copies: number;
  ms: number;
  /** edge-moe: the `replanStep` input (for re-timing). */
  input?: ReplanInput;
}

/** A placement policy stepped window by window: `step(t)` sees windows 0…t only. */
export interface Policy {
  name: PolicyName;
  step(t: number): PolicyStep;
}

function instancesFor(shape: ClusterShape): Placement["instances"] {
  const budgetBytes = shape.slotsPerInstance * shape.nLayers * shape.expertBytes;
  return Array.from({ length: shape.nInstances }, (_, id) => ({ id, name: `h${id}`, budgetBytes }));
}

/** Replicas in `next` that `prev` did not have: weight copies to go from one to the other. */
export function copiesBetween(prev: Placement, next: Placement): number {
  let copies = 0;
  next.replicas.forEach((layer, l) =>
    layer.forEach((reps, e) => {
      const old = prev.replicas[l]?.[e] ?? [];
      for (const r of reps) if (!old.some((o) => o.instance === r.instance)) copies++;
    }),
  );
  return copies;
}

/** The first placement every policy starts from: static round-robin. */
export function startPlacement(trace: LoadTrace, shape: ClusterShape): Placement {
  return roundRobinPlacement(trace.nLayers, trace.nExperts, { model: "bench", instances: instancesFor(shape) });
}

/**
 * The Coordinator's policy over a trace: each window folded as the Coordinator folds it, then
 * `replanStep`; its decision applied as the Coordinator's make-before-break ends (every load
 * succeeds here).
 */
export function edgeMoePolicy(trace: LoadTrace, shape: ClusterShape, config: ReplanConfig): Policy {
  let placement = startPlacement(trace, shape);
  let window = createReplanWindow(placement, config);
  return {
    name: "edge-moe",
    step(t) {
      const folded = foldReplanWindow(window, trace.windows[t], 1, undefined, trace.calls?.[t]);
      window = folded.state;
      const live: LivePlacement = { placement, expertBytes: shape.expertBytes };
      const t0 = performance.now();
      const decision = replanStep(live, folded, config);
      const ms = performance.now() - t0;
      if (decision.shares) placement = applyOps(placement, decision.ops, decision.shares);
      return { placement, copies: decision.copies, ms, input: { live, window: folded } };
    },
  };
}

/**
 * The policy before the latency model over a trace of `config.windowMs` windows: every
 * `TODAY_WINDOW_MS / windowMs` windows, their summed counts folded as one window and
 * `replanStep` with balance alone; the placement stands in between.
 */
export function todayPolicy(trace: LoadTrace, shape: ClusterShape, config: ReplanConfig): Policy {
  const every = Math.max(1, Math.round(TODAY_WINDOW_MS / config.windowMs));
  const today: ReplanConfig = {
    ...config,
    windowMs: every * config.windowMs,
    latency: null,
    loadWindow: { ...config.loadWindow, halfLifeWindows: 1 },
  };
  let placement = startPlacement(trace, shape);
  let window = createReplanWindow(placement, today);
  return {
    name: "edge-moe-today",
    step(t) {
      if ((t + 1) % every !== 0) return { placement, copies: 0, ms: 0 };
      const sum = trace.windows[t].map((row) => row.map(() => 0));
      for (let k = t + 1 - every; k <= t; k++)
        trace.windows[k].forEach((row, l) => row.forEach((c, e) => (sum[l][e] += c)));
      const folded = foldReplanWindow(window, sum);
      window = folded.state;
      const t0 = performance.now();
      const decision = replanStep({ placement, expertBytes: shape.expertBytes }, folded, today);
      const ms = performance.now() - t0;
      if (decision.shares) placement = applyOps(placement, decision.ops, decision.shares);
      return { placement, copies: decision.copies, ms };
    },
  };
}

export function makePolicy(name: PolicyName, trace: LoadTrace, shape: ClusterShape, config: ReplanConfig): Policy {
  if (name === "edge-moe") return edgeMoePolicy(trace, shape, config);
  if (name === "edge-moe-today") return todayPolicy(trace, shape, config);
  let placement = startPlacement(trace, shape);
  if (name === "static") return { name, step: () => ({ placement, copies: 0, ms: 0 }) };
  const instances = placement.instances;
  let smoothed = createLoadWindow(trace.nLayers, trace.nExperts, config.loadWindow);
  return {
    name,
    step(t) {
      if (name === "eplb-ema") smoothed = foldWindow(smoothed, { expertCounts: trace.windows[t] });
      const loads = name === "eplb" ? trace.windows[t] : forecastLoads(smoothed);
      const t0 = performance.now();
      const next = eplbPlacement(loads, shape.slotsPerInstance, {
        model: "bench",
        instances,
        version: placement.version + 1,
      });
      const ms = performance.now() - t0;
      const copies = copiesBetween(placement, next);
      placement = next;
      return { placement, copies, ms };
    },
  };
}

// ── evaluation ────────────────────────────────────────────────────────────────────────────────

export interface RatioStats {
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export interface PolicyResult {
  /** Online max/mean over (window, layer) samples after warm-up, per dispatch. */
  dispatch: Partial<Record<DispatchMode, RatioStats>>;
  copiesPerReplan: number;
  copiesP99: number;
  msP50: number;
  msP99: number;
  /** Invariant violations of the final placement (EPLB's co-located slots are merged, so none). */
  problems: string[];
}

export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const a = [...xs].sort((x, y) => x - y);
  const pos = q * (a.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return a[lo] + (a[hi] - a[lo]) * (pos - lo);
}

function stats(xs: readonly number[]): RatioStats {
  return {
    p50: quantile(xs, 0.5),
    p90: quantile(xs, 0.9),
    p99: quantile(xs, 0.99),
    max: xs.length ? Math.max(...xs) : NaN,
  };
}

/** Runs a policy over the trace; every placement is scored on the next window under `dispatches`. */
export function evaluatePolicy(
  policy: Policy,
  trace: LoadTrace,
  shape: ClusterShape,
  warmup: number,
  dispatches: readonly DispatchMode[],
  batch: BatchModel = DEFAULT_BATCH,
  seed = 1,
  inputs?: ReplanInput[],
): PolicyResult {
  const ratios = new Map<DispatchMode, number[]>(dispatches.map((d) => [d, []]));
  const copies: number[] = [];
  const ms: number[] = [];
  // One set of isolates per dispatch, with the same seed for every policy.
  const models = new Map<DispatchMode, DispatchModel>();
  for (const d of dispatches) if (d === "least-loaded") models.set(d, new DispatchModel(shape.nInstances, batch, seed));
  let last: Placement | null = null;
  for (let t = 0; t + 1 < trace.windows.length; t++) {
    const step = policy.step(t);
    last = step.placement;
    if (step.input && inputs) inputs.push(step.input);
    const scored = t >= warmup;
    const n = step.placement.instances.length;
    for (const d of dispatches) {
      // Isolates dispatch every window (their tables carry over); only scored windows count.
      const model = models.get(d);
      if (!scored && !model) continue;
      for (let l = 0; l < trace.nLayers; l++) {
        const reps = step.placement.replicas[l];
        const counts = trace.windows[t + 1][l];
        const rows =
          d === "split"
            ? splitRows(reps, counts, n)
            : d === "oracle"
              ? oracleRows(reps, counts, n)
              : model!.rows(step.placement, l, counts);
        if (scored) ratios.get(d)!.push(maxOverMean(rows, n));
      }
    }
    if (!scored) continue;
    copies.push(step.copies);
    ms.push(step.ms);
  }
  const problems = last ? checkPlacementInvariants(last, undefined, shape.expertBytes) : [];
  return {
    dispatch: Object.fromEntries([...ratios].map(([d, xs]) => [d, stats(xs)])),
    copiesPerReplan: copies.reduce((a, b) => a + b, 0) / Math.max(1, copies.length),
    copiesP99: quantile(copies, 0.99),
    msP50: quantile(ms, 0.5),
    msP99: quantile(ms, 0.99),
    problems,
  };
}

export function machineInfo(): {
  date: string;
  host: string;
  cpu: string;
  cores: number;
  node: string;
  loadavg: number[];
} {
  return {
    date: new Date().toISOString(),
    host: hostname(),
    cpu: cpus()[0]?.model ?? "unknown",
    cores: cpus().length,
    node: process.version,
    loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
  };
}
