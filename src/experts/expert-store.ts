/**
 * @module Experts held in Wasm memory: loads an expert's weights from the checkpoint (R2) once,
 * packs them into the layout the kernels stream best (src/kernels/packing.ts: f32 panels, or int8
 * panels with per-row scales), refuses to grow past a byte budget, and runs (expert, token batch)
 * work items with one fused SwiGLU kernel call per chunk. The ExpertHost DO wraps one store; the
 * Worker's single-isolate backend (EXPERT_BACKEND = "worker", the baseline of bench:e2e) uses one
 * too. A store spreads over several Wasm memories ("arenas") when its budget is larger than one
 * memory may grow (WASM_MAX_BYTES).
 *
 * The budget counts the real bytes of the stored dtype (expertStoredBytes): an int8 expert takes
 * ≈ 1/4 of an f32 one, an int4 one (4-bit groups of 32 with bf16 scales) ≈ 1/7. Experts are
 * int8 / int4 when the checkpoint stores them so, or when the store is created with
 * `quant: "int8"` / `"int4"` (quantized at load, as scripts/convert.ts --quant would).
 *
 * Sliced experts (./slices.ts): when an expert is larger than the host budget (or EXPERT_SLICES
 * forces it) the store holds units — slice s of expert e is unit e·S + s — each loaded by ranged
 * reads of only its slice (src/model/expert-slices.ts) and run as an expert of the slice's
 * intermediate size. The budget counts each slice's real bytes.
 */
import type { Kernels } from "../kernels/index";
import { WASM_MAX_BYTES } from "../kernels/index";
import { expertPackedBytes, packExpertQ8, type ExpertDtype } from "../kernels/packing";
import { f32Rows, packExpertF32Into } from "../kernels/pack-expert";
import { readExpertRows, type ExpertRows } from "../model/expert-rows";
import {
  expertDtype,
  loadExpertQ4,
  loadExpertQ8,
  loadExpertQ8g,
  packExpertQ8gMatrices,
  type ExpertQuant,
} from "../model/quantized";
import { expertQ4gScratchBytes, packExpertQ4g, Q4_GROUP } from "../kernels/q4g-format";
import { expertQ8gScratchBytes } from "../kernels/dense-format";
import { Q8_EXPERT_GROUP } from "../kernels/packing";
import { formatMiB } from "../platform/format";
import { isModelChanged, type ModelCheckpoint } from "../platform/model-store";
import {
  loadExpertSliceQ4,
  loadExpertSliceQ8,
  loadExpertSliceQ8g,
  loadExpertSliceWeights,
  type SliceBounds,
} from "../model/expert-slices";
import type { ModelSpec } from "../model/config";
import { chooseSlices, maxSliceBytes, sliceRange, unitExpert } from "./slices";
import { expertKey, type ExpertFailure, type ExpertRef, type ExpertWorkItem } from "./protocol";

/** Tokens per kernel call: bounds the scratch memory ([chunk, dFf] × 2) whatever the prompt length. */
export const TOKEN_CHUNK = 64;

export class StoreFailure extends Error {
  constructor(
    readonly code: "budget_exceeded" | "model_error" | "bad_request" | "model_changed",
    message: string,
  ) {
    super(message);
  }
}

/** A store's (or its kernels') error as the failure an ExpertHost answers with. */
export function storeFailure(err: unknown): ExpertFailure {
  if (err instanceof StoreFailure) return { ok: false, code: err.code, message: err.message };
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof Error && err.name === "MemoryBudgetError") return { ok: false, code: "budget_exceeded", message };
  if (isModelChanged(err)) return { ok: false, code: "model_changed", message };
  return { ok: false, code: "model_error", message };
}

