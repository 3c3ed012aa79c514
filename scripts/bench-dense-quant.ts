/**
 * `npm run bench:dense-quant -- <model-dir>... [--prompts 4] [--len 16] [--decode 24] [--speed-only]`:
 * what DENSE_QUANT costs — the stage layers of each model held as f32, bf16 and int8 groups of 64,
 * loaded by the StageHost's streaming loader (src/model/dense-layers.ts), run by the same forward
 * pass (src/serving/forward.ts) in Node.
 *
 * Accuracy (models whose embeddings and head fit one Wasm memory): the ends stay f32, routed experts
 * f32 (an ExpertStore), and each format is compared with f32 over seeded prompts — max and mean
 * |Δlogit|, relative logit RMS, top-1 agreement at every position and teacher-forced greedy agreement
 * (f32 decodes greedily; the other format is fed the same tokens and agrees when its argmax is f32's).
 * Speed: CPU time of one decode step through the layers alone (attention, norms, router, shared
 * experts, dense MLPs; routed experts returned as zeros), median over steps, and the layers' bytes.
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { ExpertStore } from "../src/experts/expert-store";
import type { DenseFormat } from "../src/kernels/dense";
import { WASM_MAX_BYTES } from "../src/kernels/index";
import { loadKernels } from "../src/kernels/node";
import { denseEndsBytes, loadDenseEnds, openModel } from "../src/model/architectures";
import { layerHeldBytes, loadLayer } from "../src/model/dense-layers";
import type { ModelSpec } from "../src/model/config";
import type { Checkpoint } from "../src/model/safetensors";
import { ModelForward, type ExpertRunner } from "../src/serving/forward";
import { dirFileStore } from "./lib/dir-store";
import { randomPrompts, storeRunner } from "./lib/bench-accuracy";
import { logitAgreement, type LogitSource } from "./lib/logit-agreement";

const USAGE = `usage: npm run bench:dense-quant -- <model-dir>... [--prompts 4] [--len 16] [--decode 24] [--speed-only]
  Stage layers as f32 / bf16 / int8 (groups of 64) vs f32: logit error, top-1 and greedy agreement
  (models whose ends fit one Wasm memory), decode CPU ms per token through the layers, bytes held.`;

const FORMATS: DenseFormat[] = ["f32", "bf16", "int8"];
const ROUNDS = 5;

async function build(spec: ModelSpec, ckpt: Checkpoint, format: DenseFormat, ends: boolean) {
  const k = loadKernels("best", { maxBytes: WASM_MAX_BYTES });
  const load = (l: number) => loadLayer(k, ckpt, spec, l, { format, chunkBytes: 1 << 20 });
  return ModelForward.loadLayers(k, spec, 0, spec.nLayers, load, undefined, {
    ends: ends ? await loadDenseEnds(ckpt, spec) : null,
  });
}

/** Teacher-forced agreement of `m` with `ref` (f32), same routed experts on both sides. */
function accuracy(ref: ModelForward, m: ModelForward, experts: ExpertRunner, prompts: number[][], decode: number) {
  const rng = () => 0.5;
  const side = (f: ModelForward): LogitSource => ({
    startSession: (len) => f.startSession(len),
    endSession: (s) => f.endSession(s),
    forward: (s, tokens, allLogits) => f.forward(s, tokens, experts, rng, { allLogits }),
  });
  return logitAgreement(side(ref), side(m), prompts, decode, ref.spec.vocabSize);
}

/** Median CPU ms of one decode step through the layers alone (routed experts as zeros). */
async function layerSpeed(m: ModelForward, steps: number): Promise<number> {
  const { dModel } = m.spec;
  const zeros: ExpertRunner = async (_l, r) => new Float32Array(r.n * dModel);
  const s = m.startSession(steps + 8);
  const x = new Float32Array(8 * dModel).map((_, i) => Math.sin(i * 0.37));
  const times: number[] = [];
  try {
    await m.layers(s, x, zeros, () => 0.5);
    for (let i = 0; i < steps; i++) {
      const t0 = process.cpuUsage();
      await m.layers(s, x.subarray(0, dModel), zeros, () => 0.5);
      const t = process.cpuUsage(t0);
      times.push((t.user + t.system) / 1000);
    }
  } finally {
    m.endSession(s);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      prompts: { type: "string", default: "4" },
      len: { type: "string", default: "16" },
      decode: { type: "string", default: "24" },
      "speed-only": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help || positionals.length === 0) {
    console.log(USAGE);
    process.exit(values.help ? 0 : 2);
  }
  const nPrompts = Number(values.prompts);
  const len = Number(values.len);
  const decode = Number(values.decode);
  for (const dir of positionals) {
    const { spec, ckpt } = await openModel(dirFileStore(resolve(dir)));
    const withEnds = !values["speed-only"] && denseEndsBytes(spec) <= 64 * 2 ** 20;
    console.log(`\n${dir}: ${spec.nLayers} layers, dModel ${spec.dModel}, ${spec.arch}`);
    const ref = await build(spec, ckpt, "f32", withEnds);
    const experts = withEnds
      ? storeRunner(
          new ExpertStore({ id: dir, spec, ckpt }, 1 << 30, "f32", (b) => loadKernels("best", { maxBytes: b })),
          spec,
        )
      : null;
    const prompts = randomPrompts(nPrompts, len, spec.vocabSize);
    const models = new Map<DenseFormat, ModelForward>([["f32", ref]]);
    for (const f of FORMATS) if (f !== "f32") models.set(f, await build(spec, ckpt, f, withEnds));
    // Formats alternate round by round (a shared machine's load drifts); the best round counts.
    const best = new Map<DenseFormat, number>();
    for (let round = 0; round < ROUNDS; round++) {
      for (const f of FORMATS) {
        const ms = await layerSpeed(models.get(f)!, 30);
        best.set(f, Math.min(best.get(f) ?? Infinity, ms));
      }
    }
    for (const format of FORMATS) {
      const m = models.get(format)!;
      const bytes = spec.layers.reduce((n, _, l) => n + layerHeldBytes(spec, l, format), 0);
      const ms = best.get(format)!;
      let line =
        `  ${format.padEnd(5)} layers ${(bytes / 2 ** 20).toFixed(2)} MiB, ` +
        `decode ${ms.toFixed(3)} ms/token (CPU, ${(best.get("f32")! / ms).toFixed(2)}× f32)`;
      if (experts && format !== "f32") {
        const a = await accuracy(ref, m, experts, prompts, decode);
        line +=
          ` | vs f32: max |Δlogit| ${a.maxAbs.toExponential(2)}, mean ${a.meanAbs.toExponential(2)}, ` +
          `rel RMS ${(a.relRms * 100).toFixed(3)}%, top-1 ${(a.top1 * 100).toFixed(1)}% (${a.positions}), ` +
          `greedy ${(a.greedy * 100).toFixed(1)}% (${a.decoded})`;
      }
      console.log(line);
    }
  }
}

await main();
