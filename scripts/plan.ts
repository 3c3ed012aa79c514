/**
 * @module plan — sizing plan for a published MoE config under the instance budgets (see
 * scripts/lib/plan-lib.ts for what is counted and how).
 *
 *   npm run plan -- <config.json | name | all> [--stage-mb N] [--head-mb N] [--expert-mb N]
 *     [--expert-dtype f32|int8|int4] [--subrequests N] [--tokens N] [--rpc-ms N] [--user-rtt-ms N] [--json]
 *     [--measured bench-results/e2e.json]  (project the config's decode from a bench:e2e run of its first layers)
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import {
  isRefusal,
  planModel,
  specForPlan,
  tableRows,
  type ExpertDType,
  type LatencyCosts,
  type Plan,
  type Refusal,
} from "./lib/plan-lib";
import { projectFromMeasured, type E2eResult, type MeasuredProjection } from "./lib/plan-measured";
import { wantsHelp } from "./lib/progress";

/** Copies of the published configs (scripts/configs/README.md says where each came from). */
const CONFIG_DIR = "scripts/configs";
const CALIBRATION = "bench-results/calibration.json";
/** Without a calibration: an f32 expert kernel at ~1 ns a weight on one core (decode, 1 token). */
const DEFAULT_NS_PER_WEIGHT = 1;

const USAGE = `usage: npm run plan -- <config.json | name | all> [options]
  Sizes a model config against the instance budgets: StageHosts, HeadHosts, ExpertHosts, RPCs and
  bytes per token, subrequests per generation, projected decode latency.
  <name> is a file in ${CONFIG_DIR}/ without .json (e.g. qwen3-30b-a3b); "all" plans every one.
  --stage-mb N       dense weights per StageHost, MiB (default STAGE_HOST_BUDGET_MB of wrangler.toml)
  --head-mb N        head rows per HeadHost, MiB (default HEAD_HOST_BUDGET_MB, else the same)
  --expert-mb N      expert weights per ExpertHost, MiB (default EXPERT_HOST_BUDGET_MB)
  --expert-dtype T   f32 | int8 | int4 (default int8)
  --subrequests N    subrequest limit of one invocation (default [limits] subrequests of wrangler.toml,
                     else 1000, the Workers Paid default)
  --tokens N         tokens in the generation counted against it (default 256)
  --rpc-ms N         in-region RPC round trip (default 1)
  --user-rtt-ms N    user ↔ region round trip (default 40)
  --measured FILE    a bench:e2e JSON of this config's first layers (npm run bench:e2e -- --model ID --dir DIR):
                     projects decode ms/token and RPCs/token to the config's layers from it
  --json             print the plans as JSON`;

/** `[vars]` strings of wrangler.toml (a flat key = "value" scan is enough for the budget numbers). */
function wranglerVar(name: string): number | null {
  if (!existsSync("wrangler.toml")) return null;
  const m = new RegExp(`^${name}\\s*=\\s*"([^"]*)"`, "m").exec(readFileSync("wrangler.toml", "utf8"));
  return m && m[1] !== "" ? Number(m[1]) : null;
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
      "expert-dtype": s,
      subrequests: s,
      tokens: s,
      "rpc-ms": s,
      "user-rtt-ms": s,
      json: { type: "boolean", default: false },
      measured: s,
    },
  });
  if (positionals.length !== 1) throw new Error(USAGE);
  const hostMb = wranglerVar("EXPERT_HOST_BUDGET_MB") ?? 96;
  const dtype = values["expert-dtype"] ?? "int8";
  if (dtype !== "f32" && dtype !== "int8" && dtype !== "int4")
    throw new Error(`--expert-dtype must be f32, int8 or int4, got ${JSON.stringify(dtype)}`);
  const budgets = {
    stageMb: num("stage-mb", values["stage-mb"], wranglerVar("STAGE_HOST_BUDGET_MB") ?? hostMb),
    headMb: num("head-mb", values["head-mb"], wranglerVar("HEAD_HOST_BUDGET_MB") ?? hostMb),
    expertMb: num("expert-mb", values["expert-mb"], hostMb),
    expertDtype: dtype as ExpertDType,
    subrequestLimit: num("subrequests", values.subrequests, configuredSubrequests() ?? 1000, true),
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
    return isRefusal(r) ? r : planModel(name, r.spec, budgets, costs, r.notes);
  });
  let measured: MeasuredProjection | null = null;
  if (values.measured !== undefined) {
    const first = results[0];
    if (results.length !== 1 || isRefusal(first)) throw new Error("--measured needs one config that plans");
    const path = configPaths(positionals[0])[0];
    const spec = specForPlan(first.name, JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>);
    if (isRefusal(spec)) throw new Error(spec.message);
    const run = JSON.parse(readFileSync(values.measured, "utf8")) as E2eResult;
    measured = projectFromMeasured(spec.spec, run, values.measured, {
      stages: first.stage.instances,
      headShards: first.head.instances,
    });
  }
  if (values.json) {
    console.log(JSON.stringify({ budgets, costs, plans: results, ...(measured ? { measured } : {}) }, null, 2));
    return;
  }
  console.log(
    `budgets: StageHost ${budgets.stageMb} MiB, HeadHost ${budgets.headMb} MiB, ` +
      `ExpertHost ${budgets.expertMb} MiB (${dtype} experts); ` +
      `subrequests ${budgets.subrequestLimit} for ${budgets.tokens} tokens; RPC ${costs.rpcMs} ms; ` +
      `kernel ${costs.nsPerWeight.toFixed(2)} ns/weight from ${costs.kernelSource}`,
  );
  for (const line of tableRows(results)) console.log(line);
  for (const r of results) if (!isRefusal(r) && r.notes.length > 0) console.log(`${r.name}: ${r.notes.join("; ")}`);
  const first = results[0];
  if (results.length === 1 && !isRefusal(first)) {
    console.log(`first token also waits the user ↔ region round trip (${first.firstTokenExtraMs} ms)`);
  }
  if (results.length === 1 && isRefusal(first)) process.exitCode = 2;
  if (measured && !isRefusal(first)) {
    const m = measured;
    const rpcs = m.measuredExpertRpcsPerToken;
    console.log(
      `measured (${m.source}): ${m.measuredModel}, ${m.measuredLayers} layers, ` +
        `${m.measuredMsPerToken.toFixed(1)} ms/token` +
        `${rpcs === null ? "" : `, ${rpcs.toFixed(1)} expert RPCs/token`}` +
        ` → ${first.nLayers} layers: ≤ ${m.projectedMsPerToken.toFixed(0)} ms/token ` +
        `(≥ ${m.projectedTokensPerSec.toFixed(2)} tokens/s, per-layer cost × layers)` +
        `${m.projectedRpcsPerToken === null ? "" : `, ${m.projectedRpcsPerToken.toFixed(0)} RPCs/token`}`,
    );
  }
}

try {
  main();
} catch (e) {
  console.error(`plan: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
}