export interface ExpertStoreOptions {
  /** "int8" / "int4": quantize f32/bf16 experts at load. Default "none" (the stored dtype). */
  quant?: ExpertQuant;
  /**
   * int8 activation precision: "accurate" (default: 12- or 14-bit, the kernels' default path) or
   * "7bit" (the relaxed dot's one-digit path where the kernels have it: about half the work at
   * batch, 2–4× the activation error — see README, int8 accuracy).
   */
  int8Activations?: "accurate" | "7bit";
  /** Slices per expert forced (EXPERT_SLICES); 0 or absent: chosen from the expert's bytes. */
  slices?: number;
  /**
   * The budget the slice count is chosen against: the ExpertHost budget, the same number the
   * placement is computed from (default this store's own budget).
   */
  sliceBudgetBytes?: number;
}

/** Slices per expert of a model held as `dtype` under an ExpertHost budget (`forced` > 0 wins). */
export function expertSlicesFor(dtype: ExpertDtype, spec: ModelSpec, budgetBytes: number, forced = 0): number {
  const { dModel, dFf } = spec;
  return chooseSlices(dFf, budgetBytes, (n) => maxSliceBytes(dtype, dModel, dFf, n), forced);
}

interface Arena {
  kernels: Kernels;
  x: number; // [TOKEN_CHUNK, dModel]
  out: number; // [TOKEN_CHUNK, dModel]
  ffn: number; // kernel scratch for TOKEN_CHUNK tokens
  ffnBytes: number;
}

/** Writes a read expert into its blob (in `arena`'s memory); runs synchronously, between kernel runs. */
type PackInto = (arena: Arena, blob: number) => void;

interface LoadedExpert {
  arena: Arena;
  blob: number; // packed expert (gate/up panels, then down), expertPackedBytes(dtype) bytes
  bytes: number;
}

/** Scratch bytes per arena (x, out and the packed kernels' scratch for TOKEN_CHUNK tokens), an
 * upper bound of both dtypes (Kernels.scratchBytes is checked against it). */
export function scratchBytes(dModel: number, dFf: number): number {
  const up = (v: number, m: number) => Math.ceil(v / m) * m;
  const f32 = 4 * TOKEN_CHUNK * (up(dModel, 4) + up(dFf, 4)) + 16;
  const q8 = 2 * up(4 * TOKEN_CHUNK, 16) + TOKEN_CHUNK * (2 * up(dModel, 16) + 6 * up(dFf, 16));
  const q4 = expertQ4gScratchBytes(TOKEN_CHUNK, dModel, dFf, Q4_GROUP);
  const q8g = expertQ8gScratchBytes(TOKEN_CHUNK, dModel, dFf, Q8_EXPERT_GROUP);
  return 8 * TOKEN_CHUNK * dModel + Math.max(f32, q8, q4, q8g) + 64;
}

/**
 * An f32 expert into its blob, in Wasm (src/kernels/pack-expert.ts). The arena's kernel scratch
 * holds the rows on their way: a load packs synchronously, so no kernel run is using it, and the
 * pack needs no memory beyond what the budget already counts. (An f32 arena's scratch holds
 * TOKEN_CHUNK rows of the wider matrix, more than the one row the packer needs.)
 */
function packF32(a: Arena, blob: number, w: ExpertRows, dModel: number, dFf: number): void {
  packExpertF32Into(a.kernels, blob, a.ffn, a.ffnBytes, w, dModel, dFf);
}

export class ExpertStore {
  readonly #arenas: Arena[] = [];
  readonly #experts = new Map<string, LoadedExpert>();
  readonly #loading = new Map<string, Promise<LoadedExpert>>();
  readonly #expertBytes: number;
  /** Bytes of the loads in flight (counted against the budget before they land). */
  #loadingBytes = 0;
  /** How experts are held: "f32" packed panels, "q8" (int8 + per-row scales), "q8g" (int8 groups)
   * or "q4" (4-bit groups). */
  readonly dtype: ExpertDtype;
  /** Slices per expert: the store's ids are units (expert · slices + slice); 1 = whole experts. */
  readonly slices: number;
  calls = 0;
  /** Expert passes (one per item of a run: one read of that expert's weights). */
  passes = 0;
  tokens = 0;
  /** Experts (units) loaded from the checkpoint since the store opened: each one read and packed once. */
  loads = 0;

