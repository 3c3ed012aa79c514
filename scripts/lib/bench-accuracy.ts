/**
 * @module bench-accuracy — what int8 experts cost in accuracy: the Worker's forward pass
 * (src/serving/forward.ts, dense half in f32) run in Node with routed experts held by two
 * ExpertStores — f32 (packed) and int8 (quantized at load exactly as `convert --quant int8`
 * writes them) — over the same prompts.
 *
 * Reported: max and mean |Δlogit| over every position, the relative logit RMS, and greedy-token
 * agreement: f32 decodes greedily; int8 is fed the same tokens (teacher forcing) and agrees at a
 * position when its argmax is f32's token.
 */
import { ExpertStore } from "../../src/experts/expert-store";
import { q8ActivationBits, type Q8Path } from "../../src/kernels/index";
import { loadKernels } from "../../src/kernels/node";
import { loadDenseWeights, loadExpertWeights, type ExpertWeights } from "../../src/model/architectures";
import { expertFfnRef } from "../../src/kernels/reference";
import type { ModelSpec } from "../../src/model/config";
import type { Checkpoint } from "../../src/model/safetensors";
import { ModelForward, type ExpertRunner } from "../../src/serving/forward";
import type { ModelCheckpoint } from "../../src/platform/model-store";
import { logitAgreement, type LogitSource } from "./logit-agreement";

export interface AccuracyReport {
  model: string;
  prompts: number;
  promptLen: number;
  decoded: number;
  /** Positions compared (prompt positions + decoded positions). */
  positions: number;
  maxAbsLogitErr: number;
  meanAbsLogitErr: number;
  /** ‖Δlogits‖ / ‖logits‖ over all positions. */
  relLogitRms: number;
  /** Fraction of decoded positions where int8's argmax equals f32's greedy token. */
  greedyAgreement: number;
  /** Fraction of all positions (prompt included) with equal argmax. */
  top1Agreement: number;
  int8Path: string;
  bytesF32: number;
  bytesInt8: number;
}

/** Routed experts run by an ExpertStore: one `run` per layer with every (expert, token batch). */
export function storeRunner(store: ExpertStore, spec: ModelSpec): ExpertRunner {
  const { dModel } = spec;
  return async (layer, routing, h) => {
    const { n, topK, ids, weights } = routing;
    const byExpert = new Map<number, number[]>();
    for (let i = 0; i < n * topK; i++) {
      if (ids[i] < 0) continue;
      const list = byExpert.get(ids[i]) ?? [];
      list.push(i);
      byExpert.set(ids[i], list);
    }
    const slots = [...byExpert.values()].flat();
    const items = [...byExpert].map(([expert, list]) => ({ expert, nTokens: list.length }));
    const x = new Float32Array(slots.length * dModel);
    slots.forEach((i, row) => {
      const t = Math.floor(i / topK);
      x.set(h.subarray(t * dModel, (t + 1) * dModel), row * dModel);
    });
    const y = await store.run(layer, items, x);
    const out = new Float32Array(n * dModel);
    slots.forEach((i, row) => {
      const t = Math.floor(i / topK);
      const w = weights[i];
      for (let d = 0; d < dModel; d++) out[t * dModel + d] += w * y[row * dModel + d];
    });
    return out;
  };
}

/** Seeded prompts of token ids in [first, vocab). */
export function randomPrompts(count: number, len: number, vocab: number, seed = 1): number[][] {
  let a = seed >>> 0;
  const next = () => {
    a = (Math.imul(a ^ (a >>> 15), 0x2c1b3c6d) + 0x6b43a9b5) >>> 0;
    return a / 4294967296;
  };
  const first = Math.min(3, vocab - 1); // skip the special ids of HF tokenizers
  return Array.from({ length: count }, () =>
    Array.from({ length: len }, () => first + Math.floor(next() * (vocab - first))),
  );
}

/** A weight format written out in TS: f32 expert matrix w [rows, cols] → its dequantized copy
 * (layer, expert and which matrix, for seeded noise). */
export type WeightTransform = (w: Float32Array, rows: number, cols: number, key: string) => Float32Array;

/** Experts computed by the plain JS reference (f32 activations) on weights passed through
 * `transform`: how a weight format alone costs accuracy, without a Wasm kernel for it. */
export function weightRunner(ckpt: Checkpoint, spec: ModelSpec, transform: WeightTransform): ExpertRunner {
  const { dModel, dFf } = spec;
  const cache = new Map<string, ExpertWeights>();
  return async (layer, r, h) => {
    const out = new Float32Array(r.n * dModel);
    const y = new Float32Array(dModel);
    const scratch = new Float32Array(2 * dFf);
    for (let i = 0; i < r.n * r.topK; i++) {
      if (r.ids[i] < 0) continue;
      const key = `${layer}:${r.ids[i]}`;
      let w = cache.get(key);
      if (!w) {
        const f = await loadExpertWeights(ckpt, spec, layer, r.ids[i]);
        w = {
          w1: transform(f.w1, dFf, dModel, `${key}:w1`),
          w3: transform(f.w3, dFf, dModel, `${key}:w3`),
          w2: transform(f.w2, dModel, dFf, `${key}:w2`),
        };
        cache.set(key, w);
      }
      const t = Math.floor(i / r.topK);
      expertFfnRef(y, h.subarray(t * dModel, (t + 1) * dModel), w.w1, w.w3, w.w2, 1, dModel, dFf, scratch);
      for (let d = 0; d < dModel; d++) out[t * dModel + d] += r.weights[i] * y[d];
    }
    return out;
  };
}

