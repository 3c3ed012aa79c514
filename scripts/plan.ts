/**
 * @module plan — sizing plan for a published MoE config under a deployment's vars, computed by the
 * functions that place a real deployment (see scripts/lib/plan-lib.ts).
 *
 *   npm run plan -- <config.json | name | all> [--stage-mb N] [--head-mb N] [--expert-mb N] [--worker-mb N]
 *     [--expert-dtype f32|int8|int8-group|int4] [--expert-slices N] [--subrequests N] [--prompt-tokens N]
 *     [--tokens N] [--rpc-ms N] [--user-rtt-ms N] [--var NAME=value]… [--json] [--readme FILE]
 *     [--measured FILE]  (project the config's decode from a bench:e2e run of its first layers)
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import {
  isRefusal,
  parseWranglerVars,
  PLAN_DTYPES,
  planModel,
  specForPlan,
  tableRows,
  type LatencyCosts,
  type Plan,
  type PlanDtype,
  type Refusal,
} from "./lib/plan-lib";
import { projectFromMeasured, type E2eResult, type MeasuredProjection } from "./lib/plan-measured";
import { wantsHelp } from "./lib/progress";

/** Copies of the published configs (scripts/configs/README.md says where each came from). */
const CONFIG_DIR = "scripts/configs";
const CALIBRATION = "bench-results/calibration.json";
/** Without a calibration: an f32 expert kernel at ~1 ns a weight on one core (decode, 1 token). */
const DEFAULT_NS_PER_WEIGHT = 1;

const BEGIN = "<!-- plan-table:begin -->";
const END = "<!-- plan-table:end -->";

const USAGE = `usage: npm run plan -- <config.json | name | all> [options]
  Sizes a model config as a deployment with wrangler.toml's [vars] would place it (the shipped
  deploymentShape: pipeline stages, head shards, expert placement with slices, longest request;
  countRpcs / worstCaseRpcs): instances and bytes of each kind, RPCs and bytes per token,
  subrequests of a generation against the limit, projected decode latency.
  <name> is a file in ${CONFIG_DIR}/ without .json (e.g. qwen3-30b-a3b); "all" plans every one.
  --stage-mb N         STAGE_HOST_BUDGET_MB (default: wrangler.toml's)
  --head-mb N          HEAD_HOST_BUDGET_MB
  --expert-mb N        EXPERT_HOST_BUDGET_MB
  --worker-mb N        WORKER_BUDGET_MB
  --expert-dtype T     f32 | int8 | int8-group | int4: how ExpertHosts hold experts (default int8,
                       what convert writes)
  --expert-slices N    EXPERT_SLICES: force N slices per expert (default: the fewest that fit a host)
  --subrequests N      subrequest limit of one invocation (default [limits] subrequests of
                       wrangler.toml, else 1000, the Workers Paid default)
  --prompt-tokens N    prompt of the generation counted against it (default 128)
  --tokens N           tokens it generates (default 256)
  --rpc-ms N           in-region RPC round trip (default 1)
  --user-rtt-ms N      user ↔ region round trip (default 40)
  --var NAME=value     any other deployment var (repeatable), e.g. --var STAGE_KV_BUDGET_MB=16
  --measured FILE      a bench:e2e JSON of this config's first layers (bench:e2e -- --model ID --dir DIR):
                       projects decode ms/token and RPCs/token to the config's layers from it
  --json               print the plans as JSON
  --readme FILE        write the table between the ${BEGIN} and ${END} lines of FILE
                       (README.md's plan table is made so: npm run plan -- all --readme README.md)`;

/** `text` with the lines between the BEGIN and END markers replaced (a fenced-free markdown block). */
function replaceBetweenMarkers(text: string, lines: string[]): string {
  const a = text.indexOf(BEGIN);
  const b = text.indexOf(END);
  if (a < 0 || b < a) throw new Error(`--readme: the file has no ${BEGIN} … ${END} block`);
  const [head, ...rest] = lines;
  const block = [`${BEGIN}`, "", `\`${head}\``, "", ...rest.filter((l) => l.startsWith("|")), ""];
  const notes = rest.filter((l) => !l.startsWith("|"));
  if (notes.length > 0) block.push(...notes.map((n) => `- ${n}`), "");
  return text.slice(0, a) + block.join("\n") + text.slice(b);
}