  constructor(
    readonly model: ModelCheckpoint,
    readonly budgetBytes: number,
    readonly label: string,
    private readonly newKernels: (maxBytes: number) => Kernels,
    private readonly opts: ExpertStoreOptions = {},
  ) {
    this.dtype = expertDtype(model.ckpt, model.spec, opts.quant ?? "none");
    const { spec } = model;
    this.slices = expertSlicesFor(this.dtype, spec, opts.sliceBudgetBytes ?? budgetBytes, opts.slices ?? 0);
    this.#expertBytes = maxSliceBytes(this.dtype, spec.dModel, spec.dFf, this.slices);
  }

  /** Intermediate range of unit `unit` (the whole [0, dFf) when experts are not sliced). */
  unitRange(unit: number): SliceBounds {
    const [c0, c1] = sliceRange(this.model.spec.dFf, this.slices, unit % this.slices);
    return { c0, c1 };
  }

  /** Real bytes of one unit as held. */
  unitBytes(unit: number): number {
    const { c0, c1 } = this.unitRange(unit);
    return expertPackedBytes(this.dtype, this.model.spec.dModel, c1 - c0);
  }

  /** Real bytes of the largest unit as held (one expert, or its largest slice). */
  get expertBytes(): number {
    return this.#expertBytes;
  }

