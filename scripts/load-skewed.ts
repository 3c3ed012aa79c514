/**
 * `npm run load:skewed [-- --url http://127.0.0.1:8787 --seconds 15 --concurrency 4]`: drives a
 * running edge-moe (e.g. `npm start`) with a skewed, moving workload and prints, once a second,
 * which experts have replicas. Phase A repeats one prompt (its tokens route to a few hot experts
 * per layer), phase B switches to another prompt (the hot set moves), then the load stops: watch
 * replicas of A's hot experts appear, B's appear while A's are released, and all go when idle.
 * On a terminal a progress bar shows the phase, requests and replicas; `--json` prints one JSON
 * object per second (and a final summary) for a program to read. Open /dashboard to see it live.
 */
import { parseArgs } from "node:util";
import { progressBar, wantsHelp } from "./lib/progress";
import { numberedPrompt, SKEW_PHASES } from "./lib/skewed-prompts";

const USAGE = `usage: npm run load:skewed [-- --url URL] [--model ID] [--seconds N] [--concurrency N]
                           [--idle N] [--json]
  Drives a running edge-moe with a skewed, moving load (phase A, then phase B, then idle) and
  reports which experts have replicas once a second.
  --url URL         server (default http://127.0.0.1:8787, what npm start serves)
  --model ID        model (default: the server's default model)
  --seconds N       length of each load phase (default 15)
  --concurrency N   parallel request loops (default 4)
  --idle N          seconds to watch after the load stops (default 30)
  --json            one JSON object per line on stdout instead of text`;
if (wantsHelp()) {
  console.log(USAGE);
  process.exit(0);
}

const { values } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    url: { type: "string", default: "http://127.0.0.1:8787" },
    model: { type: "string", default: "" },
    seconds: { type: "string", default: "15" },
    concurrency: { type: "string", default: "4" },
    idle: { type: "string", default: "30" },
  },
});
const base = values.url.replace(/\/$/, "");
// Default: the server's default model (the first one /v1/models lists is not necessarily it).
const MODEL_QUERY = values.model ? `?model=${values.model}` : "";
const phaseMs = Number(values.seconds) * 1000;
for (const k of ["seconds", "concurrency", "idle"] as const) {
  if (!(Number(values[k]) >= 0)) {
    console.error(`--${k} must be a number ≥ 0, got "${values[k]}"\n${USAGE}`);
    process.exit(2);
  }
}
const PHASES = SKEW_PHASES;

interface PlacementView {
  version: number;
  instances: { name: string; experts: string[] }[];
}

async function placement(): Promise<PlacementView> {
  const res = await fetch(`${base}/v1/placement${MODEL_QUERY}`);
  if (!res.ok) throw new Error(`GET /v1/placement → ${res.status}: ${await res.text()}`);
  return (await res.json()) as PlacementView;
}

function replicatedKeys(p: PlacementView): Record<string, string[]> {
  const where: Record<string, string[]> = {};
  p.instances.forEach((inst, i) =>
    inst.experts.forEach((e) => {
      const [key, share] = e.split("@");
      if (share !== undefined) (where[key] ??= []).push(`h${i}:${share}`);
    }),
  );
  return where;
}

function replicated(p: PlacementView): string {
  return (
    Object.entries(replicatedKeys(p))
      .map(([k, v]) => `${k}[${v.join(" ")}]`)
      .join(" ") || "(none)"
  );
}

let phase = -1;
let sent = 0;
/** Requests started (numbers each request's prompt: see the worker). */
let started = 0;
let failed = 0;
const t0 = Date.now();
const stamp = () => `${((Date.now() - t0) / 1000).toFixed(0).padStart(3)} s`;

async function worker(): Promise<void> {
  while (phase < PHASES.length) {
    if (phase < 0) {
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    const res = await fetch(`${base}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        ...(values.model ? { model: values.model } : {}),
        // A distinct first token a request: prefix sharing would otherwise copy the repeated prompt
        // from a kept donor, and the experts would see decode rows only — not the skew to watch.
        prompt: numberedPrompt(++started, PHASES[phase].prompt),
        max_tokens: 8,
        temperature: 0,
      }),
    });
    sent++;
    if (!res.ok) {
      failed++;
      console.error(`${stamp()} request failed: ${res.status} ${await res.text()}`);
    } else await res.arrayBuffer();
  }
}

const totalS = 2 * Number(values.seconds) + Number(values.idle);
const bar = progressBar("load", totalS, {
  enabled: !values.json,
  payload: { phase: "start", version: "?", instances: "?", sent: 0, failed: 0, replicated: "(none)" },
  format:
    "[{bar}] {value}/{total} s {phase} · v{version} · {instances} instances · {sent} req ({failed} failed)" +
    " · replicated: {replicated}",
});
// With a bar on the terminal the per-second lines would fight it: they go to the bar's payload.
const barred = Boolean(process.stderr.isTTY) && !values.json;
const report = (p: PlacementView, label: string) => {
  const elapsed = Math.round((Date.now() - t0) / 1000);
  if (values.json) {
    const row = { t: elapsed, phase: label, version: p.version, instances: p.instances.length, sent, failed };
    console.log(JSON.stringify({ ...row, replicated: replicatedKeys(p) }));
  } else if (barred) {
    const rep = replicated(p);
    const short = rep.length > 60 ? `${rep.slice(0, 57)}…` : rep;
    const payload = { phase: label, version: p.version, instances: p.instances.length, sent, failed };
    bar.update(Math.min(elapsed, totalS), { ...payload, replicated: short });
  } else {
    const counts = `${p.instances.length} instances, ${sent} requests (${failed} failed)`;
    console.log(`${stamp()} [${label}] v${p.version} ${counts}; replicated: ${replicated(p)}`);
  }
};
const first = await placement();
report(first, "start");
const workers = Array.from({ length: Number(values.concurrency) }, worker);
const monitor = setInterval(async () => {
  try {
    const p = await placement();
    report(p, phase < 0 ? "start" : phase < PHASES.length ? `load ${PHASES[phase].name}` : "idle");
  } catch (err) {
    console.error(err instanceof Error ? err.message : err);
  }
}, 1000);
for (phase = 0; phase < PHASES.length; phase++) await new Promise((r) => setTimeout(r, phaseMs));
await Promise.all(workers);
await new Promise((r) => setTimeout(r, Number(values.idle) * 1000));
clearInterval(monitor);
bar.stop();
const last = await placement();
if (values.json) {
  console.log(JSON.stringify({ done: true, sent, failed, version: last.version, replicated: replicatedKeys(last) }));
} else console.log(`${stamp()} done: ${sent} requests, ${failed} failed; replicated now: ${replicated(last)}`);
process.exit(failed > 0 ? 1 : 0);