/** wrangler.toml's [vars] (none when there is no wrangler.toml here). */
function wranglerVars(): Record<string, string> {
  return existsSync("wrangler.toml") ? parseWranglerVars(readFileSync("wrangler.toml", "utf8")) : {};
}

/** `subrequests = N` under wrangler.toml's `[limits]`. */
function configuredSubrequests(): number | null {
  if (!existsSync("wrangler.toml")) return null;
  const m = /^\[limits\][^[]*?^subrequests\s*=\s*(\d+)/m.exec(readFileSync("wrangler.toml", "utf8"));
  return m ? Number(m[1]) : null;
}

function configPaths(arg: string): string[] {
  if (arg === "all")
    return readdirSync(CONFIG_DIR)
      .filter((f) => f.endsWith(".json"))
      .sort()
      .map((f) => join(CONFIG_DIR, f));
  if (existsSync(arg)) return [arg];
  const named = join(CONFIG_DIR, `${arg}.json`);
  if (existsSync(named)) return [named];
  const known = readdirSync(CONFIG_DIR)
    .filter((f) => f.endsWith(".json"))
    .map((f) => f.slice(0, -5));
  throw new Error(`${arg}: no such file and no config of that name (known: ${known.join(", ")}, or "all")`);
}

function kernelCost(): Pick<LatencyCosts, "nsPerWeight" | "kernelSource"> {
  if (existsSync(CALIBRATION)) {
    const c = JSON.parse(readFileSync(CALIBRATION, "utf8")) as {
      kernel?: { dModel: number; dFf: number; points: { x: number; ms: number }[] };
    };
    const one = c.kernel?.points.find((p) => p.x === 1);
    if (c.kernel && one)
      return { nsPerWeight: (one.ms * 1e6) / (3 * c.kernel.dModel * c.kernel.dFf), kernelSource: CALIBRATION };
  }
  return {
    nsPerWeight: DEFAULT_NS_PER_WEIGHT,
    kernelSource: `constant ${DEFAULT_NS_PER_WEIGHT} ns/weight (no ${CALIBRATION})`,
  };
}

function num(flag: string, v: string | undefined, fallback: number, integer = false): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!(n > 0) || (integer && !Number.isSafeInteger(n)))
    throw new Error(`--${flag} must be a ${integer ? "whole " : ""}number > 0, got ${JSON.stringify(v)}`);
  return n;
}