  get bytesLoaded(): number {
    let n = 0;
    for (const e of this.#experts.values()) n += e.bytes;
    return n;
  }

  get wasmBytesInUse(): number {
    return this.#arenas.reduce((s, a) => s + a.kernels.bytesInUse, 0);
  }

  /** Total size of the arenas' Wasm linear memories (each only grows). */
  get wasmMemoryBytes(): number {
    return this.#arenas.reduce((s, a) => s + a.kernels.memoryBytes, 0);
  }

  get kernelFlavor(): string | null {
    return this.#arenas[0]?.kernels.flavor ?? null;
  }

  /** The int8 dot path in use (null until an arena exists or for f32 experts). */
  get q8Path(): string | null {
    return this.dtype === "q8" ? (this.#arenas[0]?.kernels.q8Path ?? null) : null;
  }

  loaded(): ExpertRef[] {
    return [...this.#experts.keys()]
      .map((k) => {
        const [layer, expert] = k.split(":").map(Number);
        return { layer, expert };
      })
      .sort((a, b) => a.layer - b.layer || a.expert - b.expert);
  }

  /** Loads an expert (a unit when sliced) unless it is loaded or loading (concurrent callers share one load). */
  ensure(layer: number, expert: number): Promise<LoadedExpert> {
    const { spec, id } = this.model;
    const units = spec.nExperts * this.slices;
    if (
      !Number.isInteger(layer) ||
      layer < 0 ||
      layer >= spec.nLayers ||
      !Number.isInteger(expert) ||
      expert < 0 ||
      expert >= units
    ) {
      const what =
        this.slices > 1
          ? `expert slice (unit) ${layer}:${expert} (${this.slices} slices an expert)`
          : `expert ${layer}:${expert}`;
      return Promise.reject(new StoreFailure("bad_request", `no ${what} in model "${id}"`));
    }
    const key = expertKey(layer, expert);
    const have = this.#experts.get(key);
    if (have) return Promise.resolve(have);
    let pending = this.#loading.get(key);
    if (!pending) {
      pending = this.#load(layer, expert).finally(() => this.#loading.delete(key));
      this.#loading.set(key, pending);
    }
    return pending;
  }

  unload(refs: ExpertRef[]): void {
    for (const { layer, expert } of refs) {
      const key = expertKey(layer, expert);
      const w = this.#experts.get(key);
      if (!w) continue;
      w.arena.kernels.free(w.blob);
      this.#experts.delete(key);
    }
  }

  /** Runs every work item of one layer; x and the result are [Σ nTokens, dModel]. */
  async run(layer: number, items: ExpertWorkItem[], x: Float32Array): Promise<Float32Array> {
    const { dModel } = this.model.spec;
    const total = items.reduce((s, it) => s + it.nTokens, 0);
    if (x.length !== total * dModel)
      throw new StoreFailure("bad_request", `x has ${x.length} values, items need ${total} × ${dModel}`);
    const weights = await Promise.all(items.map((it) => this.ensure(layer, it.expert)));
    const y = new Float32Array(total * dModel);
    let row = 0;
    const q8 = this.dtype === "q8";
    const q4 = this.dtype === "q4";
    const q8g = this.dtype === "q8g";
    for (let i = 0; i < items.length; i++) {
      const { arena, blob } = weights[i];
      const k = arena.kernels;
      const n = items[i].nTokens;
      const { c0, c1 } = this.unitRange(items[i].expert);
      const dFf = c1 - c0; // a slice runs as an expert of its intermediate size
      for (let done = 0; done < n; done += TOKEN_CHUNK) {
        const m = Math.min(TOKEN_CHUNK, n - done);
        const at = (row + done) * dModel;
        k.f32(arena.x, m * dModel).set(x.subarray(at, at + m * dModel));
        if (q8) k.expertFfnQ8(arena.out, arena.x, blob, m, dModel, dFf, arena.ffn);
        else if (q4) k.expertFfnQ4g(arena.out, arena.x, blob, m, dModel, dFf, Q4_GROUP, arena.ffn);
        else if (q8g) k.expertFfnQ8g(arena.out, arena.x, blob, m, dModel, dFf, Q8_EXPERT_GROUP, arena.ffn);
        else k.expertFfnPacked(arena.out, arena.x, blob, m, dModel, dFf, arena.ffn);
        y.set(k.f32(arena.out, m * dModel), at);
      }
      row += n;
    }
    this.calls++;
    this.passes += items.length;
    this.tokens += total;
    return y;
  }

  async #load(layer: number, expert: number): Promise<LoadedExpert> {
    const bytes = this.unitBytes(expert);
    const committed = this.bytesLoaded + this.#loadingBytes;
    if (committed + bytes > this.budgetBytes) {
      const what = this.slices > 1 ? `expert slice (unit) ${layer}:${expert}` : `expert ${layer}:${expert}`;
      throw new StoreFailure(
        "budget_exceeded",
        `${this.label}: loading ${what} of "${this.model.id}" (${formatMiB(bytes)}) ` +
          `would exceed the memory budget of ${formatMiB(this.budgetBytes)} (${formatMiB(committed)} held or loading)`,
      );
    }
    // Read (and for int8, quantize) before choosing an arena: everything after the await is
    // synchronous, so concurrent loads never interleave allocations.
    this.#loadingBytes += bytes;
    let pack: PackInto;
    try {
      pack = await this.#read(layer, expert);
    } finally {
      this.#loadingBytes -= bytes;
    }
    const arena = this.#arenaWithRoom(bytes);
    const blob = arena.kernels.alloc(bytes);
    try {
      pack(arena, blob); // packed once here, never per request
    } catch (e) {
      arena.kernels.free(blob); // a blob never packed must not keep its room
      throw e;
    }
    const loaded: LoadedExpert = { arena, blob, bytes };
    this.#experts.set(expertKey(layer, expert), loaded);
    this.loads++;
    return loaded;
  }

  /** Reads one expert and returns the function that packs it into its blob. */
  async #read(layer: number, unit: number): Promise<PackInto> {
    if (this.slices > 1) return this.#readSlice(layer, unit);
    const expert = unit;
    const { ckpt, spec } = this.model;
    const { dModel, dFf } = spec;
    const bytes = this.unitBytes(unit);
    const u8 = (a: Arena, blob: number) => a.kernels.u8(blob, bytes);
    if (this.dtype === "q8") {
      const q = await loadExpertQ8(ckpt, spec, layer, expert);
      return (a, blob) => packExpertQ8(u8(a, blob), q, dModel, dFf);
    }
    if (this.dtype === "q4") {
      const q = await loadExpertQ4(ckpt, spec, layer, expert);
      return (a, blob) => packExpertQ4g(u8(a, blob), q, dModel, dFf);
    }
    if (this.dtype === "q8g") {
      const q = await loadExpertQ8g(ckpt, spec, layer, expert);
      return (a, blob) => packExpertQ8gMatrices(u8(a, blob), q, dModel, dFf);
    }
    // Kept as read (f32/bf16/f16 bytes) and decoded into Wasm scratch by the packer, a chunk at a time.
    const w = await readExpertRows(ckpt, spec, layer, expert);
    return (a, blob) => packF32(a, blob, w, dModel, dFf);
  }

  /** Reads one slice (unit) by ranged reads of its rows and columns; packs it as an expert of its width. */
  async #readSlice(layer: number, unit: number): Promise<PackInto> {
    const { ckpt, spec } = this.model;
    const { expert } = unitExpert(unit, this.slices);
    const b = this.unitRange(unit);
    const { dModel } = spec;
    const w = b.c1 - b.c0;
    const bytes = this.unitBytes(unit);
    const u8 = (a: Arena, blob: number) => a.kernels.u8(blob, bytes);
    if (this.dtype === "q8") {
      const q = await loadExpertSliceQ8(ckpt, spec, layer, expert, b);
      return (a, blob) => packExpertQ8(u8(a, blob), q, dModel, w);
    }
    if (this.dtype === "q4") {
      const q = await loadExpertSliceQ4(ckpt, spec, layer, expert, b);
      return (a, blob) => packExpertQ4g(u8(a, blob), q, dModel, w);
    }
    if (this.dtype === "q8g") {
      const q = await loadExpertSliceQ8g(ckpt, spec, layer, expert, b);
      return (a, blob) => packExpertQ8gMatrices(u8(a, blob), q, dModel, w);
    }
    const f = await loadExpertSliceWeights(ckpt, spec, layer, expert, b);
    const rows = { w1: f32Rows(f.w1, dModel), w3: f32Rows(f.w3, dModel), w2: f32Rows(f.w2, w) };
    return (a, blob) => packF32(a, blob, rows, dModel, w);
  }

