/**
 * @module The re-plan config the benchmarks run: the deployed one — `wrangler.toml` `[vars]` read
 * by the Coordinator's own `replanConfigFromEnv` — with any knob a command-line flag overrides,
 * and a one-line description of it for the reports.
 */
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { replanConfigFromEnv, type ReplanConfig } from "../../src/coordinator/replan";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The `[vars]` table of a wrangler.toml (string values, as wrangler passes them to the Worker). */
export function wranglerVars(path = join(ROOT, "wrangler.toml")): Record<string, string> {
  const vars: Record<string, string> = {};
  let inVars = false;
  for (const raw of readFileSync(path, "utf8").split("\n")) {
    const line = raw.trim();
    if (line.startsWith("[")) {
      inVars = line === "[vars]";
      continue;
    }
    if (!inVars || line === "" || line.startsWith("#")) continue;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(#.*)?$/.exec(line);
    if (!m) throw new Error(`${path}: cannot read [vars] line "${line}" (only KEY = "string" is supported)`);
    vars[m[1]] = m[2];
  }
  return vars;
}

/** The Coordinator's config as deployed by `wrangler.toml`. */
export function deployedReplanConfig(path?: string): ReplanConfig {
  return replanConfigFromEnv(wranglerVars(path));
}

/** Flags that override one knob each: `--flag value` (or a bare flag for booleans). */
export const REPLAN_FLAGS_HELP =
  "re-plan knobs (default: wrangler.toml [vars] via replanConfigFromEnv): --max-copies C --threshold T " +
  "--max-instances N --spread S --variance on|off --idle-fraction F --share-hysteresis H " +
  "--half-life W --rise-alpha A --trend-alpha A --rpc-ms MS --row-ms-per-mib MS " +
  "--pass-ms-per-mib MS (all three 0: latency model off)";

/**
 * Applies `flag` to `overrides` when it is a re-plan knob, reading its value with `next()`.
 * Returns false for any other flag.
 */
export function applyReplanFlag(overrides: Partial<ReplanConfig>, flag: string, next: () => string): boolean {
  const num = (min: number, integer = false): number => {
    const v = next();
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) {
      throw new Error(`${flag} must be ${integer ? "an integer" : "a number"} ≥ ${min}, got "${v}"`);
    }
    return n;
  };
  const window = (): ReplanConfig["loadWindow"] => ({ ...(overrides.loadWindow ?? deployedReplanConfig().loadWindow) });
  switch (flag) {
    case "--max-copies":
      overrides.maxCopies = num(0, true);
      return true;
    case "--threshold":
      overrides.threshold = num(0);
      return true;
    case "--max-instances":
      overrides.maxInstances = num(1, true);
      return true;
    case "--spread":
      overrides.spread = num(0);
      return true;
    case "--idle-fraction":
      overrides.idleFraction = num(0);
      return true;
    case "--share-hysteresis":
      overrides.shareHysteresis = num(0);
      return true;
    case "--variance": {
      const v = next();
      if (v !== "on" && v !== "off") throw new Error(`--variance must be on or off, got "${v}"`);
      overrides.useVariance = v === "on";
      return true;
    }
    case "--half-life":
      overrides.loadWindow = { ...window(), halfLifeWindows: num(1e-6) };
      return true;
    case "--rise-alpha":
      overrides.loadWindow = { ...window(), riseAlpha: num(1e-6) };
      return true;
    case "--trend-alpha":
      overrides.loadWindow = { ...window(), trendAlpha: num(0) };
      return true;
    case "--rpc-ms":
    case "--row-ms-per-mib":
    case "--pass-ms-per-mib": {
      const d = deployedReplanConfig().latency ?? { rpcMs: 0, rowMsPerMiB: 0, passMsPerMiB: 0, loadMsPerMiB: 2 };
      const cur =
        overrides.latency === undefined
          ? d
          : (overrides.latency ?? { ...d, rpcMs: 0, rowMsPerMiB: 0, passMsPerMiB: 0 });
      const key = flag === "--rpc-ms" ? "rpcMs" : flag === "--row-ms-per-mib" ? "rowMsPerMiB" : "passMsPerMiB";
      const next2 = { ...cur, [key]: num(0) };
      overrides.latency = next2.rpcMs === 0 && next2.rowMsPerMiB === 0 && next2.passMsPerMiB === 0 ? null : next2;
      return true;
    }
    default:
      return false;
  }
}

/** One line naming every knob, and which ones a flag changed from the deployed config. */
export function describeReplanConfig(config: ReplanConfig, deployed: ReplanConfig = deployedReplanConfig()): string {
  const flat = (c: ReplanConfig): Record<string, number | boolean | string> => {
    const { loadWindow, latency, ...rest } = c;
    const costs: Record<string, number | string> = latency
      ? {
          rpcMs: latency.rpcMs,
          passMsPerMiB: latency.passMsPerMiB,
          rowMsPerMiB: latency.rowMsPerMiB,
          loadMsPerMiB: latency.loadMsPerMiB,
        }
      : { latencyModel: "off" };
    return { ...rest, ...loadWindow, ...costs };
  };
  const a = flat(config);
  const d = flat(deployed);
  const changed = Object.keys(a).filter((k) => a[k] !== d[k]);
  const knobs = Object.entries(a)
    .map(([k, v]) => `${k}=${v}${changed.includes(k) ? "*" : ""}`)
    .join(" ");
  const title =
    changed.length === 0 ? "deployed re-plan config (wrangler.toml)" : "re-plan config, * = overridden by a flag";
  return `${title}: ${knobs}`;
}
