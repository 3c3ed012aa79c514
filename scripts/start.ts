/**
 * `npm start [-- --quant int8 | --config NAME [--layers N] [--model ID] [--out DIR]]`: makes the
 * demo model (first run only), seeds it into the local R2 bucket that `wrangler dev` serves, starts
 * `wrangler dev` on http://127.0.0.1:8787, warms the model up (dense weights into the Worker,
 * experts into their ExpertHosts) and prints a ready line with a sample curl. `--quant int8` serves
 * `demo-mixtral-int8` instead: the demo with its experts converted to int8 (scripts/convert.ts),
 * about a quarter of the bytes. `--config` serves the first N layers of a published config at its
 * exact shape instead (make-model: random int8 experts, bf16 dense, the family's real tokenizer and
 * chat template), with the stage budgets its dense layers need and the deadlines and keep-alive of
 * one local workerd process (scripts/lib/serve-vars.ts).
 * Ctrl-C stops wrangler and workerd.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { randomBytes } from "node:crypto";
import { basename, join, resolve } from "node:path";
import { ROOT } from "./lib/local-worker";
import { wantsHelp } from "./lib/progress";
import { resolveConfig } from "./lib/make-model";
import { localRuntimeVars, serveVarsFor, tomlVars } from "./lib/serve-vars";
import { parseConfig } from "../src/model/config";

const USAGE = `usage: npm start [-- --quant int8 | --config NAME [--layers N] [--model ID] [--out DIR]]
                 [--inspector-port P]
  Makes the demo model (first run), seeds it into the local R2 bucket, runs wrangler dev on
  http://127.0.0.1:8787 (PORT overrides), warms the model up and prints how to use it, including
  the dashboard URL with the admin token from .dev.vars. Ctrl-C stops it.
  --quant int8   serve demo-mixtral-int8 (the demo with int8 experts) instead
  --config NAME  serve the first --layers (default 4) layers of a published config (scripts/configs/,
                 e.g. qwen3-30b-a3b) at its exact shape: random int8 experts, bf16 dense weights, the
                 family's real tokenizer and chat template (npm run make-model; written once)
  --model ID     its model id (default NAME-<N>l); --out DIR its directory (default local-models/ID)
  --inspector-port P  wrangler dev's inspector on P (default 9229, which another server may hold):
                 what \`npm run profile:load -- --inspector http://127.0.0.1:P\` attaches to`;
if (wantsHelp()) {
  console.log(USAGE);
  process.exit(0);
}

const PORT = Number(process.env.PORT ?? 8787);
const HOST = "127.0.0.1";
const { values: opts } = parseArgs({
  options: {
    quant: { type: "string", default: "none" },
    config: { type: "string" },
    layers: { type: "string", default: "4" },
    model: { type: "string" },
    out: { type: "string" },
    "inspector-port": { type: "string" },
  },
});
if (opts.quant !== "none" && opts.quant !== "int8") {
  console.error(`--quant must be "int8" (or omitted), got "${opts.quant}"`);
  process.exit(2);
}
const LAYERS = Number(opts.layers);
if (!Number.isInteger(LAYERS) || LAYERS < 1) {
  console.error(`--layers must be a positive integer, got "${opts.layers}"`);
  process.exit(2);
}
const INSPECTOR_PORT = opts["inspector-port"] === undefined ? null : Number(opts["inspector-port"]);
if (INSPECTOR_PORT !== null && !(Number.isInteger(INSPECTOR_PORT) && INSPECTOR_PORT > 0 && INSPECTOR_PORT < 65536)) {
  console.error(`--inspector-port must be a port number, got "${opts["inspector-port"]}"`);
  process.exit(2);
}
if (opts.config !== undefined && opts.quant !== "none") {
  console.error("--config and --quant do not combine (a --config model has int8 experts already)");
  process.exit(2);
}
const INT8 = opts.quant === "int8";
const CONFIG = opts.config;
const MODEL = CONFIG
  ? (opts.model ?? `${basename(CONFIG).replace(/\.json$/, "")}-${LAYERS}l`)
  : INT8
    ? "demo-mixtral-int8"
    : "demo-mixtral";
const MODEL_DIR = CONFIG ? (opts.out ?? join("local-models", MODEL)) : INT8 ? "demo-model-int8" : "demo-model";
const base = `http://${HOST}:${PORT}`;

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { stdio: "inherit", cwd: ROOT });
  if (r.status !== 0) {
    console.error(`${cmd} ${args.join(" ")} failed (exit ${r.status})`);
    process.exit(1);
  }
}

let extraVars: Record<string, string> = {};
if (CONFIG) {
  // Written once: make-model keeps a directory that already holds this model.
  run("tsx", ["scripts/make-model.ts", "--config", resolveConfig(CONFIG), "--out", MODEL_DIR, "--layers", `${LAYERS}`]);
  const spec = parseConfig(JSON.parse(readFileSync(resolve(ROOT, MODEL_DIR, "config.json"), "utf8")));
  const serve = serveVarsFor(spec, tomlVars(ROOT));
  const local = localRuntimeVars();
  extraVars = { ...serve.vars, ...local.vars };
  for (const r of [...serve.reasons, ...local.reasons]) console.log(`vars: ${r}`);
} else run("tsx", ["scripts/make-demo-model.ts", "--out", "demo-model"]);
if (INT8) {
  // Re-converted whenever the f32 demo is newer than the int8 copy.
  const stale =
    !existsSync(join(ROOT, "demo-model-int8", "config.json")) ||
    statSync(join(ROOT, "demo-model", "config.json")).mtimeMs >
      statSync(join(ROOT, "demo-model-int8", "config.json")).mtimeMs;
  if (stale) run("tsx", ["scripts/convert.ts", "demo-model", "demo-model-int8", "--quant", "int8", "--force"]);
}
run("tsx", ["scripts/seed.ts", MODEL_DIR, "--model", MODEL]);

// Admin routes need a token; keep one per checkout in .dev.vars (gitignored), which wrangler dev reads.
const devVars = join(ROOT, ".dev.vars");
if (!existsSync(devVars) || !/^ADMIN_TOKEN=/m.test(readFileSync(devVars, "utf8"))) {
  writeFileSync(
    devVars,
    `${existsSync(devVars) ? readFileSync(devVars, "utf8") : ""}ADMIN_TOKEN=${randomBytes(16).toString("hex")}\n`,
  );
}
const adminToken = readFileSync(devVars, "utf8").match(/^ADMIN_TOKEN=(.*)$/m)![1];

// The rate limiter stays off here: `npm run load:skewed` drives this server far past a client's
// per-minute allowance on purpose. `npm run dev` keeps wrangler.toml's limit.
const vars = ["--var", `DEFAULT_MODEL:${MODEL}`, "--var", "RATE_LIMIT_ENABLED:false"];
for (const [k, v] of Object.entries(extraVars)) vars.push("--var", `${k}:${v}`);
const inspector = INSPECTOR_PORT === null ? [] : ["--inspector-port", String(INSPECTOR_PORT)];
const dev = spawn(
  "wrangler",
  ["dev", "--ip", HOST, "--port", String(PORT), "--show-interactive-dev-session=false", ...inspector, ...vars],
  {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      ...process.env,
      X_LOCAL_OBSERVABILITY: "false",
      CLOUDFLARE_CF_FETCH_ENABLED: "false",
      WRANGLER_SEND_METRICS: "false",
    },
  },
);
dev.stdout.on("data", (d: Buffer) => process.stdout.write(d));
dev.stderr.on("data", (d: Buffer) => process.stderr.write(d));
const stop = () => {
  dev.kill("SIGINT");
  setTimeout(() => dev.kill("SIGKILL"), 5000).unref();
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
dev.on("exit", (code) => process.exit(code ?? 0));

async function waitReady(): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(`${base}/health`)).ok) return;
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`wrangler dev did not answer on ${base} within 120 s`);
}

try {
  await waitReady();
  const t0 = Date.now();
  console.log(`warming up ${MODEL}: dense weights into the Worker, experts into their ExpertHosts …`);
  const res = await fetch(`${base}/v1/placement?model=${MODEL}`);
  const placement = (await res.json()) as {
    version: number;
    instances: { name: string; experts: string[] }[];
    error?: { message: string };
  };
  if (!res.ok) throw new Error(`warm-up failed: ${placement.error?.message ?? res.status}`);
  const holdings = placement.instances.map((i) => `${i.name} holds ${i.experts.length} experts`).join("; ");
  console.log(`placement v${placement.version}: ${holdings} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  if (CONFIG) {
    // A pipelined model loads its stages and head shards on the first request: take that here.
    const t1 = Date.now();
    console.log("warming up the stages and head shards (a 2-token completion) …");
    const warm = await fetch(`${base}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, prompt: "Hello", max_tokens: 2, temperature: 0 }),
    });
    if (!warm.ok) throw new Error(`warm-up completion failed: ${warm.status} ${await warm.text()}`);
    console.log(`stages and head loaded (${((Date.now() - t1) / 1000).toFixed(1)} s)`);
  }
  console.log(`\nedge-moe ready on ${base} — model ${MODEL}, ${placement.instances.length} ExpertHost instances`);
  console.log(
    `try:\n  curl -N ${base}/v1/chat/completions -H 'content-type: application/json' \\\n` +
      `    -d '{"model":"${MODEL}","messages":[{"role":"user","content":"Hello!"}],"max_tokens":24,"stream":true` +
      `${CONFIG ? ',"chat_template_kwargs":{"enable_thinking":false}' : ""}}'`,
  );
  console.log(`  npm run load:skewed   (a skewed, moving load: watch replicas of hot experts appear and go)`);
  console.log(
    `  curl ${base}/v1/placement\n` +
      `  curl -H 'authorization: Bearer ${adminToken}' ${base}/admin/hosts   (token in .dev.vars)`,
  );
  console.log(`  curl -H 'authorization: Bearer ${adminToken}' ${base}/metrics   (Prometheus text)`);
  console.log(`  open ${base}/dashboard?token=${adminToken}   (live expert heat map)`);
} catch (err) {
  console.error(err instanceof Error ? err.message : err);
  stop();
}