  #arenaWithRoom(bytes: number): Arena {
    const slack = 16; // alignment of the blob
    const last = this.#arenas.at(-1);
    if (last && last.kernels.bytesInUse + bytes + slack <= last.kernels.maxBytes) return last;
    const { dModel, dFf } = this.model.spec;
    const scratch = scratchBytes(dModel, dFf);
    const remaining = this.budgetBytes - this.bytesLoaded;
    const kernels = this.newKernels(Math.min(WASM_MAX_BYTES, remaining + scratch + 64 * 1024));
    if (this.dtype === "q8" && this.opts.int8Activations === "7bit") {
      const fast = kernels.q8Paths.find((p) => p.endsWith("_7bit") && p.startsWith(kernels.q8Path));
      const any7 = kernels.q8Paths.find((p) => p.endsWith("_7bit"));
      if (fast ?? any7) kernels.setQ8Path((fast ?? any7)!);
    }
    const ffnBytes =
      this.dtype === "q4"
        ? expertQ4gScratchBytes(TOKEN_CHUNK, dModel, dFf, Q4_GROUP)
        : this.dtype === "q8g"
          ? expertQ8gScratchBytes(TOKEN_CHUNK, dModel, dFf, Q8_EXPERT_GROUP)
          : kernels.scratchBytes(this.dtype === "q8" ? "ffnQ8" : "ffnF32", TOKEN_CHUNK, dModel, dFf);
    if (ffnBytes + 8 * TOKEN_CHUNK * dModel > scratch)
      throw new Error(`internal: kernel scratch ${ffnBytes} B exceeds the reserved ${scratch} B`);
    const arena: Arena = {
      kernels,
      x: kernels.alloc(TOKEN_CHUNK * dModel * 4),
      out: kernels.alloc(TOKEN_CHUNK * dModel * 4),
      ffn: kernels.alloc(ffnBytes),
      ffnBytes,
    };
    this.#arenas.push(arena);
    return arena;
  }
}
