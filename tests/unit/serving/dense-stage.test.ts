/**
 * Stage layers held as dense matrices and loaded by streaming ranged reads (src/model/dense-layers.ts,
 * what StageHost runs): f32 through the loader is bit for bit the f32 model of `ModelForward.create`;
 * bf16 and int8 groups stay close to it, with exact byte accounting; a load's JS memory stays within
 * one read chunk + one f32 row and its Wasm memory grows by exactly the held bytes (no transient
 * copy); a load that does not fit fails before reading and frees what it took.
 */
import { describe, expect, it } from "vitest";
import { MemoryBudgetError } from "../../../src/kernels/index";
import { loadKernels } from "../../../src/kernels/node";
import { denseLayerBytes, openModel } from "../../../src/model/architectures";
import {
  emptyLoadStats,
  freeHeld,
  layerHeldBytes,
  layerMaxCols,
  loadLayer,
  loadScratchBound,
} from "../../../src/model/dense-layers";
import { Checkpoint, memoryFileStore, type FileStore } from "../../../src/model/safetensors";
import { buildTensors, checkpointFiles } from "../../support/family-checkpoints";
import {
  DEEPSEEK_V2_LITE,
  DEEPSEEK_V3,
  GRANITE_MOE,
  GRANITE_MOE_SHARED,
  QWEN2_MOE,
  QWEN3_MOE,
  type Config,
} from "../../support/family-configs";
import { maxAbsDiff, nodeModel, nodeModelStreamed, runPrompt } from "../../support/forward-helpers";

const FAMILIES: [string, Config][] = [
  ["qwen2_moe (qkv bias, gated shared expert)", QWEN2_MOE],
  ["qwen3_moe (q/k norm)", QWEN3_MOE],
  ["granitemoe (multipliers)", GRANITE_MOE],
  ["granitemoeshared", GRANITE_MOE_SHARED],
  ["deepseek_v3 (MLA, a dense layer)", DEEPSEEK_V3],
  ["deepseek_v2 (MLA without q LoRA)", DEEPSEEK_V2_LITE],
];
const PROMPT = [3, 17, 42, 8, 91, 5, 60];

/** Largest |Δ logit| relative to the largest |logit|. */
function relDiff(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  const scale = Math.max(1e-6, ...b.map((row) => Math.max(...Array.from(row, Math.abs))));
  return maxAbsDiff(a, b) / scale;
}

describe.each(FAMILIES)("%s: layers streamed into dense matrices", (_name, cfg) => {
  const files = checkpointFiles(cfg, buildTensors(cfg));

  it("f32: logits and greedy tokens bit for bit those of ModelForward.create", async () => {
    const ref = await runPrompt(await nodeModel(files), PROMPT, 3);
    const got = await runPrompt(await nodeModelStreamed(files, "f32", { chunkBytes: 1000 }), PROMPT, 3);
    expect(maxAbsDiff(got.logits, ref.logits)).toBe(0);
    expect(got.greedyIds).toEqual(ref.greedyIds);
    expect(got.routing).toEqual(ref.routing);
  });

  it.each(["bf16", "int8"] as const)("%s: close to f32, bytes exactly as planned", async (format) => {
    const ref = await runPrompt(await nodeModel(files), PROMPT, 0);
    const m = await nodeModelStreamed(files, format);
    const got = await runPrompt(m, PROMPT, 0);
    const { spec } = m;
    const planned = spec.layers.reduce((n, _, l) => n + layerHeldBytes(spec, l, format), 0);
    expect(m.model.heldBytes).toBe(planned);
    // Random N(0, 0.2) weights, 2-3 layers: the matmul errors (bf16 ~2e-3, int8 ~6e-3 relative) compound.
    expect(relDiff(got.logits, ref.logits)).toBeLessThan(format === "bf16" ? 0.02 : 0.05);
    expect(relDiff(got.logits, ref.logits)).toBeGreaterThan(0);
  });
});

/** A FileStore that reports every read (length and the kernels' bytes in use when it was issued). */
function watched(store: FileStore, onRead: (length: number) => void): FileStore {
  return {
    label: store.label,
    async open(name) {
      const f = await store.open(name);
      if (!f) return null;
      return {
        name: f.name,
        size: () => f.size(),
        read: async (offset, length) => {
          onRead(length);
          return f.read(offset, length);
        },
      };
    },
  };
}

describe("stage load peak (granite-shaped layer, hidden 256, intermediate 512)", () => {
  const cfg: Config = {
    ...GRANITE_MOE,
    hidden_size: 256,
    intermediate_size: 512,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    num_hidden_layers: 2,
    vocab_size: 64,
  };
  const files = checkpointFiles(cfg, buildTensors(cfg));
  const CHUNK = 16 * 1024;

  it.each(["f32", "bf16", "int8"] as const)(
    "%s: JS scratch ≤ one chunk + one f32 row; Wasm grows by exactly the held bytes",
    async (format) => {
      const k = loadKernels("simd", { maxBytes: 64 * 1024 * 1024 });
      const reads: { length: number; inUse: number }[] = [];
      let loading = false;
      const store = watched(memoryFileStore(files), (length) => {
        if (loading) reads.push({ length, inUse: k.bytesInUse });
      });
      const { spec } = await openModel(memoryFileStore(files));
      const ckpt = await Checkpoint.open(store);
      const before = k.bytesInUse;
      const stats = emptyLoadStats();
      loading = true;
      const layer = await loadLayer(k, ckpt, spec, 1, { format, chunkBytes: CHUNK, stats });
      loading = false;
      const held = layerHeldBytes(spec, 1, format);
      const f32Layer = denseLayerBytes(spec, 1);
      const bound = loadScratchBound(CHUNK, layerMaxCols(spec, 1));
      if (format !== "f32") expect(held).toBeLessThan(f32Layer * (format === "bf16" ? 0.55 : 0.35));
      // What the loader held in JS at once, measured, against the stated bound — and far below the
      // whole layer as f32 JS arrays, which the previous loader built before copying into Wasm.
      expect(stats.maxJsScratchBytes).toBeLessThanOrEqual(bound);
      expect(stats.maxChunkBytes).toBeLessThanOrEqual(CHUNK);
      expect(bound).toBeLessThan(f32Layer / 10);
      expect(stats.bytesRead).toBe(reads.reduce((n, r) => n + r.length, 0));
      expect(stats.reads).toBe(reads.length);
      for (const r of reads) {
        expect(r.length).toBeLessThanOrEqual(CHUNK);
        expect(r.inUse - before).toBeLessThanOrEqual(held); // no transient Wasm copy
      }
      expect(k.bytesInUse - before).toBe(held);
      freeHeld(k, layer);
      expect(k.bytesInUse).toBe(before);
    },
  );

  it("a layer that does not fit fails before reading its tensor and frees what it took", async () => {
    const { spec, ckpt } = await openModel(memoryFileStore(files));
    const held = layerHeldBytes(spec, 1, "int8");
    const k = loadKernels("simd", { maxBytes: Math.floor(held / 2) });
    const before = k.bytesInUse;
    await expect(loadLayer(k, ckpt, spec, 1, { format: "int8", chunkBytes: CHUNK })).rejects.toBeInstanceOf(
      MemoryBudgetError,
    );
    expect(k.bytesInUse).toBe(before);
  });
});
