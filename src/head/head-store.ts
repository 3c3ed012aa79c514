/**
 * @module One shard of the output head in Wasm memory: rows [rowStart, rowEnd) of lm_head (or of
 * the tied embedding table) under a byte budget — bf16 when the checkpoint stores bf16 (kept bit
 * for bit, half the bytes), else f32 (F16 widens exactly) — and the two things done with them — the
 * shard's logits slice, or its greedy answer (max and argmax per token). Platform-agnostic (give it
 * a Kernels factory): the HeadHost DO wraps one, Node tests drive one directly.
 *
 * Loading streams the rows from the checkpoint in bounded chunks decoded straight into Wasm memory
 * (Checkpoint.readF32RowsInto, or src/kernels/dense.ts's row writer for bf16), so the JS heap never
 * holds more than about HEAD_LOAD_CHUNK_BYTES of it.
 *
 * Exactness: the kernel is the one an unsplit head of the same format runs (`matmul` for f32, the
 * f32 head of the single-isolate forward pass; `matmulBf16` for bf16), on the same rows; shard
 * boundaries are multiples of HEAD_ROW_ALIGN (src/coordinator/head-placement.ts) — both kernels
 * take rows in blocks of ≤ 4 (a ragged last block is now summed as whole blocks are, per the
 * batch-rows contract; the alignment stays, it costs nothing) — and tokens go to the
 * kernel in chunks of HEAD_TOKEN_CHUNK (a multiple of 4, `matmul`'s token tile), so every logit is
 * summed in the same order as in an unsplit [n, vocab] product. The division by logits_scaling is
 * the same f32 expression forward.ts applies. (The relaxed build's bf16 kernel uses relaxed_madd,
 * fused or not by the CPU: shards agree with an unsplit head on the same kind of machine.)
 */
import type { Kernels } from "../kernels/index";
import { WASM_MAX_BYTES } from "../kernels/index";
import { DenseMatrixWriter, denseMatrixBytes, type DenseMatrix } from "../kernels/dense";
import { HEAD_ROW_ALIGN } from "../coordinator/head-placement";
import { vocabTensorNames } from "../model/architectures";
import type { ModelSpec } from "../model/config";
import type { Checkpoint } from "../model/safetensors";
import { formatMiB } from "../platform/format";
import type { HeadFailureCode, HeadShardRef } from "./protocol";

/** Tokens per kernel call: a multiple of 4 (the kernel's token tile, see the module comment). */
export const HEAD_TOKEN_CHUNK = 16;
/** Checkpoint bytes read (and held in JS) per step while loading. */
export const HEAD_LOAD_CHUNK_BYTES = 4 * 1024 * 1024;

/** A failure with the code it crosses RPC with. */
export class HeadStoreFailure extends Error {
  constructor(
    readonly code: HeadFailureCode,
    message: string,
  ) {
    super(message);
  }
}

/** Wasm bytes beyond the weights: hidden and logits of one token chunk, plus allocator slack. */
export function headScratchBytes(dModel: number, rows: number): number {
  return 4 * HEAD_TOKEN_CHUNK * (dModel + rows) + 64 * 1024;
}

/** How head rows are held: bf16 when stored bf16 (lossless), else f32. */
export type HeadRowFormat = "f32" | "bf16";

export function headRowFormat(ckpt: Checkpoint, spec: ModelSpec): HeadRowFormat {
  return ckpt.info(vocabTensorNames(spec).head).dtype === "BF16" ? "bf16" : "f32";
}

/** Bytes `rows` head rows take as held. */
export function headShardBytes(dModel: number, rows: number, format: HeadRowFormat): number {
  return denseMatrixBytes(rows, dModel, format);
}

export interface HeadStoreOptions {
  /** Bytes of head weights this instance may hold. */
  budgetBytes: number;
  /** Names the instance and its budget variable in messages, e.g. "HeadHost m/head/0-16 (HEAD_HOST_BUDGET_MB)". */
  label: string;
  /** A fresh Kernels instance capped at maxBytes. */
  kernels: (maxBytes: number) => Kernels;
}

export class HeadStore {
  calls = 0;
  tokens = 0;

