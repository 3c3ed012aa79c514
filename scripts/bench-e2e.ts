/**
 * `npm run bench:e2e [-- --model ID --dir DIR --tokens N --runs R --configs a,b,c --out FILE]`:
 * decode speed of one model in real workerd, several deployments of it running at once and
 * measured alternately in the same run:
 *  - distributed: as deployed (the Worker runs the dense layers when they fit, else pipeline
 *    stages + head shards; routed experts on ExpertHosts, one RPC per instance per MoE layer);
 *  - single: every expert inside the Worker isolate (EXPERT_BACKEND = "worker"), the
 *    no-distribution baseline (demo only: ~200 MB of experts no production isolate could hold);
 *  - pipelined: the layers forced onto StageHosts (--stages, default one per layer) and the head
 *    onto --head-shards HeadHosts, the decode loop on a session driver in the region.
 * Prints decode tokens/s, prefill time, RPCs per token (the design's count, src/stages/rpc-count.ts:
 * Worker↔region and in-region) and the per-token fan-out cost against the single-isolate baseline;
 * writes a JSON result. `--model demo-mixtral` (default) builds the demo with make-demo-model;
 * another id needs `--dir` (a model directory: config.json, safetensors, tokenizer), and gets the
 * stage budgets its f32 dense layers need (scripts/lib/serve-vars.ts). Expert RPCs per token are
 * also measured: the fan-out counters of /metrics over the timed runs, per processed token (prompt
 * tokens included; a prompt chunk's tokens share their calls, so decoding alone costs more).
 * Beside wall-clock ms/token it reports the CPU each decoded token cost the deployment's workerd
 * (Linux /proc; every isolate and Durable Object of it): a 1-token request runs after each timed
 * one, and (CPU of the full request − CPU of the 1-token one) / (tokens − 1) is the decode share —
 * steadier than wall-clock on a machine other jobs share. `--batching on|off` overrides BATCHING
 * for every configuration (default: wrangler.toml's).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { ADMIN_TOKEN_FOR_TESTS, startLocalWorker, ROOT, type LocalWorker } from "./lib/local-worker";
import { localRuntimeVars, serveVarsFor } from "./lib/serve-vars";
import { seedModelDir } from "./lib/seed-lib";
import { progressBar } from "./lib/progress";
import { makeDemoModel } from "./lib/demo-model";
import { parseConfig } from "../src/model/config";
import { expertBytesF32 } from "../src/model/architectures";
import { deploymentShape } from "../src/stages/deployment";
import { countRpcs } from "../src/stages/rpc-count";

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  console.log(
    "usage: npm run bench:e2e [-- --tokens N] [--runs R] [--out FILE] [--model ID --dir DIR]\n" +
      "                         [--configs distributed,single,pipelined] [--stages N] [--head-shards M]\n" +
      "  Decode tokens/s of a model in local workerd (default the demo: distributed vs every expert in\n" +
      "  the Worker vs pipelined), RPCs per token (design count and measured expert RPCs), prefill.\n" +
      "  Another model: --model ID --dir DIR (e.g. a make-model directory; only `distributed` by default).\n" +
      "  --batching on|off: BATCHING for every configuration (default wrangler.toml's). Reports workerd CPU\n" +
      "  ms per decoded token beside wall-clock ms/token (Linux).",
  );
  process.exit(0);
}
const { values } = parseArgs({
  options: {
    tokens: { type: "string", default: "32" },
    runs: { type: "string", default: "5" },
    out: { type: "string", default: join("bench-results", "e2e.json") },
    model: { type: "string", default: "demo-mixtral" },
    dir: { type: "string" },
    configs: { type: "string" },
    stages: { type: "string" },
    "head-shards": { type: "string", default: "2" },
    batching: { type: "string" },
  },
});
const TOKENS = Number(values.tokens);
const RUNS = Number(values.runs);
const MODEL = values.model;
const DIR = values.dir ?? (MODEL === "demo-mixtral" ? join(ROOT, "demo-model") : null);
if (!DIR) {
  console.error(`--model ${MODEL}: give its directory with --dir (config.json, safetensors, tokenizer files)`);
  process.exit(2);
}
if (values.batching !== undefined && values.batching !== "on" && values.batching !== "off") {
  console.error(`--batching must be "on" or "off", got "${values.batching}"`);
  process.exit(2);
}
const TEXT_PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time, in a land far away,";

interface Run {
  prefillMs: number; // request start → first token
  decodeMs: number; // first token → last token
  tokens: number;
  /** CPU ms the deployment's workerd used during the request (null without /proc). */
  cpuMs: number | null;
}

