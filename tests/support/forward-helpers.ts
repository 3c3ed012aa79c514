/**
 * @module Runs the Worker's forward pass (src/serving/forward.ts) in Node: Wasm kernels from
 * build/, dense weights from an in-memory checkpoint, and routed experts run locally instead of
 * on ExpertHosts (same kernel, same Σ weight · expert(h)).
 */
import { loadKernels } from "../../src/kernels/node";
import type { Kernels } from "../../src/kernels/index";
import { loadDenseEnds, loadDenseWeights, loadExpertWeights, openModel } from "../../src/model/architectures";
import { loadLayer, type LoadStats } from "../../src/model/dense-layers";
import type { DenseFormat } from "../../src/kernels/dense";
import type { ModelSpec } from "../../src/model/config";
import type { Checkpoint } from "../../src/model/safetensors";
import { memoryFileStore } from "../../src/model/safetensors";
import { ModelForward, type ExpertRunner } from "../../src/serving/forward";
import { ROUTING_OFF, type RoutingOptions } from "../../src/gating/router";

/** Routed experts computed in this process with `expertFfn`, loaded on first use. */
export function localExperts(k: Kernels, ckpt: Checkpoint, spec: ModelSpec): ExpertRunner {
  const loaded = new Map<string, { w1: number; w3: number; w2: number }>();
  return async (layer, routing, h) => {
    const { dModel, dFf } = spec;
    const { n, topK, ids, weights } = routing;
    const out = new Float32Array(n * dModel);
    for (let i = 0; i < n * topK; i++) {
      const e = ids[i];
      const key = `${layer}:${e}`;
      let w = loaded.get(key);
      if (!w) {
        const x = await loadExpertWeights(ckpt, spec, layer, e);
        w = { w1: k.allocF32(x.w1), w3: k.allocF32(x.w3), w2: k.allocF32(x.w2) };
        loaded.set(key, w);
      }
      const t = Math.floor(i / topK);
      const xp = k.allocF32(h.subarray(t * dModel, (t + 1) * dModel));
      const yp = k.alloc(dModel * 4);
      const sp = k.alloc(2 * dFf * 4);
      k.expertFfn(yp, xp, w.w1, w.w3, w.w2, 1, dModel, dFf, sp);
      const y = k.f32(yp, dModel);
      for (let d = 0; d < dModel; d++) out[t * dModel + d] += weights[i] * y[d];
      k.free(xp);
      k.free(yp);
      k.free(sp);
    }
    return out;
  };
}

export interface NodeModel {
  spec: ModelSpec;
  ckpt: Checkpoint;
  model: ModelForward;
  experts: ExpertRunner;
}

/** A model directory's files (config.json + safetensors) ready to run in Node. */
export async function nodeModel(
  files: Record<string, Uint8Array>,
  routing: RoutingOptions = ROUTING_OFF,
): Promise<NodeModel> {
  const { spec, ckpt } = await openModel(memoryFileStore(files));
  const k = loadKernels("simd", { maxBytes: 64 * 1024 * 1024 });
  const model = ModelForward.create(k, spec, await loadDenseWeights(ckpt, spec), routing);
  return { spec, ckpt, model, experts: localExperts(k, ckpt, spec) };
}

/**
 * The same model with its layers streamed from the checkpoint by the StageHost's loader
 * (src/model/dense-layers.ts), matrices held as `format`; the ends (embeddings, head) as f32.
 */
export async function nodeModelStreamed(
  files: Record<string, Uint8Array>,
  format: DenseFormat,
  opts: { chunkBytes?: number; stats?: LoadStats; maxBytes?: number } = {},
): Promise<NodeModel> {
  const { spec, ckpt } = await openModel(memoryFileStore(files));
  const k = loadKernels("simd", { maxBytes: opts.maxBytes ?? 64 * 1024 * 1024 });
  const load = (l: number) =>
    loadLayer(k, ckpt, spec, l, { format, chunkBytes: opts.chunkBytes ?? 4096, stats: opts.stats });
  const model = await ModelForward.loadLayers(k, spec, 0, spec.nLayers, load, ROUTING_OFF, {
    ends: await loadDenseEnds(ckpt, spec),
  });
  return { spec, ckpt, model, experts: localExperts(k, ckpt, spec) };
}

/** Logits of every prompt position, then `greedy` tokens decoded one by one over the KV cache. */
export async function runPrompt(m: NodeModel, prompt: number[], greedy = 0, rng: () => number = () => 0.5) {
  const s = m.model.startSession(prompt.length + greedy);
  try {
    const routing: Record<number, number[][]> = {};
    const logits = await m.model.forward(s, prompt, m.experts, rng, {
      allLogits: true,
      onRouting: (layer, r) =>
        (routing[layer] = Array.from({ length: r.n }, (_, t) =>
          Array.from(r.ids.subarray(t * r.topK, (t + 1) * r.topK)),
        )),
    });
    const V = m.spec.vocabSize;
    const rows = Array.from({ length: prompt.length }, (_, t) => logits.subarray(t * V, (t + 1) * V));
    const greedyIds: number[] = [];
    const greedyLogits: Float32Array[] = [];
    let last = rows[rows.length - 1];
    for (let i = 0; i < greedy; i++) {
      const id = argmax(last);
      greedyIds.push(id);
      greedyLogits.push(last);
      if (i + 1 < greedy) last = await m.model.forward(s, [id], m.experts, rng);
    }
    return { logits: rows, routing, greedyIds, greedyLogits };
  } finally {
    m.model.endSession(s);
  }
}

export function argmax(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

export function maxAbsDiff(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  let m = 0;
  for (let i = 0; i < a.length; i++)
    for (let j = 0; j < a[i].length; j++) m = Math.max(m, Math.abs(a[i][j] - Math.fround(b[i][j])));
  return m;
}