  private constructor(
    readonly ref: HeadShardRef,
    /** The head tensor whose rows are held. */
    readonly tensor: string,
    /** The embedding table's name: equal to `tensor` when the model ties its embeddings. */
    readonly embedTensor: string,
    readonly dModel: number,
    /** logits_scaling (1 outside Granite). */
    readonly logitsScale: number,
    readonly kernels: Kernels,
    /** [rows, dModel] in `format` */
    private readonly w: DenseMatrix,
  ) {}

  get format(): HeadRowFormat {
    return this.w.format === "bf16" ? "bf16" : "f32";
  }

  get bytesLoaded(): number {
    return this.w.bytes;
  }

  get rows(): number {
    return this.ref.rowEnd - this.ref.rowStart;
  }

  /** Checks the shard against the model and the budget, then reads its rows into Wasm memory. */
  static async load(ckpt: Checkpoint, spec: ModelSpec, ref: HeadShardRef, opts: HeadStoreOptions): Promise<HeadStore> {
    const { rowStart, rowEnd } = ref;
    const V = spec.vocabSize;
    const aligned = rowStart % HEAD_ROW_ALIGN === 0 && (rowEnd % HEAD_ROW_ALIGN === 0 || rowEnd === V);
    if (
      !Number.isInteger(rowStart) ||
      !Number.isInteger(rowEnd) ||
      rowStart < 0 ||
      rowEnd > V ||
      rowStart >= rowEnd ||
      !aligned
    ) {
      throw new HeadStoreFailure(
        "bad_request",
        `${opts.label}: rows [${rowStart}, ${rowEnd}) are not a head shard of "${ref.model}" (vocabulary ${V}; ` +
          `boundaries must be multiples of ${HEAD_ROW_ALIGN} or the vocabulary's end)`,
      );
    }
    const rows = rowEnd - rowStart;
    const { dModel } = spec;
    const names = vocabTensorNames(spec);
    const tensor = names.head;
    const format = headRowFormat(ckpt, spec);
    const bytes = headShardBytes(dModel, rows, format);
    if (bytes > opts.budgetBytes) {
      throw new HeadStoreFailure(
        "budget_exceeded",
        `${opts.label}: rows [${rowStart}, ${rowEnd}) of "${tensor}" ` +
          `need ${formatMiB(bytes)} (${bytes} bytes) as ${format}, over the ` +
          `${formatMiB(opts.budgetBytes)} (${opts.budgetBytes} bytes) budget; split the head over more shards`,
      );
    }
    const maxBytes = Math.min(WASM_MAX_BYTES, bytes + headScratchBytes(dModel, rows));
    const k = opts.kernels(maxBytes);
    const chunkRows = Math.max(1, Math.floor(HEAD_LOAD_CHUNK_BYTES / (dModel * 4)));
    // Allocates the matrix up front at its exact size (MemoryBudgetError before any read).
    const writer = new DenseMatrixWriter(k, { rows, cols: dModel, source: "F32", format });
    try {
      for (let r = 0; r < rows; r += chunkRows) {
        const m = Math.min(chunkRows, rows - r);
        // bf16 values decoded to f32 convert back to the same bf16 bits (round to nearest even).
        const f32 = await ckpt.readF32Rows(tensor, rowStart + r, m);
        writer.push(new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength));
      }
      return new HeadStore(ref, tensor, names.embed, dModel, spec.multipliers.logitsScale, k, writer.finish());
    } catch (err) {
      writer.abort();
      throw err;
    }
  }

  /** logits [n, rows] of hidden [n, dModel] (after the final norm), ÷ logits_scaling. */
  logits(hidden: Float32Array, n: number, calls = 1): Float32Array {
    const rows = this.rows;
    const out = new Float32Array(n * rows);
    const s = this.logitsScale;
    this.#chunks(hidden, n, calls, 0, (t0, m, y) => {
      const view = this.kernels.f32(y, m * rows);
      // Same f32 expression as forward.ts (out[i] /= logits_scaling on a Float32Array).
      if (s !== 1) for (let i = 0; i < view.length; i++) view[i] /= s;
      out.set(view, t0 * rows);
    });
    return out;
  }

  /**
   * Per token the largest logit of the shard and its vocabulary id; ties → the lowest id. The scan
   * runs in Wasm on each chunk's logits (Kernels.argmaxRows: the scan sampling.ts's argmax does,
   * the division by logits_scaling included, bit for bit), so only 2 numbers a token reach JS.
   */
  greedy(hidden: Float32Array, n: number, calls = 1): { max: Float32Array; argmax: Int32Array } {
    const k = this.kernels;
    const max = new Float32Array(n);
    const argmax = new Int32Array(n);
    this.#chunks(hidden, n, calls, 8, (t0, m, y, extra) => {
      k.argmaxRows(extra, extra + 4 * m, y, m, this.rows, this.logitsScale);
      max.set(k.f32(extra, m), t0);
      const ids = new Int32Array(k.u8(extra + 4 * m, 4 * m).buffer, extra + 4 * m, m);
      for (let t = 0; t < m; t++) argmax[t0 + t] = this.ref.rowStart + ids[t];
    });
    return { max, argmax };
  }

  /** Rows of the held table for vocabulary ids in [rowStart, rowEnd): [ids.length, dModel]. */
  embedRows(ids: readonly number[]): Float32Array {
    const { dModel } = this;
    const k = this.kernels;
    for (const id of ids) {
      if (!Number.isInteger(id) || id < this.ref.rowStart || id >= this.ref.rowEnd) {
        throw new HeadStoreFailure(
          "bad_request",
          `token id ${id} is not in this shard's rows [${this.ref.rowStart}, ${this.ref.rowEnd})`,
        );
      }
    }
    const out = new Float32Array(ids.length * dModel);
    const chunk = Math.min(ids.length, HEAD_TOKEN_CHUNK); // bounded scratch whatever the prompt length
    if (chunk === 0) return out;
    const pIds = k.alloc(chunk * 4);
    const rows = k.alloc(chunk * dModel * 4);
    try {
      for (let i0 = 0; i0 < ids.length; i0 += chunk) {
        const m = Math.min(chunk, ids.length - i0);
        const local = ids.slice(i0, i0 + m).map((id) => id - this.ref.rowStart);
        new Int32Array(k.u8(pIds, m * 4).buffer, pIds, m).set(local);
        k.gatherDense(this.w, rows, pIds, m);
        out.set(k.f32(rows, m * dModel), i0 * dModel);
      }
      return out;
    } finally {
      k.free(rows);
      k.free(pIds);
    }
  }

  /** Runs the head on HEAD_TOKEN_CHUNK tokens at a time; `use` gets each chunk's raw logits
   * ([m, rows] f32 at y) and `extraPerToken` bytes a token of Wasm scratch at `extra`. `calls`:
   * the callers whose rows these are (a merged head pass counts each, as alone). */
  #chunks(
    hidden: Float32Array,
    n: number,
    calls: number,
    extraPerToken: number,
    use: (t0: number, m: number, y: number, extra: number) => void,
  ): void {
    const { dModel, kernels: k } = this;
    const rows = this.rows;
    if (!Number.isInteger(n) || n < 0 || hidden.length !== n * dModel) {
      throw new HeadStoreFailure(
        "bad_request",
        `hidden must be [n, ${dModel}] = ${n * dModel} floats for n = ${n}, got ${hidden.length}`,
      );
    }
    const chunk = Math.min(n, HEAD_TOKEN_CHUNK);
    if (chunk === 0) return;
    const x = k.alloc(4 * chunk * dModel); // [chunk, dModel]
    const y = k.alloc(4 * chunk * rows); // [chunk, rows]
    const extra = extraPerToken > 0 ? k.alloc(extraPerToken * chunk) : 0;
    try {
      for (let t0 = 0; t0 < n; t0 += chunk) {
        const m = Math.min(chunk, n - t0);
        k.f32(x, m * dModel).set(hidden.subarray(t0 * dModel, (t0 + m) * dModel));
        k.matmulDense(this.w, y, x, m, 0); // f32 / bf16 need no scratch
        use(t0, m, y, extra);
      }
      this.calls += calls;
      this.tokens += n;
    } finally {
      if (extra !== 0) k.free(extra);
      k.free(y);
      k.free(x);
    }
  }
}
