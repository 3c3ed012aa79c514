/**
 * `npm run bench:e2e [-- --tokens N --runs R --out FILE]`: decode speed of the demo model through
 * the distributed path (Worker → one RPC per ExpertHost per layer) next to the same model with
 * every expert inside the Worker isolate (EXPERT_BACKEND = "worker"), both running at once in
 * real workerd and measured alternately in the same run. Prints tokens/s, the ratio, and the
 * per-layer fan-out cost ((1/tps_distributed − 1/tps_single) / layers); writes a JSON result.
 *
 * The single-isolate baseline holds ~200 MB of experts, which a production isolate (128 MB)
 * could not: it is the "no distribution" reference, not a deployable configuration.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { startLocalWorker, ROOT, type LocalWorker } from "./lib/local-worker";
import { seedModelDir } from "./lib/seed-lib";
import { makeDemoModel, DEMO_MODEL_SIZE } from "./make-demo-model";

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  console.log(
    "usage: npm run bench:e2e [-- --tokens N] [--runs R] [--out FILE] [--model DIR]\n" +
      "  Decode tokens/s of the demo model, distributed (ExpertHosts) vs every expert in the Worker.",
  );
  process.exit(0);
}
const { values } = parseArgs({
  options: {
    tokens: { type: "string", default: "32" },
    runs: { type: "string", default: "5" },
    out: { type: "string", default: join("bench-results", "e2e.json") },
    model: { type: "string", default: join(ROOT, "demo-model") },
  },
});
const TOKENS = Number(values.tokens);
const RUNS = Number(values.runs);
const MODEL = "demo-mixtral";
const PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time, in a land far away,";

interface Run {
  prefillMs: number; // request start → first token
  decodeMs: number; // first token → last token
  tokens: number;
}

async function timedStream(w: LocalWorker): Promise<Run> {
  const t0 = performance.now();
  const res = await w.fetch("/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, prompt: PROMPT, max_tokens: TOKENS, temperature: 0, stream: true }),
  });
  if (!res.ok || !res.body) throw new Error(`completion failed: ${res.status} ${await res.text()}`);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let first = 0;
  let last = 0;
  let tokens = 0;
  let buf = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += value;
    let at: number;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, at).replace(/^data: /, "");
      buf = buf.slice(at + 2);
      if (event === "[DONE]") continue;
      const n = (JSON.parse(event) as { choices: { token_ids: number[] }[] }).choices[0]?.token_ids.length ?? 0;
      if (n === 0) continue;
      const now = performance.now();
      if (tokens === 0) first = now;
      last = now;
      tokens += n;
    }
  }
  if (tokens < 2) throw new Error(`expected ${TOKENS} tokens, got ${tokens}`);
  return { prefillMs: first - t0, decodeMs: last - first, tokens };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

console.log(`bench:e2e — demo model, ${TOKENS} greedy tokens × ${RUNS} runs per configuration`);
makeDemoModel(values.model, { log: () => {} });
const configs = {
  distributed: { EXPERT_BACKEND: "durable-objects" },
  single: { EXPERT_BACKEND: "worker", WORKER_EXPERT_BUDGET_MB: "512" },
} as const;
const workers: Record<string, LocalWorker> = {};
try {
  for (const [name, vars] of Object.entries(configs)) {
    const t = performance.now();
    const w = await startLocalWorker({ vars: { ...vars } });
    workers[name] = w;
    await seedModelDir(await w.bucket(), values.model, MODEL);
    await timedStream(w); // warm-up: loads dense weights and every expert
    console.log(`  ${name}: seeded and warmed up in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  }
  const runs: Record<string, Run[]> = { distributed: [], single: [] };
  for (let r = 0; r < RUNS; r++) for (const name of Object.keys(configs)) runs[name].push(await timedStream(workers[name]));

  const placement = (await (await workers.distributed.fetch(`/v1/placement?model=${MODEL}`)).json()) as { instances: unknown[]; n_moe_layers: number };
  const nLayers = placement.n_moe_layers ?? DEMO_MODEL_SIZE.nLayers;
  const summary = Object.fromEntries(
    Object.entries(runs).map(([name, rs]) => {
      const msPerToken = median(rs.map((r) => r.decodeMs / (r.tokens - 1)));
      return [name, { decodeTokensPerSec: 1000 / msPerToken, msPerToken, prefillMs: median(rs.map((r) => r.prefillMs)), runs: rs }];
    }),
  );
  const d = summary.distributed;
  const s = summary.single;
  const fanoutMsPerLayer = (d.msPerToken - s.msPerToken) / nLayers;
  const ratio = d.decodeTokensPerSec / s.decodeTokensPerSec;

  console.log("");
  console.log("| configuration | ExpertHosts | decode tok/s | ms/token | prefill ms (prompt) |");
  console.log("|---|---|---|---|---|");
  console.log(`| distributed (DO fan-out) | ${placement.instances.length} | ${d.decodeTokensPerSec.toFixed(1)} | ${d.msPerToken.toFixed(2)} | ${d.prefillMs.toFixed(0)} |`);
  console.log(`| single isolate (baseline) | 0 | ${s.decodeTokensPerSec.toFixed(1)} | ${s.msPerToken.toFixed(2)} | ${s.prefillMs.toFixed(0)} |`);
  console.log(`\ndistributed / single decode speed: ${ratio.toFixed(3)}×`);
  console.log(`fan-out cost per MoE layer: ${fanoutMsPerLayer.toFixed(3)} ms (${nLayers} layers; one RPC per ExpertHost per layer)`);

  const result = {
    bench: "e2e",
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
    model: { id: MODEL, ...DEMO_MODEL_SIZE },
    tokensPerRun: TOKENS,
    runsPerConfig: RUNS,
    expertHosts: placement.instances.length,
    distributed: d,
    single: s,
    ratioDistributedOverSingle: ratio,
    fanoutMsPerLayer,
    note: "local workerd runs every Durable Object on one thread, so the distributed path gets no parallel speed-up here; see npm run simulate for the cluster-level latency model",
  };
  mkdirSync(dirname(values.out), { recursive: true });
  writeFileSync(values.out, JSON.stringify(result, null, 2));
  console.log(`\nwrote ${values.out}`);
} finally {
  await Promise.all(Object.values(workers).map((w) => w.dispose()));
}