async function timedStream(w: LocalWorker, prompt: string | number[], maxTokens = TOKENS): Promise<Run> {
  const cpu0 = w.cpuMs();
  const t0 = performance.now();
  const res = await w.fetch("/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, prompt, max_tokens: maxTokens, temperature: 0, stream: true }),
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
      const parsed = JSON.parse(event) as { choices?: { token_ids: number[] }[]; error?: { message: string } };
      if (parsed.error) throw new Error(`stream failed: ${parsed.error.message}`);
      const n = parsed.choices?.[0]?.token_ids.length ?? 0;
      if (n === 0) continue;
      const now = performance.now();
      if (tokens === 0) first = now;
      last = now;
      tokens += n;
    }
  }
  if (tokens < Math.min(2, maxTokens)) throw new Error(`expected ${maxTokens} tokens, got ${tokens}`);
  const cpu1 = w.cpuMs();
  return {
    prefillMs: first - t0,
    decodeMs: last - first,
    tokens,
    cpuMs: cpu0 === null || cpu1 === null ? null : cpu1 - cpu0,
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

if (MODEL === "demo-mixtral" && !values.dir) makeDemoModel(DIR, { log: () => {} });
const spec = parseConfig(JSON.parse(readFileSync(join(DIR, "config.json"), "utf8")));
const prompt: string | number[] = existsSync(join(DIR, "tokenizer.json"))
  ? TEXT_PROMPT
  : Array.from({ length: 20 }, (_, i) => (i * 7919 + 11) % spec.vocabSize);
const STAGES = values.stages ?? String(spec.nLayers);
const ALL: Record<string, Record<string, string>> = {
  distributed: { EXPERT_BACKEND: "durable-objects" },
  single: { EXPERT_BACKEND: "worker", WORKER_EXPERT_BUDGET_MB: "512" },
  pipelined: { EXPERT_BACKEND: "durable-objects", PIPELINE_STAGES: STAGES, HEAD_SHARDS: values["head-shards"] },
};
const names = (values.configs ?? (MODEL === "demo-mixtral" ? "distributed,single,pipelined" : "distributed")).split(
  ",",
);
for (const n of names)
  if (!ALL[n]) throw new Error(`--configs: unknown configuration "${n}" (known: ${Object.keys(ALL).join(", ")})`);
const toml = readFileSync(join(ROOT, "wrangler.toml"), "utf8");
const defaults = Object.fromEntries([...toml.matchAll(/^([A-Z_]+)\s*=\s*"([^"]*)"/gm)].map((m) => [m[1], m[2]]));
const serve = serveVarsFor(spec, defaults);
// A --dir model is a real-shape one: its hosts share this one local process (see serve-vars.ts).
const local = values.dir !== undefined ? localRuntimeVars() : { vars: {}, reasons: [] };
for (const r of [...serve.reasons, ...local.reasons]) console.log(`vars: ${r}`);
const batching: Record<string, string> = values.batching === undefined ? {} : { BATCHING: values.batching };
// Every run sends the same prompt: with prefix sharing the prompt would be copied from the previous
// run's kept donor, and the prefill time and RPCs per processed token would measure the copy.
const noSharing = { PREFIX_SHARING: "off" };
const configs = Object.fromEntries(
  names.map((n) => [n, { ...serve.vars, ...local.vars, ...ALL[n], ...batching, ...noSharing }]),
);

/** Sum of a counter's series in /metrics (every label set). */
async function counter(w: LocalWorker, name: string): Promise<number> {
  const res = await w.fetch("/metrics", { headers: { authorization: `Bearer ${ADMIN_TOKEN_FOR_TESTS}` } });
  if (!res.ok) throw new Error(`/metrics: ${res.status}`);
  let sum = 0;
  for (const line of (await res.text()).split("\n"))
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `))
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  return sum;
}
/** Expert RPCs and MoE-layer tokens so far (the isolates flush at most once a second). */
async function fanOut(w: LocalWorker): Promise<{ rpcs: number; layerTokens: number }> {
  await new Promise((r) => setTimeout(r, 1500));
  return {
    rpcs: await counter(w, "edge_moe_expert_rpcs_total"),
    layerTokens: await counter(w, "edge_moe_expert_layer_tokens_total"),
  };
}

console.log(`bench:e2e — ${MODEL}, ${TOKENS} greedy tokens × ${RUNS} runs per configuration (${names.join(", ")})`);
const workers: Record<string, LocalWorker> = {};
try {
  for (const [name, vars] of Object.entries(configs)) {
    const t = performance.now();
    const w = await startLocalWorker({ vars: { ...vars, DEFAULT_MODEL: MODEL } });
    workers[name] = w;
    await seedModelDir(await w.bucket(), DIR, MODEL);
    await timedStream(w, prompt); // warm-up: loads dense weights, stages, head shards and every expert
    console.log(`  ${name}: seeded and warmed up in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  }
  const runs: Record<string, Run[]> = Object.fromEntries(names.map((n) => [n, []]));
  const oneToken: Record<string, Run[]> = Object.fromEntries(names.map((n) => [n, []]));
  const before = Object.fromEntries(await Promise.all(names.map(async (n) => [n, await fanOut(workers[n])] as const)));
  // The timed runs, interleaved across configurations (stderr bar on a terminal only).
  const bar = progressBar("bench:e2e timed runs", RUNS * names.length);
  for (let r = 0; r < RUNS; r++) {
    for (const [i, name] of names.entries()) {
      runs[name].push(await timedStream(workers[name], prompt));
      bar.update(r * names.length + i + 1);
    }
  }
  bar.stop();
  const after = Object.fromEntries(await Promise.all(names.map(async (n) => [n, await fanOut(workers[n])] as const)));
  // The prefill's CPU, subtracted from a full run's for the decode share: 1-token requests, after the
  // RPC counters were read (their prompt-only calls would skew the RPCs per token).
  for (let r = 0; r < RUNS; r++)
    for (const name of names) oneToken[name].push(await timedStream(workers[name], prompt, 1));

  const moeLayers = spec.moeLayers.length;
  const summary = Object.fromEntries(
    await Promise.all(
      names.map(async (name) => {
        const rs = runs[name];
        const msPerToken = median(rs.map((r) => r.decodeMs / (r.tokens - 1)));
        const cpuFull = rs.map((r) => r.cpuMs).filter((c): c is number => c !== null);
        const cpuOne = oneToken[name].map((r) => r.cpuMs).filter((c): c is number => c !== null);
        const cpuMsPerToken =
          cpuFull.length > 0 && cpuOne.length > 0
            ? (median(cpuFull) - median(cpuOne)) / (median(rs.map((r) => r.tokens)) - 1)
            : null;
        const placement = (await (await workers[name].fetch(`/v1/placement?model=${MODEL}`)).json()) as {
          instances: unknown[];
        };
        const shape = deploymentShape(spec, { ...defaults, ...configs[name] }, expertBytesF32(spec), MODEL);
        const rpcs = countRpcs(
          { ...shape.rpcInput, expertHosts: placement.instances.length },
          typeof prompt === "string" ? 24 : prompt.length,
          TOKENS,
        ).perToken;
        const where = {
          expertHosts: name === "single" ? 0 : placement.instances.length,
          stages: shape.pipeline.stages.length,
          headShards: shape.head?.shards.length ?? 0,
        };
        // Every token (prompt and generated) passes every MoE layer once: RPCs per layer-token × layers.
        const rpcDelta = after[name].rpcs - before[name].rpcs;
        const tokDelta = after[name].layerTokens - before[name].layerTokens;
        const measuredExpertRpcsPerToken = tokDelta > 0 ? (rpcDelta / tokDelta) * moeLayers : null;
        return [
          name,
          {
            decodeTokensPerSec: 1000 / msPerToken,
            msPerToken,
            cpuMsPerToken,
            prefillMs: median(rs.map((r) => r.prefillMs)),
            rpcsPerToken: rpcs,
            measuredExpertRpcsPerToken,
            ...where,
            runs: rs,
          },
        ] as const;
      }),
    ),
  );
  const single = summary.single;
  console.log("");
  console.log(
    "| configuration | ExpertHosts | stages | head shards | decode tok/s | ms/token | CPU ms/token | prefill ms | " +
      "RPCs/token Worker↔region | RPCs/token in region | expert RPCs/token measured | fan-out ms/token vs single |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const [name, x] of Object.entries(summary)) {
    const fan = single && name !== "single" ? (x.msPerToken - single.msPerToken).toFixed(2) : "—";
    const rp = name === "single" ? { worker: 0, inRegion: 0 } : x.rpcsPerToken;
    console.log(
      `| ${name} | ${x.expertHosts} | ${x.stages} | ${x.headShards} | ${x.decodeTokensPerSec.toFixed(1)} | ` +
        `${x.msPerToken.toFixed(2)} | ${x.cpuMsPerToken?.toFixed(2) ?? "—"} | ${x.prefillMs.toFixed(0)} | ` +
        `${rp.worker} | ${rp.inRegion} | ` +
        `${x.measuredExpertRpcsPerToken?.toFixed(1) ?? "—"} | ${fan} |`,
    );
  }
  const ratios: Record<string, number> = {};
  if (single) {
    for (const [name, x] of Object.entries(summary)) {
      if (name === "single") continue;
      ratios[name] = x.decodeTokensPerSec / single.decodeTokensPerSec;
      const cpuRatio =
        x.cpuMsPerToken && single.cpuMsPerToken
          ? `; CPU per token single / ${name}: ${(single.cpuMsPerToken / x.cpuMsPerToken).toFixed(3)}×`
          : "";
      console.log(
        `${name} / single decode speed: ${ratios[name].toFixed(3)}×${cpuRatio}; ` +
          `fan-out per MoE layer: ${((x.msPerToken - single.msPerToken) / moeLayers).toFixed(3)} ms ` +
          `(${moeLayers} MoE layers)`,
      );
    }
  }

  const result = {
    bench: "e2e",
    date: new Date().toISOString(),
    machine: {
      cpus: cpus().length,
      cpu: cpus()[0]?.model,
      memGiB: Math.round(totalmem() / 2 ** 30),
      node: process.version,
    },
    model: {
      id: MODEL,
      nLayers: spec.nLayers,
      moeLayers,
      dModel: spec.dModel,
      nExperts: spec.nExperts,
      topK: spec.topK,
      vocabSize: spec.vocabSize,
    },
    tokensPerRun: TOKENS,
    batching: values.batching ?? defaults.BATCHING ?? null,
    loadAverage: loadavg().map((x) => Number(x.toFixed(2))),
    runsPerConfig: RUNS,
    configurations: summary,
    ratiosOverSingle: ratios,
    note:
      "local workerd runs every Durable Object on one thread and has no network latency; " +
      "RPCs per token are the design's count (src/stages/rpc-count.ts); " +
      "npm run simulate:pipeline models the Worker↔region latency",
  };
  mkdirSync(dirname(values.out), { recursive: true });
  writeFileSync(values.out, JSON.stringify(result, null, 2));
  console.log(`\nwrote ${values.out}`);
} finally {
  await Promise.all(Object.values(workers).map((w) => w.dispose()));
}
