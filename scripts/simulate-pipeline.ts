/**
 * `npm run simulate:pipeline [-- --wan 20,50,100 --rpc 1]`: chooses where the decode loop runs.
 * For the demo model and granite-3.1-1b-a400m as deployed by the default budgets (the product's
 * planner: src/stages/deployment.ts), prints the per-token latency and tokens/s of each candidate
 * design (scripts/lib/pipeline-model.ts) for Worker↔region round trips of tens of ms and ~1 ms
 * RPCs inside the region. Compute costs are measured here, in Node, with the same Wasm kernels:
 * one token through each layer's dense matmuls, one expert, the output head.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { loadKernels } from "../src/kernels/node";
import type { Kernels } from "../src/kernels/index";
import { parseConfig, type ModelSpec } from "../src/model/config";
import { expertBytesF32 } from "../src/model/architectures";
import { deploymentShape } from "../src/stages/deployment";
import { DESIGNS, tokenCost, type PipelineCosts } from "./lib/pipeline-model";
import { demoModelConfig, DEMO_MODEL_SIZE } from "./lib/demo-model";
import { ROOT } from "./lib/local-worker";
import { createRng, sampleToken } from "../src/serving/sampling";

const USAGE = `usage: npm run simulate:pipeline [-- --wan 20,50,100 --rpc 1]

Per-token latency of each decode-loop design (Worker drives every stage; stage chain; chain that
returns a token; session driver in the region) for the demo model and granite-3.1-1b-a400m, with
the given Worker↔region round trips (ms) and in-region RPC cost (ms); compute costs measured here.`;

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  console.log(USAGE);
  process.exit(0);
}

const { values } = parseArgs({
  options: { wan: { type: "string", default: "20,50,100" }, rpc: { type: "string", default: "1" } },
});
const WANS = values.wan.split(",").map(Number);
const RPC_MS = Number(values.rpc);

/** Median ms of `fn` over enough repetitions to pass ~50 ms of work. */
function time(fn: () => void): number {
  fn();
  const samples: number[] = [];
  for (let r = 0; r < 7; r++) {
    let reps = 0;
    const t0 = performance.now();
    while (performance.now() - t0 < 7) {
      fn();
      reps++;
    }
    samples.push((performance.now() - t0) / reps);
  }
  return samples.sort((a, b) => a - b)[3];
}

/** Time of one token's [1, dIn] × [dOut, dIn]ᵀ matmul. */
function matmulMs(k: Kernels, dIn: number, dOut: number): number {
  const w = k.alloc(dIn * dOut * 4);
  const x = k.alloc(dIn * 4);
  const y = k.alloc(dOut * 4);
  const ms = time(() => k.matmul(y, x, w, 1, dIn, dOut));
  for (const p of [w, x, y]) k.free(p);
  return ms;
}

function measure(k: Kernels, spec: ModelSpec): Omit<PipelineCosts, "wanRttMs" | "rpcMs"> & { topPMs: number } {
  const a = spec.attention;
  const qDim = a.kind === "gqa" ? a.nHeads * a.headDim : spec.nHeads * spec.headDim;
  const kvDim = a.kind === "gqa" ? a.nKvHeads * a.headDim : qDim;
  const d = spec.dModel;
  const denseLayerMs =
    matmulMs(k, d, qDim) + 2 * matmulMs(k, d, kvDim) + matmulMs(k, qDim, d) + matmulMs(k, d, spec.nExperts);
  const expertMs = 2 * matmulMs(k, d, spec.dFf) + matmulMs(k, spec.dFf, d);
  // The head in 8 slices (a whole granite head does not fit one Wasm memory).
  const headMs = 8 * matmulMs(k, d, Math.ceil(spec.vocabSize / 8));
  const rng = createRng(1);
  const logits = new Float32Array(spec.vocabSize).map(() => 4 * rng());
  // Greedy (as bench:e2e decodes); nucleus sampling's sort is reported beside it.
  const sampleMs = time(() => void sampleToken(logits, { temperature: 0, topP: 1 }, rng));
  const topPMs = time(() => void sampleToken(logits, { temperature: 0.7, topP: 0.9 }, rng));
  return { denseLayerMs, expertMs, headMs, sampleMs, topPMs };
}

const k = loadKernels("best", {});
const models: [string, ModelSpec][] = [
  ["demo-mixtral", parseConfig(demoModelConfig(DEMO_MODEL_SIZE))],
  [
    "granite-3.1-1b-a400m",
    parseConfig(
      JSON.parse(readFileSync(join(ROOT, "tests", "fixtures", "configs", "granite-3.1-1b-a400m.json"), "utf8")),
    ),
  ],
];
// The deployment's default budgets (wrangler.toml [vars]).
const toml = readFileSync(join(ROOT, "wrangler.toml"), "utf8");
const vars = Object.fromEntries([...toml.matchAll(/^([A-Z_]+)\s*=\s*"([^"]*)"/gm)].map((m) => [m[1], m[2]]));

console.log(
  `simulate:pipeline — per-token decode latency by design (kernels: ${k.flavor}; in-region RPC ${RPC_MS} ms)\n`,
);
for (const [id, spec] of models) {
  const shape = deploymentShape(spec, vars, expertBytesF32(spec), id);
  const costs = measure(k, spec);
  const where =
    shape.pipeline.stages.length === 0 ? "the Worker runs every layer" : `${shape.pipeline.stages.length} stages`;
  console.log(
    `### ${id}: ${where}, ` +
      `head ${shape.head ? `on ${shape.head.shards.length} HeadHosts` : "in the Worker"}, ` +
      `${shape.expertHosts} ExpertHosts`,
  );
  console.log(
    `measured per token: dense ${costs.denseLayerMs.toFixed(3)} ms/layer, ` +
      `one expert ${costs.expertMs.toFixed(3)} ms, head ${costs.headMs.toFixed(2)} ms, ` +
      `greedy pick ${costs.sampleMs.toFixed(2)} ms ` +
      `(top_p 0.9 sampling: ${costs.topPMs.toFixed(1)} ms, not in the table)\n`,
  );
  console.log(
    "| design | WAN trips/token | region RPCs/token | " +
      `${WANS.map((w) => `ms/token (tok/s) @ ${w} ms WAN`).join(" | ")} |`,
  );
  console.log(`|---|---|---|${WANS.map(() => "---").join("|")}|`);
  for (const des of DESIGNS) {
    if (
      shape.pipeline.stages.length === 0 &&
      des.id !== "session-driver-in-region" &&
      des.id !== "worker-calls-each-stage"
    )
      continue;
    const cells = WANS.map((w) => {
      const t = tokenCost(shape, spec.nLayers, spec.topK, { ...costs, wanRttMs: w, rpcMs: RPC_MS }, des.id);
      return `${t.msPerToken.toFixed(1)} (${(1000 / t.msPerToken).toFixed(1)})`;
    });
    const t0 = tokenCost(shape, spec.nLayers, spec.topK, { ...costs, wanRttMs: WANS[0], rpcMs: RPC_MS }, des.id);
    const label =
      shape.pipeline.stages.length === 0 && des.id === "worker-calls-each-stage"
        ? "Worker runs the layers, fans out over the WAN (today)"
        : des.label;
    console.log(`| ${label} | ${t0.wanTrips} | ${t0.regionTrips} | ${cells.join(" | ")} |`);
  }
  console.log("");
}
