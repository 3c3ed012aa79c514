/**
 * @module `npm run bench:placement [-- --loads FILE] [--out FILE]`: static round-robin vs DeepSeek
 * EPLB (re-planned from scratch every window) vs the edge-moe planner, side by side on the same
 * load traces in the same run, evaluated ONLINE: the plan made from window t is scored on window
 * t+1. Prints tables and writes JSON (default bench-results/placement.json).
 *
 * Metric per (window, layer): busiest instance's rows / mean instance rows in window t+1. Each
 * placement is scored under the ways of picking replicas in scripts/lib/dispatch-model.ts: `split`
 * (static split by shares — EPLB as vLLM deploys it), `least-loaded` (per-call least-loaded
 * dispatch in Worker isolates, src/experts/dispatch.ts — edge-moe as the Worker runs it),
 * `weighted` (the Worker's first rule, commit 357eefe: (recent + 1) / share) and `oracle` (the whole window
 * water-filled: the placement's best case). Reported: p50 and p99 over (window, layer) after a
 * warm-up, copies per re-plan (replicas present in the new placement and not in the previous
 * one), planner time per re-plan (median, p99), and planner time on recorded 256 × 64 inputs
 * re-run many times (median, p99) — the in-run times include first calls and GC of the run.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, hostname } from "node:os";
import { dirname } from "node:path";
import { pathToFileURL } from "node:url";
import { eplbPlacement, roundRobinPlacement } from "../src/coordinator/eplb";
import { DEFAULT_BATCH, DispatchModel, maxOverMean, oracleRows, splitRows, type BatchModel, type DispatchMode } from "./lib/dispatch-model";
import { createLoadWindow, forecastLoads, foldWindow, loadVariance } from "../src/coordinator/load-window";
import type { Placement } from "../src/coordinator/placement";
import { applyOps, checkPlacementInvariants, planPlacement, type PlannerInput } from "../src/coordinator/planner";
import { parseLoadFile, syntheticTrace, type Drift, type LoadTrace, type RequestMix, type WorkloadOptions } from "./lib/workloads";

// ── policies ──────────────────────────────────────────────────────────────────────────────────

/** `eplb-ema`: EPLB re-planned every window from edge-moe's smoothed forecast instead of window t. */
export type PolicyName = "static" | "eplb" | "eplb-ema" | "edge-moe";
export const POLICIES: PolicyName[] = ["static", "eplb", "eplb-ema", "edge-moe"];
/**
 * Run by default. `eplb-ema` (--eplb-ema) was measured weaker than `eplb` under both dispatches
 * on the edge set (p50 1.056 vs 1.042 least-loaded, 1.180 vs 1.144 split), so EPLB on window t
 * stays the baseline.
 */