function main(): void {
  if (wantsHelp()) {
    console.log(USAGE);
    return;
  }
  const s = { type: "string" } as const;
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      "stage-mb": s,
      "head-mb": s,
      "expert-mb": s,
      "worker-mb": s,
      "expert-dtype": s,
      "expert-slices": s,
      subrequests: s,
      "prompt-tokens": s,
      tokens: s,
      "rpc-ms": s,
      "user-rtt-ms": s,
      json: { type: "boolean", default: false },
      readme: s,
      measured: s,
      var: { type: "string", multiple: true },
    },
  });
  if (positionals.length !== 1) throw new Error(USAGE);
  const dtype = values["expert-dtype"] ?? "int8";
  if (!(PLAN_DTYPES as readonly string[]).includes(dtype))
    throw new Error(`--expert-dtype must be one of ${PLAN_DTYPES.join(", ")}, got ${JSON.stringify(dtype)}`);
  const vars = wranglerVars();
  const flagVars: [string, string][] = [
    ["stage-mb", "STAGE_HOST_BUDGET_MB"],
    ["head-mb", "HEAD_HOST_BUDGET_MB"],
    ["expert-mb", "EXPERT_HOST_BUDGET_MB"],
    ["worker-mb", "WORKER_BUDGET_MB"],
    ["expert-slices", "EXPERT_SLICES"],
  ];
  // Checked by the deployment's own var readers (the same errors a misconfigured deploy gets).
  for (const [flag, name] of flagVars) {
    const v = values[flag as keyof typeof values];
    if (typeof v === "string") vars[name] = v;
  }
  for (const kv of values.var ?? []) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(kv);
    if (!m) throw new Error(`--var must be NAME=value (a wrangler.toml var), got ${JSON.stringify(kv)}`);
    vars[m[1]] = m[2];
  }
  const options = {
    vars,
    expertDtype: dtype as PlanDtype,
    subrequestLimit: num("subrequests", values.subrequests, configuredSubrequests() ?? 1000, true),
    promptTokens: num("prompt-tokens", values["prompt-tokens"], 128, true),
    tokens: num("tokens", values.tokens, 256, true),
  };
  const costs: LatencyCosts = {
    rpcMs: num("rpc-ms", values["rpc-ms"], 1),
    userRttMs: num("user-rtt-ms", values["user-rtt-ms"], 40),
    ...kernelCost(),
  };
  const results: (Plan | Refusal)[] = configPaths(positionals[0]).map((path) => {
    const name = basename(path, ".json");
    const r = specForPlan(name, JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>);
    return isRefusal(r) ? r : planModel(name, r.spec, options, costs, r.notes);
  });
  const measured = values.measured === undefined ? null : measuredProjection(positionals[0], results, values.measured);
  if (values.json) {
    const plans = results.map((r) => (isRefusal(r) ? r : { ...r, shape: undefined }));
    console.log(JSON.stringify({ options, costs, plans, ...(measured ? { measured } : {}) }, null, 2));
    return;
  }
  const v = (k: string, d: string) => vars[k] ?? d;
  const lines: string[] = [];
  lines.push(
    `vars: StageHost ${v("STAGE_HOST_BUDGET_MB", "64")} MiB, HeadHost ${v("HEAD_HOST_BUDGET_MB", "96")} MiB, ` +
      `ExpertHost ${v("EXPERT_HOST_BUDGET_MB", "96")} MiB ` +
      `(${dtype} experts, EXPERT_SLICES ${v("EXPERT_SLICES", "0")}), ` +
      `Worker ${v("WORKER_BUDGET_MB", "96")} MiB; subrequests ${options.subrequestLimit} for ` +
      `${options.promptTokens} + ${options.tokens} tokens; RPC ${costs.rpcMs} ms; ` +
      `kernel ${costs.nsPerWeight.toFixed(2)} ns/weight from ${costs.kernelSource}`,
  );
  lines.push(...tableRows(results));
  for (const r of results) if (!isRefusal(r) && r.notes.length > 0) lines.push(`${r.name}: ${r.notes.join("; ")}`);
  const readme = values.readme;
  if (readme) {
    writeFileSync(readme, replaceBetweenMarkers(readFileSync(readme, "utf8"), lines));
    console.log(`plan: wrote the table of ${results.length} config(s) into ${readme}`);
    return;
  }
  for (const line of lines) console.log(line);
  const first = results[0];
  if (results.length === 1 && !isRefusal(first)) {
    console.log(`first token also waits the user ↔ region round trip (${first.firstTokenExtraMs} ms)`);
  }
  if (results.length === 1 && isRefusal(first)) process.exitCode = 2;
  if (measured) {
    const m = measured;
    const rpcs = m.measuredExpertRpcsPerToken;
    console.log(
      `measured (${m.source}): ${m.measuredModel}, ${m.measuredLayers} layers, ` +
        `${m.measuredMsPerToken.toFixed(1)} ms/token` +
        `${rpcs === null ? "" : `, ${rpcs.toFixed(1)} expert RPCs per processed token`}` +
        ` → ${results[0].name}: ≤ ${m.projectedMsPerToken.toFixed(0)} ms/token ` +
        `(≥ ${m.projectedTokensPerSec.toFixed(2)} tokens/s, per-layer cost × layers)` +
        `${m.projectedRpcsPerToken === null ? "" : `, ${m.projectedRpcsPerToken.toFixed(0)} RPCs per processed token`}`,
    );
  }
}

/** `--measured`: the one config's plan projected from a bench:e2e run of its first layers. */
function measuredProjection(arg: string, results: (Plan | Refusal)[], file: string): MeasuredProjection {
  const first = results[0];
  if (results.length !== 1 || isRefusal(first)) throw new Error("--measured needs one config that plans");
  const spec = specForPlan(
    first.name,
    JSON.parse(readFileSync(configPaths(arg)[0], "utf8")) as Record<string, unknown>,
  );
  if (isRefusal(spec)) throw new Error(spec.message);
  const run = JSON.parse(readFileSync(file, "utf8")) as E2eResult;
  return projectFromMeasured(spec.spec, run, file, {
    stages: first.stage?.instances ?? 0,
    headShards: first.head?.instances ?? 0,
  });
}

try {
  main();
} catch (e) {
  console.error(`plan: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
}
