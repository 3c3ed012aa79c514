/**
 * @module A layer's dense weights held in Wasm memory as dense matrices (src/kernels/dense-format.ts):
 * what a StageHost — and the Worker, for the layers it runs itself — keeps. The same tree as
 * `DenseLayerWeights`, with a `DenseMatrix` where each array is (a vector is a 1-row f32 matrix;
 * its `ptr` is the vector).
 *
 * Which format each tensor takes (`slotFormat`): the big matrices (attention projections, dense MLPs,
 * shared experts) in the deployment's format; norms, biases, routers and the shared-expert gate
 * always f32 — a few KiB a layer, and routers in f32 keep the expert ids as exact as the f32 model's.
 *
 * Loading (`loadLayer`) streams each tensor from the checkpoint by ranged reads of ≤ `chunkBytes`,
 * one at a time, through `DenseMatrixWriter`, which allocates each matrix at its exact size before
 * its first byte is read and converts rows as they arrive. So a load's Wasm memory grows by exactly
 * `layerHeldBytes` and its JS memory never holds more than one chunk plus one f32 row and a split
 * value: ≤ chunkBytes + 4·cols + 4 bytes (`LoadStats` records what a load actually used).
 */
import type { Kernels } from "../kernels/index";
import {
  DenseMatrixWriter,
  denseMatrixBytes,
  freeDense,
  rangeChunks,
  type DenseFormat,
  type DenseMatrix,
} from "../kernels/dense";
import { denseLayerPlan, isSlot, slotFloats, type DenseLayerWeights, type Slot } from "./architectures";
import type { ModelSpec } from "./config";
import { ModelFormatError } from "./errors";
import type { Checkpoint } from "./safetensors";

type HeldOf<V> = V extends Float32Array ? DenseMatrix : V extends null ? null : V extends object ? Held<V> : V;
/** A weight tree with a DenseMatrix (in Wasm memory) where each array is. */
export type Held<T> = { [K in keyof T]: HeldOf<T[K]> };
/** One layer's dense weights in Wasm memory. */
export type HeldLayer = Held<DenseLayerWeights>;

/** What a load used (tests, stats): ranged reads, and the most JS memory it held at once. */
export interface LoadStats {
  reads: number;
  bytesRead: number;
  /** Largest single read. */
  maxChunkBytes: number;
  /** Largest chunk + writer scratch (one f32 row and a split value) held together. */
  maxJsScratchBytes: number;
}

export function emptyLoadStats(): LoadStats {
  return { reads: 0, bytesRead: 0, maxChunkBytes: 0, maxJsScratchBytes: 0 };
}

export interface LoadLayerOptions {
  /** Format of the big matrices (norms, biases, routers stay f32). */
  format: DenseFormat;
  /** Bytes per ranged read: bounds the JS memory of the load. */
  chunkBytes: number;
  /** Accumulates what the load used. */
  stats?: LoadStats;
}

/** The bound on a load's JS memory the module comment states: one chunk, one f32 row, a split value. */
export function loadScratchBound(chunkBytes: number, maxCols: number): number {
  return chunkBytes + 4 * maxCols + 4;
}

function rowsCols(s: Slot): { rows: number; cols: number } {
  const cols = s.shape.length === 0 ? 1 : s.shape[s.shape.length - 1];
  return { rows: slotFloats(s) / cols, cols };
}

/**
 * The format a tensor is held in: `format` for matrices, f32 for vectors, routers (`key` "router":
 * exact expert choice) and 1-row matrices (the shared-expert gate).
 */
export function slotFormat(key: string, s: Slot, format: DenseFormat): DenseFormat {
  if (format === "f32" || key === "router" || s.shape.length < 2 || rowsCols(s).rows === 1) return "f32";
  return format;
}

/** Calls `fn` on every slot of a plan tree with its key, rebuilding the tree with the results. */
function mapSlots<R>(plan: unknown, fn: (s: Slot, key: string) => R, key = ""): unknown {
  if (isSlot(plan)) return fn(plan, key);
  if (Array.isArray(plan)) return plan.map((v) => mapSlots(v, fn, key));
  if (typeof plan === "object" && plan !== null) {
    return Object.fromEntries(Object.entries(plan).map(([k, v]) => [k, mapSlots(v, fn, k)]));
  }
  return plan;
}

/** Every slot of layer l with the format it is held in. */
function heldSlots(spec: ModelSpec, l: number, format: DenseFormat, ckpt?: Checkpoint) {
  const out: { slot: Slot; format: DenseFormat; key: string }[] = [];
  const plan = denseLayerPlan(spec, l, ckpt);
  mapSlots(plan, (slot, key) => out.push({ slot, key, format: slotFormat(key, slot, format) }));
  return { plan, slots: out };
}

/** Exact bytes layer l's dense weights take in Wasm memory when its matrices are held as `format`. */
export function layerHeldBytes(spec: ModelSpec, l: number, format: DenseFormat): number {
  return heldSlots(spec, l, format).slots.reduce((n, { slot, format: f }) => {
    const { rows, cols } = rowsCols(slot);
    return n + denseMatrixBytes(rows, cols, f);
  }, 0);
}