export const DEFAULT_POLICIES: PolicyName[] = ["static", "eplb", "edge-moe"];
/** The dispatches each placement is scored under (a static placement has one replica: `split` only). */
export const DISPATCHES: Record<PolicyName, DispatchMode[]> = {
  static: ["split"],
  eplb: ["split", "least-loaded", "oracle"],
  "eplb-ema": ["split", "least-loaded", "oracle"],
  "edge-moe": ["split", "least-loaded", "weighted", "oracle"],
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

export interface EdgeMoeOptions {
  halfLifeWindows: number;
  riseAlpha: number;
  trendAlpha: number;
  maxCopies: number;
  threshold: number;
  spread: number;
  useVariance: boolean;
}

/** Defaults the benchmark and the simulator run edge-moe with (and the Coordinator should). */
export function defaultEdgeMoe(shape: ClusterShape): EdgeMoeOptions {
  // One copy per four instances per layer and re-plan (at least four per layer).
  const maxCopies = Math.max(4, Math.round(shape.nInstances / 4)) * shape.nLayers;
  return { halfLifeWindows: 1, riseAlpha: 1, trendAlpha: 0.3, maxCopies, threshold: 0.02, spread: 0.2, useVariance: false };
}

export interface PolicyStep {
  /** Placement in force during window t+1 (planned from windows ≤ t). */
  placement: Placement;
  copies: number;
  ms: number;
  /** edge-moe: the planner's input (for re-timing). */
  input?: PlannerInput;
}

/** A placement policy stepped window by window: `step(t)` sees windows 0…t only. */
export interface Policy {
  name: PolicyName;
  step(t: number): PolicyStep;
}

function instancesFor(shape: ClusterShape): Placement["instances"] {
  return Array.from({ length: shape.nInstances }, (_, id) => ({ id, name: `h${id}`, budgetBytes: shape.slotsPerInstance * shape.nLayers * shape.expertBytes }));
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

export function makePolicy(name: PolicyName, trace: LoadTrace, shape: ClusterShape, edge: EdgeMoeOptions = defaultEdgeMoe(shape)): Policy {
  const instances = instancesFor(shape);
  let placement = roundRobinPlacement(trace.nLayers, trace.nExperts, { model: "bench", instances });
  if (name === "static") return { name, step: () => ({ placement, copies: 0, ms: 0 }) };
  if (name === "eplb" || name === "eplb-ema") {
    let smoothed = createLoadWindow(trace.nLayers, trace.nExperts, { halfLifeWindows: edge.halfLifeWindows, riseAlpha: edge.riseAlpha, trendAlpha: edge.trendAlpha });
    return {
      name,
      step(t) {
        if (name === "eplb-ema") smoothed = foldWindow(smoothed, { expertCounts: trace.windows[t] });
        const loads = name === "eplb" ? trace.windows[t] : forecastLoads(smoothed);
        const t0 = performance.now();
        const next = eplbPlacement(loads, shape.slotsPerInstance, { model: "bench", instances, version: placement.version + 1 });
        const ms = performance.now() - t0;
        const copies = copiesBetween(placement, next);
        placement = next;
        return { placement, copies, ms };
      },
    };
  }
  let window = createLoadWindow(trace.nLayers, trace.nExperts, { halfLifeWindows: edge.halfLifeWindows, riseAlpha: edge.riseAlpha, trendAlpha: edge.trendAlpha });
  return {
    name,
    step(t) {
      window = foldWindow(window, { expertCounts: trace.windows[t] });
      const input: PlannerInput = {
        placement,
        loads: forecastLoads(window),
        loadVariance: edge.useVariance ? loadVariance(window) : undefined,
        expertBytes: shape.expertBytes,
        maxCopies: edge.maxCopies,
        threshold: edge.threshold,
        spread: edge.spread,
      };
      const t0 = performance.now();
      const plan = planPlacement(input);
      const ms = performance.now() - t0;
      placement = applyOps(placement, plan.ops, plan.shares);
      return { placement, copies: plan.copies, ms, input };
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
  return { p50: quantile(xs, 0.5), p90: quantile(xs, 0.9), p99: quantile(xs, 0.99), max: xs.length ? Math.max(...xs) : NaN };
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
  inputs?: PlannerInput[],
): PolicyResult {
  const ratios = new Map<DispatchMode, number[]>(dispatches.map((d) => [d, []]));
  const copies: number[] = [];
  const ms: number[] = [];
  // One set of isolates per dispatch, with the same seed for every policy.
  const models = new Map<DispatchMode, DispatchModel>();
  for (const d of dispatches) if (d === "least-loaded" || d === "weighted") models.set(d, new DispatchModel(shape.nInstances, batch, seed));
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
          d === "split" ? splitRows(reps, counts, n) : d === "oracle" ? oracleRows(reps, counts, n) : model!.rows(step.placement, l, counts, d);
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

// ── scenarios ─────────────────────────────────────────────────────────────────────────────────

/**
 * - `zipf`: fixed popularity, large windows (sampling noise only).
 * - `drift`: large windows (32k tokens) of independent Poisson counts with a 10% burst factor,
 *   hot set rotating or swapping over a few windows — the traces the planner was first tuned on.
 * - `edge`: edge-sized windows (4k tokens, ~2 s of a modest deployment) whose counts come from
 *   32 requests in flight that each prefer their own experts for ~8 windows, over a hot set that
 *   rotates (per layer).
 * - `edge-jumps`: the same plus sudden swaps: a hot expert trades places with a random one
 *   between two windows (5% of windows per layer). No plan made before a jump can see it, so
 *   these set the p99 of every placement alike; they are kept apart so the p99 of gradual drift
 *   stays visible.
 * - `multi-layer`: 8 layers sharing every instance's memory (planner time at model scale).
 */
export type ScenarioKind = "zipf" | "drift" | "edge" | "edge-jumps" | "multi-layer" | "file";

export interface Scenario {
  name: string;
  kind: ScenarioKind;
  trace: LoadTrace;
  shape: ClusterShape;
  workload?: WorkloadOptions;
}

/** Bytes of one expert of the demo model: w1, w3 [dFf, dModel] and w2 [dModel, dFf] in f32. */
export const DEMO_EXPERT_BYTES = 3 * 256 * 2048 * 4;
export const TOKENS_PER_WINDOW = 32_768;
export const EDGE_TOKENS_PER_WINDOW = 4096;
export const TOP_K = 8;
export const BURSTINESS = 0.1;
export const DRIFTS: Record<string, Drift> = {
  rotate: { kind: "rotate", speed: 0.1 },
  swap: { kind: "swap", rate: 0.2, hotSet: 8, rampWindows: 4 },
  mixed: { kind: "mixed", speed: 0.1, rate: 0.05, hotSet: 8 },
};
export const EDGE_REQUESTS: RequestMix = { active: 32, meanWindows: 8, affinity: 1 };

export function shapeFor(nExperts: number, nInstances: number, spare: number, nLayers = 1): ClusterShape {
  return { nInstances, slotsPerInstance: Math.ceil(nExperts / nInstances) + spare, nLayers, expertBytes: DEMO_EXPERT_BYTES };
}

const SIZES: [number, number][] = [
  [64, 16],
  [64, 64],
  [256, 16],
  [256, 64],
];

export function syntheticScenarios(opts: { windows: number; spare: number; seed: number }): Scenario[] {
  const out: Scenario[] = [];
  const add = (name: string, kind: ScenarioKind, workload: WorkloadOptions, nInstances: number): void => {
    out.push({ name, kind, trace: syntheticTrace(workload), shape: shapeFor(workload.nExperts, nInstances, opts.spare, workload.nLayers ?? 1), workload });
  };
  const large = (nExperts: number, s: number, drift: Drift): WorkloadOptions => ({
    nExperts,
    s,
    nWindows: opts.windows,
    assignmentsPerWindow: TOKENS_PER_WINDOW * TOP_K,
    drift,
    burstiness: BURSTINESS,
    seed: opts.seed + nExperts * 7 + Math.round(s * 10),
  });
  const edge = (nExperts: number, s: number, drift: Drift, nLayers = 1): WorkloadOptions => ({
    nExperts,
    nLayers,
    s,
    nWindows: opts.windows,
    assignmentsPerWindow: EDGE_TOKENS_PER_WINDOW * TOP_K,
    drift,
    requests: EDGE_REQUESTS,
    seed: opts.seed + nExperts * 13 + Math.round(s * 10) + 5,
  });
  for (const [nExperts, nInstances] of SIZES) add(`static s=1 E=${nExperts} N=${nInstances}`, "zipf", large(nExperts, 1, { kind: "none" }), nInstances);
  for (const driftName of ["rotate", "swap"]) {
    for (const s of [0.6, 1.0, 1.2]) {
      for (const [nExperts, nInstances] of SIZES) add(`${driftName} s=${s} E=${nExperts} N=${nInstances}`, "drift", large(nExperts, s, DRIFTS[driftName]), nInstances);
    }
  }
  for (const s of [0.6, 1.0, 1.2]) {
    for (const [nExperts, nInstances] of SIZES) add(`edge s=${s} E=${nExperts} N=${nInstances}`, "edge", edge(nExperts, s, DRIFTS.rotate), nInstances);
  }
  for (const s of [0.6, 1.0, 1.2]) {
    for (const [nExperts, nInstances] of [SIZES[0], SIZES[3]]) add(`jumps s=${s} E=${nExperts} N=${nInstances}`, "edge-jumps", edge(nExperts, s, DRIFTS.mixed), nInstances);
  }
  // Several layers share each instance's memory: planner time and balance at model scale.
  add("edge s=1 E=256 N=64 L=8", "multi-layer", { ...edge(256, 1, DRIFTS.rotate, 8), nWindows: Math.min(opts.windows, 60), seed: opts.seed + 99 }, 64);
  return out;
}

export function fileScenarios(path: string, instanceCounts: number[], spare: number): Scenario[] {
  const trace = parseLoadFile(readFileSync(path, "utf8"), path);
  return instanceCounts.map((n) => ({
    name: `${path} N=${n}`,
    kind: "file" as const,
    trace,
    shape: shapeFor(trace.nExperts, n, spare, trace.nLayers),
  }));
}

// ── output ────────────────────────────────────────────────────────────────────────────────────

function fmt(x: number | undefined, digits = 3): string {
  return x !== undefined && Number.isFinite(x) ? x.toFixed(digits) : "–";
}

interface Row {
  name: string;
  kind: ScenarioKind;
  shape: ClusterShape;
  edgeMoe: EdgeMoeOptions;
  results: Record<PolicyName, PolicyResult>;
}

/** The table's columns: (policy, dispatch). */
const COLUMNS: [PolicyName, DispatchMode, string][] = [
  ["static", "split", "static"],
  ["eplb", "split", "eplb split"],
  ["eplb", "least-loaded", "eplb LL"],
  ["eplb", "oracle", "eplb oracle"],
  ["edge-moe", "split", "edge split"],
  ["edge-moe", "least-loaded", "edge LL"],
  ["edge-moe", "weighted", "edge wLL"],
  ["edge-moe", "oracle", "edge oracle"],
];
/** Summarised but not printed in the table (eplb-ema tracks eplb closely). */
const EXTRA: [PolicyName, DispatchMode, string][] = [
  ["eplb-ema", "split", "eplb-ema split"],
  ["eplb-ema", "least-loaded", "eplb-ema LL"],
  ["eplb-ema", "oracle", "eplb-ema oracle"],
];

export function printTable(rows: Row[]): void {
  const head =
    "scenario (p50/p99)".padEnd(26) +
    COLUMNS.map(([, , label]) => label.padStart(15)).join("") +
    "copies eplb|edge".padStart(19) +
    "ms p50/p99 edge".padStart(17);
  console.log(head);
  console.log("-".repeat(head.length));
  for (const r of rows) {
    const cells = COLUMNS.map(([p, d]) => {
      const st = r.results[p]?.dispatch[d];
      return `${fmt(st?.p50)}/${fmt(st?.p99)}`.padStart(15);
    }).join("");
    const e = r.results.eplb;
    const m = r.results["edge-moe"];
    const copies = `${fmt(e.copiesPerReplan, 1)} | ${fmt(m.copiesPerReplan, 1)}`.padStart(19);
    const ms = `${fmt(m.msP50, 2)}/${fmt(m.msP99, 2)}`.padStart(17);
    console.log(r.name.padEnd(26) + cells + copies + ms);
  }
}

export function machineInfo(): { date: string; host: string; cpu: string; cores: number; node: string; loadavg: number[] } {
  return {
    date: new Date().toISOString(),
    host: hostname(),
    cpu: cpus()[0]?.model ?? "unknown",
    cores: cpus().length,
    node: process.version,
    loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

interface Args {
  loads?: string;
  only?: string;
  edge: Partial<EdgeMoeOptions>;
  batch: BatchModel;
  out: string;
  windows: number;
  warmup: number;
  spare: number;
  seed: number;
  instances: number[];
  quick: boolean;
  llAll: boolean;
  policies: PolicyName[];
  timingRepeats: number;
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    edge: {},
    batch: { ...DEFAULT_BATCH },
    out: "bench-results/placement.json",
    windows: 120,
    warmup: 20,
    spare: 2,
    seed: 1,
    instances: [16, 64],
    quick: false,
    llAll: false,
    policies: [...DEFAULT_POLICIES],
    timingRepeats: 5,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const num = (name: string, v: string): number => {
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number ≥ 0, got "${v}"`);
      return n;
    };
    const int = (name: string, v: string, min: number): number => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer ≥ ${min}, got "${v}"`);
      return n;
    };
    if (a === "--loads") args.loads = next();
    else if (a === "--out") args.out = next();
    else if (a === "--windows") args.windows = int("--windows", next(), 3);
    else if (a === "--warmup") args.warmup = int("--warmup", next(), 0);
    else if (a === "--spare") args.spare = int("--spare", next(), 0);
    else if (a === "--seed") args.seed = int("--seed", next(), 0);
    else if (a === "--instances") args.instances = next().split(",").map((v) => int("--instances", v, 1));
    else if (a === "--quick") args.quick = true;
    else if (a === "--ll-all") args.llAll = true;
    else if (a === "--eplb-ema") args.policies = [...POLICIES];
    else if (a === "--only") args.only = next();
    else if (a === "--rows-per-call") args.batch.rowsPerBatch = int("--rows-per-call", next(), 1);
    else if (a === "--isolates") args.batch.dispatchers = int("--isolates", next(), 1);
    else if (a === "--recent-half-life") args.batch.halfLifeWindows = num("--recent-half-life", next()) || 1e-6;
    else if (a === "--keep-tables") args.batch.resetOnChange = false;
    else if (a === "--timing-repeats") args.timingRepeats = int("--timing-repeats", next(), 0);
    else if (a === "--half-life") args.edge.halfLifeWindows = num("--half-life", next());
    else if (a === "--rise-alpha") args.edge.riseAlpha = num("--rise-alpha", next());
    else if (a === "--trend-alpha") args.edge.trendAlpha = num("--trend-alpha", next());
    else if (a === "--spread") args.edge.spread = num("--spread", next());
    else if (a === "--threshold") args.edge.threshold = num("--threshold", next());
    else if (a === "--max-copies") args.edge.maxCopies = int("--max-copies", next(), 0);
    else if (a === "--use-variance") args.edge.useVariance = true;
    else if (a === "--help" || a === "-h") {
      console.log(
        "usage: npm run bench:placement [-- --loads FILE] [--out FILE] [--instances 16,64] [--spare 2] [--windows 120] [--warmup 20] [--seed 1] [--quick] [--only TEXT]\n" +
          "  --loads FILE   JSON array of windows: [window][expert] or [window][layer][expert] token counts\n" +
          "  --only TEXT    run only scenarios whose name contains TEXT\n" +
          "  dispatch model: --rows-per-call R (8) --isolates D (8) --recent-half-life W (0.5 windows) --keep-tables (across replica-set changes); --timing-repeats K (5)\n" +
          "  --ll-all       score the large-window sets under least-loaded dispatch too (several minutes)\n" +
          "  --eplb-ema     also run EPLB re-planned from edge-moe's smoothed forecast\n" +
          "  edge-moe knobs: --half-life W --rise-alpha A --trend-alpha A --spread S --threshold T --max-copies C --use-variance",
      );
      process.exit(0);
    } else throw new Error(`unknown option ${a} (try --help)`);
  }
  if (args.quick) args.windows = Math.min(args.windows, 60);
  return args;
}

/**
 * Per-call dispatch costs ~150 ns per row, so the large-window sets (262k rows per window) are
 * scored under `split` and `oracle` only unless --ll-all (minutes); edge-sized windows and user
 * files get every dispatch.
 */
function dispatchesFor(kind: ScenarioKind, p: PolicyName, llAll: boolean): DispatchMode[] {
  const all = DISPATCHES[p];
  if (kind === "edge" || kind === "edge-jumps" || kind === "file") return all;
  if (kind === "multi-layer") return all.filter((d) => d === "split" || d === "oracle" || (d === "least-loaded" && p !== "eplb-ema"));
  return llAll ? all : all.filter((d) => d === "split" || d === "oracle");
}

export interface PlannerTiming {
  /** Timed plans (inputs × repeats). */
  n: number;
  /** Wall time per plan over every timed plan. */
  p50: number;
  p99: number;
  max: number;
  /** p99 over inputs of each input's median time: the slowest inputs, without the VM's hiccups. */
  p99OfMedians: number;
}

/** Re-times the planner on recorded inputs: every input `repeats` times, interleaved, after one warm-up pass. */
function timePlanner(inputs: readonly PlannerInput[], repeats: number): PlannerTiming {
  const ms: number[] = [];
  const per: number[][] = inputs.map(() => []);
  for (const input of inputs) planPlacement(input);
  for (let k = 0; k < repeats; k++) {
    inputs.forEach((input, i) => {
      const t0 = performance.now();
      planPlacement(input);
      const d = performance.now() - t0;
      ms.push(d);
      per[i].push(d);
    });
  }
  const medians = repeats > 0 ? per.map((xs) => quantile(xs, 0.5)) : [];
  return { n: ms.length, p50: quantile(ms, 0.5), p99: quantile(ms, 0.99), max: ms.length ? Math.max(...ms) : NaN, p99OfMedians: quantile(medians, 0.99) };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const all = args.loads ? fileScenarios(args.loads, args.instances, args.spare) : syntheticScenarios({ windows: args.windows, spare: args.spare, seed: args.seed });
  const scenarios = args.only ? all.filter((s) => s.name.includes(args.only ?? "")) : all;
  const machine = machineInfo();
  const rows: Row[] = [];
  const timingInputs: PlannerInput[] = [];
  const started = performance.now();
  for (const sc of scenarios) {
    const warmup = Math.min(args.warmup, Math.floor((sc.trace.windows.length - 1) / 4));
    const edge = { ...defaultEdgeMoe(sc.shape), ...args.edge };
    const results = {} as Record<PolicyName, PolicyResult>;
    const big = sc.shape.nLayers === 1 && sc.trace.nExperts === 256 && sc.shape.nInstances === 64;
    for (const p of args.policies) {
      const dispatches = dispatchesFor(sc.kind, p, args.llAll);
      results[p] = evaluatePolicy(makePolicy(p, sc.trace, sc.shape, edge), sc.trace, sc.shape, warmup, dispatches, args.batch, args.seed, big && p === "edge-moe" ? timingInputs : undefined);
    }
    rows.push({ name: sc.name, kind: sc.kind, shape: sc.shape, edgeMoe: edge, results });
  }
  const seconds = (performance.now() - started) / 1000;
  // Every k-th recorded 256 × 64 input, at most 200, each re-planned `timingRepeats` times.
  const stride = Math.max(1, Math.ceil(timingInputs.length / 200));
  const timing = timePlanner(timingInputs.filter((_, i) => i % stride === 0), args.timingRepeats);

  console.log(`placement benchmark — online max/mean instance rows (plan from window t, scored on t+1)`);
  console.log(
    `${machine.cpu} × ${machine.cores}, ${machine.node}, load average ${machine.loadavg.join(" ")}; ` +
      (args.loads ? `loads from ${args.loads}` : `${args.windows} windows`) +
      `; ${args.spare} spare slots per instance; warm-up min(${args.warmup}, a quarter of the windows) excluded`,
  );
  console.log(
    `dispatch: split = static split by shares (EPLB: even, as vLLM); LL = least-loaded per call of ${args.batch.rowsPerBatch} rows in ${args.batch.dispatchers} isolates, ` +
      `each balancing its own recent rows (half-life ${args.batch.halfLifeWindows} window); wLL = the Worker's first rule (357eefe), (recent + 1) / share\n`,
  );
  const titles: Record<ScenarioKind, string> = {
    zipf: `static Zipf popularity, ${TOKENS_PER_WINDOW} tokens × top-${TOP_K} per window (sampling noise only)`,
    drift: `drifting popularity, ${TOKENS_PER_WINDOW} tokens × top-${TOP_K} per window, independent Poisson counts, burstiness ${BURSTINESS}`,
    edge: `edge traffic: ${EDGE_TOKENS_PER_WINDOW} tokens × top-${TOP_K} per window from ${EDGE_REQUESTS.active} requests (affinity σ=${EDGE_REQUESTS.affinity}, ~${EDGE_REQUESTS.meanWindows} windows each), hot set rotating`,
    "edge-jumps": `edge traffic with sudden swaps (a hot expert trades places with a random one in ${DRIFTS.mixed.kind === "mixed" ? DRIFTS.mixed.rate * 100 : 0}% of windows per layer): p99 is set by the jumps`,
    "multi-layer": "8 layers sharing instance memory (edge traffic)",
    file: "user load file",
  };
  for (const kind of ["zipf", "drift", "edge", "edge-jumps", "multi-layer", "file"] as const) {
    const sel = rows.filter((r) => r.kind === kind);
    if (sel.length === 0) continue;
    console.log(`\n${titles[kind]}`);
    printTable(sel);
  }
  const problems = rows.flatMap((r) => args.policies.flatMap((p) => r.results[p].problems.map((m) => `${r.name} ${p}: ${m}`)));
  if (problems.length > 0) console.log(`\nINVARIANT VIOLATIONS:\n${problems.slice(0, 20).join("\n")}`);

  const summary = summarise(rows);
  if (timing.n > 0) {
    summary["planner ms, 256 × 64, 1 layer, recorded inputs re-planned (median | p99 | max, n)"] =
      `${fmt(timing.p50, 2)} | ${fmt(timing.p99, 2)} | ${fmt(timing.max, 2)}, n=${timing.n}`;
    summary["planner ms, same inputs: p99 over inputs of each input's median (VM hiccups removed)"] = fmt(timing.p99OfMedians, 2);
    summary["target: planner p99 ≤ 2 ms at 256 × 64"] = `${timing.p99 <= 2 ? "met" : "MISSED"} (wall p99 ${fmt(timing.p99, 2)} ms; slowest inputs' medians ${fmt(timing.p99OfMedians, 2)} ms)`;
  }
  console.log(`\nsummary (${seconds.toFixed(1)} s)`);
  for (const [k, v] of Object.entries(summary)) console.log(`  ${k}: ${typeof v === "number" ? fmt(v) : v}`);

  mkdirSync(dirname(args.out), { recursive: true });
  writeFileSync(
    args.out,
    JSON.stringify(
      {
        benchmark: "placement",
        machine,
        config: { ...args, tokensPerWindow: TOKENS_PER_WINDOW, edgeTokensPerWindow: EDGE_TOKENS_PER_WINDOW, topK: TOP_K, burstiness: BURSTINESS, drifts: DRIFTS, edgeRequests: EDGE_REQUESTS },
        metric: "per (window, layer): max instance rows / mean instance rows of the plan made from window t, on window t+1, per dispatch (scripts/lib/dispatch-model.ts)",
        scenarios: rows,
        plannerTiming: timing,
        summary,
        seconds,
      },
      null,
      2,
    ) + "\n",
  );
  console.log(`\nwrote ${args.out}`);
}

function ratioOf(r: Row, p: PolicyName, d: DispatchMode, q: "p50" | "p99"): number {
  return r.results[p]?.dispatch[d]?.[q] ?? NaN;
}

/** Per scenario set: medians and worst cases, target counts, copies ratio; planner times. */
function summarise(rows: Row[]): Record<string, number | string> {
  const out: Record<string, number | string> = {};
  for (const tag of ["drift", "edge", "edge-jumps", "file"] as const) {
    const sel = rows.filter((r) => r.kind === tag);
    if (sel.length === 0) continue;
    const line = (p: PolicyName, d: DispatchMode): string => {
      const p50 = sel.map((r) => ratioOf(r, p, d, "p50"));
      const p99 = sel.map((r) => ratioOf(r, p, d, "p99"));
      return `p50 ${fmt(quantile(p50, 0.5))} (worst ${fmt(Math.max(...p50))}), p99 ${fmt(quantile(p99, 0.5))} (worst ${fmt(Math.max(...p99))})`;
    };
    for (const [p, d, label] of [...COLUMNS, ...EXTRA]) {
      if (p !== "static" && sel.some((r) => r.results[p]?.dispatch[d])) out[`${tag}: ${label} — median over scenarios`] = line(p, d);
    }
    // edge-moe as deployed: least-loaded dispatch when scored, else its placement's best case.
    const edgeD: DispatchMode = sel.every((r) => r.results["edge-moe"].dispatch["least-loaded"]) ? "least-loaded" : "oracle";
    const met = sel.filter((r) => ratioOf(r, "edge-moe", edgeD, "p50") <= 1.1 && ratioOf(r, "edge-moe", edgeD, "p99") <= 1.25).length;
    out[`${tag}: scenarios where edge ${edgeD} meets p50 ≤ 1.10 and p99 ≤ 1.25`] = `${met} of ${sel.length}`;
    const p50met = sel.filter((r) => ratioOf(r, "edge-moe", edgeD, "p50") <= 1.1).length;
    out[`${tag}: scenarios where edge ${edgeD} meets p50 ≤ 1.10`] = `${p50met} of ${sel.length}`;
    for (const [p, d] of [["eplb", "split"], ["eplb", "least-loaded"], ["eplb", "oracle"], ["eplb-ema", "least-loaded"]] as const) {
      if (!sel.every((r) => r.results[p]?.dispatch[d])) continue;
      const better = sel.filter((r) => ratioOf(r, "edge-moe", edgeD, "p50") <= ratioOf(r, p, d, "p50") && ratioOf(r, "edge-moe", edgeD, "p99") <= ratioOf(r, p, d, "p99")).length;
      out[`${tag}: scenarios where edge ${edgeD} p50 and p99 ≤ ${p} ${d}'s`] = `${better} of ${sel.length}`;
    }
    const copies = sel.map((r) => r.results["edge-moe"].copiesPerReplan / Math.max(1e-9, r.results.eplb.copiesPerReplan));
    out[`${tag}: edge-moe copies / eplb copies (median | worst scenario)`] = `${fmt(quantile(copies, 0.5))} | ${fmt(Math.max(...copies))}`;
    out[`target (${tag}): online max/mean p50 ≤ 1.10 and p99 ≤ 1.25 (edge ${edgeD})`] = `${met === sel.length ? "met" : `MISSED in ${sel.length - met} of ${sel.length} scenarios`}`;
    out[`target (${tag}): copies per re-plan ≤ 1/3 of EPLB's`] = `${Math.max(...copies) <= 1 / 3 ? "met" : "MISSED"} (worst ${fmt(Math.max(...copies))})`;
  }
  const big = rows.filter((r) => r.kind !== "multi-layer" && r.shape.nInstances === 64 && r.name.includes("E=256"));
  if (big.length > 0) {
    out["planner ms in-run, 256 × 64, 1 layer (median of medians | worst p99)"] =
      `${fmt(quantile(big.map((r) => r.results["edge-moe"].msP50), 0.5), 2)} | ${fmt(Math.max(...big.map((r) => r.results["edge-moe"].msP99)), 2)}`;
    out["eplb ms in-run, 256 × 64, 1 layer (median of medians | worst p99)"] =
      `${fmt(quantile(big.map((r) => r.results.eplb.msP50), 0.5), 2)} | ${fmt(Math.max(...big.map((r) => r.results.eplb.msP99)), 2)}`;
  }
  const multi = rows.find((r) => r.kind === "multi-layer");
  if (multi) out["planner ms in-run, 256 × 64, 8 layers (median | p99)"] = `${fmt(multi.results["edge-moe"].msP50, 2)} | ${fmt(multi.results["edge-moe"].msP99, 2)}`;
  return out;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  main().catch((err: unknown) => {
    console.error(`bench:placement: ${(err as Error).message}`);
    process.exit(1);
  });
}