/** Weights rounded to bf16 (nearest even): the accuracy yardstick (bf16 experts are what most MoE
 * checkpoints ship). */
export const bf16Weights: WeightTransform = (a) => {
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  for (let i = 0; i < u.length; i++) u[i] = (((u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16) << 16) >>> 0;
  return a;
};

/** Experts on bf16-rounded weights, by the JS reference (the yardstick row of the tables). */
export function bf16Runner(ckpt: Checkpoint, spec: ModelSpec): ExpertRunner {
  return weightRunner(ckpt, spec, bf16Weights);
}

export async function measureInt8Accuracy(
  name: string,
  spec: ModelSpec,
  ckpt: Checkpoint,
  opts: {
    prompts?: number[][];
    decode?: number;
    q8Path?: Q8Path;
    bf16?: boolean;
    quant?: "int8" | "int8-group" | "int4";
    /** A TS weight format run by the JS reference instead of an ExpertStore (label: how it reports). */
    weights?: { label: string; transform: WeightTransform };
  } = {},
): Promise<AccuracyReport> {
  const prompts = opts.prompts ?? randomPrompts(8, 16, spec.vocabSize);
  const decode = opts.decode ?? 32;
  const model: ModelCheckpoint = { id: name, spec, ckpt };
  const budget = 1 << 30;
  const newKernels = (maxBytes: number) => loadKernels("best", { maxBytes });
  // The int8 path under test: dot_i16x8 (8-bit activations, simd build) or a relaxed dot (7-bit).
  const int8Kernels = (maxBytes: number) =>
    opts.q8Path === "dot_i16x8"
      ? loadKernels("simd", { maxBytes })
      : loadKernels("best", { maxBytes, q8Path: opts.q8Path });
  const f32 = new ExpertStore(model, budget, "f32", newKernels);
  const quant = opts.quant ?? "int8";
  const int8 = new ExpertStore(model, budget, quant, int8Kernels, { quant });
  const k = loadKernels("simd");
  const forward = ModelForward.create(k, spec, await loadDenseWeights(ckpt, spec));
  const runF32 = storeRunner(f32, spec);
  const runInt8 = opts.weights
    ? weightRunner(ckpt, spec, opts.weights.transform)
    : opts.bf16
      ? bf16Runner(ckpt, spec)
      : storeRunner(int8, spec);
  const rng = () => 0.5;
  const side = (run: ExpertRunner): LogitSource => ({
    startSession: (len) => forward.startSession(len),
    endSession: (s) => forward.endSession(s),
    forward: (s, tokens, allLogits) => forward.forward(s, tokens, run, rng, { allLogits }),
  });
  const a = await logitAgreement(side(runF32), side(runInt8), prompts, decode, spec.vocabSize);
  return {
    model: name,
    prompts: prompts.length,
    promptLen: prompts[0]?.length ?? 0,
    decoded: a.decoded,
    positions: a.positions,
    maxAbsLogitErr: a.maxAbs,
    meanAbsLogitErr: a.meanAbs,
    relLogitRms: a.relRms,
    greedyAgreement: a.greedy,
    top1Agreement: a.top1,
    int8Path: opts.weights
      ? opts.weights.label
      : opts.bf16
        ? "bf16 weights (yardstick)"
        : quant === "int4"
          ? "int4 g32"
          : quant === "int8-group"
            ? "int8 g32"
            : int8Kernels(1 << 20).q8Path,
    bytesF32: f32.expertBytes,
    bytesInt8: opts.weights ? Number.NaN : opts.bf16 ? f32.expertBytes / 2 : int8.expertBytes,
  };
}

export function formatAccuracy(r: AccuracyReport): string {
  const experts = r.int8Path.startsWith("bf16")
    ? "bf16 experts (yardstick)"
    : r.int8Path.startsWith("int4")
      ? "int4 experts (groups of 32)"
      : r.int8Path === "int8 g32"
        ? "int8 experts (groups of 32, 16-bit activations)"
        : `int8 experts (${r.int8Path}, ${q8ActivationBits(r.int8Path as Q8Path)}-bit activations)`;
  return (
    `${r.model}: ${experts}, ${((r.bytesInt8 / r.bytesF32) * 100).toFixed(1)}% of f32 bytes, ` +
    `vs f32 over ${r.prompts} prompts × ${r.promptLen} + ${r.decoded / r.prompts} greedy steps — ` +
    `max |Δlogit| ${r.maxAbsLogitErr.toExponential(2)}, mean ${r.meanAbsLogitErr.toExponential(2)}, ` +
    `relative RMS ${(r.relLogitRms * 100).toFixed(2)}%, ` +
    `greedy agreement ${(r.greedyAgreement * 100).toFixed(1)}% (${r.decoded} steps), ` +
    `top-1 agreement ${(r.top1Agreement * 100).toFixed(1)}% (${r.positions} positions)`
  );
}