/** The widest row of layer l (the loader's f32 row buffer). */
export function layerMaxCols(spec: ModelSpec, l: number): number {
  return Math.max(...heldSlots(spec, l, "f32").slots.map(({ slot }) => rowsCols(slot).cols));
}

/** Frees every matrix of a held tree. */
export function freeHeld(k: Kernels, tree: unknown): void {
  if (isDenseMatrix(tree)) freeDense(k, tree);
  else if (Array.isArray(tree)) for (const v of tree) freeHeld(k, v);
  else if (typeof tree === "object" && tree !== null) for (const v of Object.values(tree)) freeHeld(k, v);
}

function isDenseMatrix(v: unknown): v is DenseMatrix {
  return typeof v === "object" && v !== null && typeof (v as DenseMatrix).ptr === "number" && "format" in v;
}

/**
 * Streams layer l's dense weights from the checkpoint into Wasm memory (shapes checked before any
 * read). On any failure everything this call allocated is freed and the error rethrown — a load
 * that does not fit (MemoryBudgetError) leaves the kernels as they were.
 */
export async function loadLayer(
  k: Kernels,
  ckpt: Checkpoint,
  spec: ModelSpec,
  l: number,
  opts: LoadLayerOptions,
): Promise<HeldLayer> {
  const { plan, slots } = heldSlots(spec, l, opts.format, ckpt);
  const loaded = new Map<Slot, DenseMatrix>();
  try {
    // One tensor at a time, one read at a time: the JS memory bound holds for the whole layer.
    for (const { slot, format } of slots) loaded.set(slot, await loadSlot(k, ckpt, slot, format, opts));
  } catch (err) {
    for (const m of loaded.values()) freeDense(k, m);
    throw err;
  }
  return mapSlots(plan, (slot) => loaded.get(slot)!) as HeldLayer;
}

async function loadSlot(
  k: Kernels,
  ckpt: Checkpoint,
  slot: Slot,
  format: DenseFormat,
  opts: LoadLayerOptions,
): Promise<DenseMatrix> {
  const { rows, cols } = rowsCols(slot);
  const raw = ckpt.rowBytes(slot.tensor, slot.rows?.[0] ?? 0, rows);
  if (raw.dtype !== "F32" && raw.dtype !== "BF16" && raw.dtype !== "F16") {
    throw new ModelFormatError(
      `${raw.source.name}: tensor "${slot.tensor}" is ${raw.dtype}; dense weights must be F32, BF16 or F16`,
      raw.source.name,
      slot.tensor,
    );
  }
  const w = new DenseMatrixWriter(k, { rows, cols, source: raw.dtype, format });
  const stats = opts.stats;
  try {
    for await (const chunk of rangeChunks(raw.source, raw.offset, raw.length, opts.chunkBytes)) {
      if (stats) {
        stats.reads++;
        stats.bytesRead += chunk.length;
        stats.maxChunkBytes = Math.max(stats.maxChunkBytes, chunk.length);
        stats.maxJsScratchBytes = Math.max(stats.maxJsScratchBytes, chunk.length + w.jsScratchBytes);
      }
      w.push(chunk);
    }
    return w.finish();
  } catch (err) {
    w.abort();
    throw err;
  }
}

/**
 * Copies a layer already read as f32 (JS arrays) into Wasm memory as f32 matrices, shaped by the
 * config: for callers that hold the weights in JS anyway (tests, benchmarks, `ModelForward.create`).
 */
export function holdLayer(k: Kernels, spec: ModelSpec, l: number, w: DenseLayerWeights): HeldLayer {
  const plan = denseLayerPlan(spec, l);
  const held: DenseMatrix[] = [];
  const walk = (p: unknown, v: unknown): unknown => {
    if (isSlot(p)) {
      const { rows, cols } = rowsCols(p);
      const a = v as Float32Array;
      if (a.length !== rows * cols) throw new RangeError(`${p.tensor}: ${a.length} values, expected ${rows * cols}`);
      const bytes = denseMatrixBytes(rows, cols, "f32");
      const ptr = k.alloc(bytes);
      k.u8(ptr + bytes - 16, 16).fill(0); // the rounded-up tail, as the loader leaves it
      k.f32(ptr, a.length).set(a);
      const m: DenseMatrix = { ptr, rows, cols, format: "f32", group: 0, bytes };
      held.push(m);
      return m;
    }
    if (Array.isArray(p)) return p.map((x, i) => walk(x, (v as unknown[])[i]));
    if (typeof p === "object" && p !== null) {
      const src = v as Record<string, unknown>;
      return Object.fromEntries(Object.entries(p).map(([key, x]) => [key, walk(x, src[key])]));
    }
    return p;
  };
  try {
    return walk(plan, w) as HeldLayer;
  } catch (err) {
    for (const m of held) freeDense(k, m);
    throw err;
  }
}
