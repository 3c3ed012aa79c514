/**
 * @module `npm run bench:placement [-- --loads FILE] [--out FILE]`: static round-robin vs DeepSeek
 * EPLB (re-planned from scratch every window) vs the edge-moe planner, side by side on the same
 * load traces in the same run, evaluated ONLINE: the plan made from window t is scored on window
 * t+1. Prints tables and writes JSON (default bench-results/placement.json).
 *
 * Metric per (window, layer): busiest instance's rows / mean instance rows in window t+1. Each
 * placement is scored under the ways of picking replicas in scripts/lib/dispatch-model.ts: `split`
 * (static split by shares — EPLB as vLLM deploys it), `least-loaded` (per-call least-loaded
 * dispatch in Worker isolates — edge-moe as the Worker runs it) and `oracle` (the whole window
 * water-filled: the placement's best case). Reported: p50 and p99 over (window, layer) after a
 * warm-up, copies per re-plan (replicas present in the new placement and not in the previous
 * one), planner time per re-plan (median, p99), and planner time on recorded 256 × 64 inputs
 * re-run many times (median, p99) — the in-run times include first calls and GC of the run.
 *
 * edge-moe is the Coordinator's own `replanStep` with the deployed config (wrangler.toml [vars]
 * through `replanConfigFromEnv`) unless a flag overrides a knob; the report names the config.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { pathToFileURL } from "node:url";
import { replanStep, type ReplanConfig } from "../src/coordinator/replan";
import { DEFAULT_BATCH, type BatchModel, type DispatchMode } from "./lib/dispatch-model";
import {
  DEFAULT_POLICIES,
  DISPATCHES,
  POLICIES,
  evaluatePolicy,
  machineInfo,
  makePolicy,
  quantile,
  type ClusterShape,
  type PolicyName,
  type PolicyResult,
  type ReplanInput,
} from "./lib/placement-policies";
import {
  BURSTINESS,
  DRIFTS,
  EDGE_REQUESTS,
  EDGE_TOKENS_PER_WINDOW,
  TOKENS_PER_WINDOW,
  TOP_K,
  fileScenarios,
  syntheticScenarios,
  type ScenarioKind,
} from "./lib/placement-scenarios";
import { REPLAN_FLAGS_HELP, applyReplanFlag, deployedReplanConfig, describeReplanConfig } from "./lib/replan-config";
import { progressBar } from "./lib/progress";

// ── output ────────────────────────────────────────────────────────────────────────────────────

function fmt(x: number | undefined, digits = 3): string {
  return x !== undefined && Number.isFinite(x) ? x.toFixed(digits) : "–";
}

interface Row {
  name: string;
  kind: ScenarioKind;
  shape: ClusterShape;
  replan: ReplanConfig;
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

interface Args {
  loads?: string;
  only?: string;
  replan: Partial<ReplanConfig>;
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
    replan: {},
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
    else if (a === "--instances")
      args.instances = next()
        .split(",")
        .map((v) => int("--instances", v, 1));
    else if (a === "--quick") args.quick = true;
    else if (a === "--ll-all") args.llAll = true;
    else if (a === "--eplb-ema") args.policies = [...POLICIES];
    else if (a === "--only") args.only = next();
    else if (a === "--rows-per-call") args.batch.rowsPerBatch = int("--rows-per-call", next(), 1);
    else if (a === "--isolates") args.batch.dispatchers = int("--isolates", next(), 1);
    else if (a === "--recent-half-life") args.batch.halfLifeWindows = num("--recent-half-life", next()) || 1e-6;
    else if (a === "--keep-tables") args.batch.resetOnChange = false;
    else if (a === "--timing-repeats") args.timingRepeats = int("--timing-repeats", next(), 0);
    else if (applyReplanFlag(args.replan, a, next)) continue;
    else if (a === "--help" || a === "-h") {
      console.log(
        "usage: npm run bench:placement [-- --loads FILE] [--out FILE] [--instances 16,64] [--spare 2] " +
          "[--windows 120] [--warmup 20] [--seed 1] [--quick] [--only TEXT]\n" +
          "  --loads FILE   JSON array of windows: [window][expert] or [window][layer][expert] token counts\n" +
          "  --only TEXT    run only scenarios whose name contains TEXT\n" +
          "  dispatch model: --rows-per-call R (8) --isolates D (8) --recent-half-life W (0.5 windows) " +
          "--keep-tables (across replica-set changes); --timing-repeats K (5)\n" +
          "  --ll-all       score the large-window sets under least-loaded dispatch too (several minutes)\n" +
          "  --eplb-ema     also run EPLB re-planned from edge-moe's smoothed forecast\n" +
          `  ${REPLAN_FLAGS_HELP}`,
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
  if (kind === "multi-layer")
    return all.filter((d) => d === "split" || d === "oracle" || (d === "least-loaded" && p !== "eplb-ema"));
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

/** Re-times `replanStep` on recorded inputs: every input `repeats` times, interleaved, after one warm-up pass. */
function timePlanner(inputs: readonly ReplanInput[], config: ReplanConfig, repeats: number): PlannerTiming {
  const ms: number[] = [];
  const per: number[][] = inputs.map(() => []);
  for (const input of inputs) replanStep(input.live, input.window, config);
  for (let k = 0; k < repeats; k++) {
    inputs.forEach((input, i) => {
      const t0 = performance.now();
      replanStep(input.live, input.window, config);
      const d = performance.now() - t0;
      ms.push(d);
      per[i].push(d);
    });
  }
  const medians = repeats > 0 ? per.map((xs) => quantile(xs, 0.5)) : [];
  return {
    n: ms.length,
    p50: quantile(ms, 0.5),
    p99: quantile(ms, 0.99),
    max: ms.length ? Math.max(...ms) : NaN,
    p99OfMedians: quantile(medians, 0.99),
  };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const all = args.loads
    ? fileScenarios(args.loads, args.instances, args.spare)
    : syntheticScenarios({ windows: args.windows, spare: args.spare, seed: args.seed });
  const scenarios = args.only ? all.filter((s) => s.name.includes(args.only ?? "")) : all;
  const machine = machineInfo();
  const rows: Row[] = [];
  const timingInputs: ReplanInput[] = [];
  const replan: ReplanConfig = { ...deployedReplanConfig(), ...args.replan };
  const started = performance.now();
  // One step per (scenario, policy), on stderr and only on a terminal; the tables print after it.
  const bar = progressBar("placement", scenarios.length * args.policies.length, {
    format: "placement [{bar}] {value}/{total} {eta_formatted} left · {scenario} · {policy}",
    payload: { scenario: scenarios[0]?.name ?? "", policy: args.policies[0] ?? "" },
  });
  let step = 0;
  for (const sc of scenarios) {
    const warmup = Math.min(args.warmup, Math.floor((sc.trace.windows.length - 1) / 4));
    const results = {} as Record<PolicyName, PolicyResult>;
    const big = sc.shape.nLayers === 1 && sc.trace.nExperts === 256 && sc.shape.nInstances === 64;
    for (const p of args.policies) {
      const dispatches = dispatchesFor(sc.kind, p, args.llAll);
      const policy = makePolicy(p, sc.trace, sc.shape, replan);
      const record = big && p === "edge-moe" ? timingInputs : undefined;
      bar.update(step, { scenario: sc.name, policy: p });
      results[p] = evaluatePolicy(policy, sc.trace, sc.shape, warmup, dispatches, args.batch, args.seed, record);
      bar.update(++step, { scenario: sc.name, policy: p });
    }
    rows.push({ name: sc.name, kind: sc.kind, shape: sc.shape, replan, results });
  }
  bar.stop();
  const seconds = (performance.now() - started) / 1000;
  // Every k-th recorded 256 × 64 input, at most 200, each re-planned `timingRepeats` times.
  const stride = Math.max(1, Math.ceil(timingInputs.length / 200));
  const timing = timePlanner(
    timingInputs.filter((_, i) => i % stride === 0),
    replan,
    args.timingRepeats,
  );

  console.log(`placement benchmark — online max/mean instance rows (plan from window t, scored on t+1)`);
  console.log(
    `${machine.cpu} × ${machine.cores}, ${machine.node}, load average ${machine.loadavg.join(" ")}; ` +
      (args.loads ? `loads from ${args.loads}` : `${args.windows} windows`) +
      `; ${args.spare} spare slots per instance; warm-up min(${args.warmup}, a quarter of the windows) excluded`,
  );
  console.log(
    "dispatch: split = static split by shares (EPLB: even, as vLLM); " +
      `LL = least-loaded per call of ${args.batch.rowsPerBatch} rows in ${args.batch.dispatchers} isolates, ` +
      `each balancing its own recent rows (half-life ${args.batch.halfLifeWindows} window)`,
  );
  console.log(`edge-moe: replanStep with the ${describeReplanConfig(replan)}\n`);
  const jumpPercent = DRIFTS.mixed.kind === "mixed" ? DRIFTS.mixed.rate * 100 : 0;
  const titles: Record<ScenarioKind, string> = {
    zipf: `static Zipf popularity, ${TOKENS_PER_WINDOW} tokens × top-${TOP_K} per window (sampling noise only)`,
    drift:
      `drifting popularity, ${TOKENS_PER_WINDOW} tokens × top-${TOP_K} per window, ` +
      `independent Poisson counts, burstiness ${BURSTINESS}`,
    edge:
      `edge traffic: ${EDGE_TOKENS_PER_WINDOW} tokens × top-${TOP_K} per window ` +
      `from ${EDGE_REQUESTS.active} requests (affinity σ=${EDGE_REQUESTS.affinity}, ` +
      `~${EDGE_REQUESTS.meanWindows} windows each), hot set rotating`,
    "edge-jumps":
      "edge traffic with sudden swaps (a hot expert trades places with a random one in " +
      `${jumpPercent}% of windows per layer): p99 is set by the jumps`,
    "multi-layer": "8 layers sharing instance memory (edge traffic)",
    file: "user load file",
  };
  for (const kind of ["zipf", "drift", "edge", "edge-jumps", "multi-layer", "file"] as const) {
    const sel = rows.filter((r) => r.kind === kind);
    if (sel.length === 0) continue;
    console.log(`\n${titles[kind]}`);
    printTable(sel);
  }
  const problems = rows.flatMap((r) =>
    args.policies.flatMap((p) => r.results[p].problems.map((m) => `${r.name} ${p}: ${m}`)),
  );
  if (problems.length > 0) console.log(`\nINVARIANT VIOLATIONS:\n${problems.slice(0, 20).join("\n")}`);

  const summary = summarise(rows);
  if (timing.n > 0) {
    summary["replanStep ms, 256 × 64, 1 layer, recorded inputs re-planned (median | p99 | max, n)"] =
      `${fmt(timing.p50, 2)} | ${fmt(timing.p99, 2)} | ${fmt(timing.max, 2)}, n=${timing.n}`;
    summary["replanStep ms, same inputs: p99 over inputs of each input's median (VM hiccups removed)"] = fmt(
      timing.p99OfMedians,
      2,
    );
    summary["target: replanStep p99 ≤ 2 ms at 256 × 64"] =
      `${timing.p99 <= 2 ? "met" : "MISSED"} (wall p99 ${fmt(timing.p99, 2)} ms; ` +
      `slowest inputs' medians ${fmt(timing.p99OfMedians, 2)} ms)`;
  }
  console.log(`\nsummary (${seconds.toFixed(1)} s)`);
  for (const [k, v] of Object.entries(summary)) console.log(`  ${k}: ${typeof v === "number" ? fmt(v) : v}`);

  mkdirSync(dirname(args.out), { recursive: true });
  writeFileSync(
    args.out,
    `${JSON.stringify(
      {
        benchmark: "placement",
        machine,
        replanConfig: replan,
        config: {
          ...args,
          tokensPerWindow: TOKENS_PER_WINDOW,
          edgeTokensPerWindow: EDGE_TOKENS_PER_WINDOW,
          topK: TOP_K,
          burstiness: BURSTINESS,
          drifts: DRIFTS,
          edgeRequests: EDGE_REQUESTS,
        },
        metric:
          "per (window, layer): max instance rows / mean instance rows of the plan made from window t, " +
          "on window t+1, per dispatch (scripts/lib/dispatch-model.ts)",
        scenarios: rows,
        plannerTiming: timing,
        summary,
        seconds,
      },
      null,
      2,
    )}\n`,
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
      return (
        `p50 ${fmt(quantile(p50, 0.5))} (worst ${fmt(Math.max(...p50))}), ` +
        `p99 ${fmt(quantile(p99, 0.5))} (worst ${fmt(Math.max(...p99))})`
      );
    };
    for (const [p, d, label] of [...COLUMNS, ...EXTRA]) {
      if (p !== "static" && sel.some((r) => r.results[p]?.dispatch[d]))
        out[`${tag}: ${label} — median over scenarios`] = line(p, d);
    }
    // edge-moe as deployed: least-loaded dispatch when scored, else its placement's best case.
    const edgeD: DispatchMode = sel.every((r) => r.results["edge-moe"].dispatch["least-loaded"])
      ? "least-loaded"
      : "oracle";
    const met = sel.filter(
      (r) => ratioOf(r, "edge-moe", edgeD, "p50") <= 1.1 && ratioOf(r, "edge-moe", edgeD, "p99") <= 1.25,
    ).length;
    out[`${tag}: scenarios where edge ${edgeD} meets p50 ≤ 1.10 and p99 ≤ 1.25`] = `${met} of ${sel.length}`;
    const p50met = sel.filter((r) => ratioOf(r, "edge-moe", edgeD, "p50") <= 1.1).length;
    out[`${tag}: scenarios where edge ${edgeD} meets p50 ≤ 1.10`] = `${p50met} of ${sel.length}`;
    for (const [p, d] of [
      ["eplb", "split"],
      ["eplb", "least-loaded"],
      ["eplb", "oracle"],
      ["eplb-ema", "least-loaded"],
    ] as const) {
      if (!sel.every((r) => r.results[p]?.dispatch[d])) continue;
      const better = sel.filter(
        (r) =>
          ratioOf(r, "edge-moe", edgeD, "p50") <= ratioOf(r, p, d, "p50") &&
          ratioOf(r, "edge-moe", edgeD, "p99") <= ratioOf(r, p, d, "p99"),
      ).length;
      out[`${tag}: scenarios where edge ${edgeD} p50 and p99 ≤ ${p} ${d}'s`] = `${better} of ${sel.length}`;
    }
    const copies = sel.map(
      (r) => r.results["edge-moe"].copiesPerReplan / Math.max(1e-9, r.results.eplb.copiesPerReplan),
    );
    out[`${tag}: edge-moe copies / eplb copies (median | worst scenario)`] =
      `${fmt(quantile(copies, 0.5))} | ${fmt(Math.max(...copies))}`;
    out[`target (${tag}): online max/mean p50 ≤ 1.10 and p99 ≤ 1.25 (edge ${edgeD})`] =
      `${met === sel.length ? "met" : `MISSED in ${sel.length - met} of ${sel.length} scenarios`}`;
    out[`target (${tag}): copies per re-plan ≤ 1/3 of EPLB's`] =
      `${Math.max(...copies) <= 1 / 3 ? "met" : "MISSED"} (worst ${fmt(Math.max(...copies))})`;
  }
  const big = rows.filter((r) => r.kind !== "multi-layer" && r.shape.nInstances === 64 && r.name.includes("E=256"));
  if (big.length > 0) {
    out["replanStep ms in-run, 256 × 64, 1 layer (median of medians | worst p99)"] = `${fmt(
      quantile(
        big.map((r) => r.results["edge-moe"].msP50),
        0.5,
      ),
      2,
    )} | ${fmt(Math.max(...big.map((r) => r.results["edge-moe"].msP99)), 2)}`;
    out["eplb ms in-run, 256 × 64, 1 layer (median of medians | worst p99)"] = `${fmt(
      quantile(
        big.map((r) => r.results.eplb.msP50),
        0.5,
      ),
      2,
    )} | ${fmt(Math.max(...big.map((r) => r.results.eplb.msP99)), 2)}`;
  }
  const multi = rows.find((r) => r.kind === "multi-layer");
  if (multi)
    out["replanStep ms in-run, 256 × 64, 8 layers (median | p99)"] =
      `${fmt(multi.results["edge-moe"].msP50, 2)} | ${fmt(multi.results["edge-moe"].msP99, 2)}`;
  return out;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  main().catch((err: unknown) => {
    console.error(`bench:placement: ${(err as Error).message}`);
    process.exit(1);
  });
}
