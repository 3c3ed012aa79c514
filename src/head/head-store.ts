/**
 * @module One shard of the output head in Wasm memory: rows [rowStart, rowEnd) of lm_head (or of
 * the tied embedding table) as f32, under a byte budget, and the two things done with them — the
 * shard's logits slice, or its greedy answer (max and argmax per token). Platform-agnostic (give it
 * a Kernels factory): the HeadHost DO wraps one, Node tests drive one directly.
 *
 * Loading streams the rows from the checkpoint in bounded chunks decoded straight into Wasm memory
 * (Checkpoint.readF32RowsInto), so the JS heap never holds more than HEAD_LOAD_CHUNK_BYTES of it.
 *
 * Exactness: the kernel is the same `matmul` the single-isolate forward pass uses for its head, on
 * the same rows; shard boundaries are multiples of HEAD_ROW_ALIGN (src/coordinator/head-placement.ts)
 * and tokens go to the kernel in chunks of HEAD_TOKEN_CHUNK (a multiple of 4, the kernel's token
 * tile), so every logit is summed in the same order as in an unsplit [n, vocab] product. The
 * division by logits_scaling is the same f32 expression forward.ts applies.
 */
import type { Kernels } from "../kernels/index";
import { WASM_MAX_BYTES } from "../kernels/index";
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

/** Bytes the shard's weights take as held (f32 rows). */
export function headShardBytes(dModel: number, rows: number): number {
  return 4 * dModel * rows;
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
    readonly bytesLoaded: number,
    readonly kernels: Kernels,
    /** [rows, dModel] f32 */
    private readonly w: number,
  ) {}

  get rows(): number {
    return this.ref.rowEnd - this.ref.rowStart;
  }

  /** Checks the shard against the model and the budget, then reads its rows into Wasm memory. */
  static async load(ckpt: Checkpoint, spec: ModelSpec, ref: HeadShardRef, opts: HeadStoreOptions): Promise<HeadStore> {
    const { rowStart, rowEnd } = ref;
    const V = spec.vocabSize;
    const aligned = rowStart % HEAD_ROW_ALIGN === 0 && (rowEnd % HEAD_ROW_ALIGN === 0 || rowEnd === V);
    if (!Number.isInteger(rowStart) || !Number.isInteger(rowEnd) || rowStart < 0 || rowEnd > V || rowStart >= rowEnd || !aligned) {
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
    const bytes = headShardBytes(dModel, rows);
    if (bytes > opts.budgetBytes) {
      throw new HeadStoreFailure(
        "budget_exceeded",
        `${opts.label}: rows [${rowStart}, ${rowEnd}) of "${tensor}" need ${formatMiB(bytes)} as f32, over the ` +
          `${formatMiB(opts.budgetBytes)} budget; split the head over more shards`,
      );
    }
    const maxBytes = Math.min(WASM_MAX_BYTES, bytes + headScratchBytes(dModel, rows));
    const k = opts.kernels(maxBytes);
    const w = k.alloc(bytes);
    const info = ckpt.info(tensor);
    const esize = info.byteLength / Math.max(1, info.shape.reduce((a, b) => a * b, 1));
    const chunkRows = Math.max(1, Math.floor(HEAD_LOAD_CHUNK_BYTES / (dModel * esize)));
    for (let r = 0; r < rows; r += chunkRows) {
      const m = Math.min(chunkRows, rows - r);
      // A fresh view per chunk: nothing else allocates meanwhile, but a view must never outlive an await.
      await ckpt.readF32RowsInto(tensor, rowStart + r, m, k.f32(w + r * dModel * 4, m * dModel));
    }
    return new HeadStore(ref, tensor, names.embed, dModel, spec.multipliers.logitsScale, bytes, k, w);
  }

  /** logits [n, rows] of hidden [n, dModel] (after the final norm), ÷ logits_scaling. */
  logits(hidden: Float32Array, n: number): Float32Array {
    const rows = this.rows;
    const out = new Float32Array(n * rows);
    this.#chunks(hidden, n, (t0, m, view) => out.set(view, t0 * rows));
    return out;
  }

  /** Per token the largest logit of the shard and its vocabulary id; ties → the lowest id. */
  greedy(hidden: Float32Array, n: number): { max: Float32Array; argmax: Int32Array } {
    const rows = this.rows;
    const max = new Float32Array(n);
    const argmax = new Int32Array(n);
    this.#chunks(hidden, n, (t0, m, view) => {
      for (let t = 0; t < m; t++) {
        // The scan of sampling.ts argmax: strictly greater replaces, so the lowest id wins ties.
        const o = t * rows;
        let best = 0;
        for (let j = 1; j < rows; j++) if (view[o + j] > view[o + best]) best = j;
        max[t0 + t] = view[o + best];
        argmax[t0 + t] = this.ref.rowStart + best;
      }
    });
    return { max, argmax };
  }

  /** Rows of the held table for vocabulary ids in [rowStart, rowEnd): [ids.length, dModel]. */
  embedRows(ids: readonly number[]): Float32Array {
    const { dModel } = this;
    const out = new Float32Array(ids.length * dModel);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < this.ref.rowStart || id >= this.ref.rowEnd) {
        throw new HeadStoreFailure("bad_request", `token id ${id} is not in this shard's rows [${this.ref.rowStart}, ${this.ref.rowEnd})`);
      }
      out.set(this.kernels.f32(this.w + (id - this.ref.rowStart) * dModel * 4, dModel), i * dModel);
    }
    return out;
  }

  /** Runs the head on HEAD_TOKEN_CHUNK tokens at a time; `use` gets each chunk's scaled logits. */
  #chunks(hidden: Float32Array, n: number, use: (t0: number, m: number, logits: Float32Array) => void): void {
    const { dModel, kernels: k } = this;
    const rows = this.rows;
    if (!Number.isInteger(n) || n < 0 || hidden.length !== n * dModel) {
      throw new HeadStoreFailure("bad_request", `hidden must be [n, ${dModel}] = ${n * dModel} floats for n = ${n}, got ${hidden.length}`);
    }
    const chunk = Math.min(n, HEAD_TOKEN_CHUNK);
    if (chunk === 0) return;
    const x = k.alloc(4 * chunk * dModel); // [chunk, dModel]
    const y = k.alloc(4 * chunk * rows); // [chunk, rows]
    try {
      for (let t0 = 0; t0 < n; t0 += chunk) {
        const m = Math.min(chunk, n - t0);
        k.f32(x, m * dModel).set(hidden.subarray(t0 * dModel, (t0 + m) * dModel));
        k.matmul(y, x, this.w, m, dModel, rows);
        const view = k.f32(y, m * rows);
        const s = this.logitsScale;
        // Same f32 expression as forward.ts (out[i] /= logits_scaling on a Float32Array).
        if (s !== 1) for (let i = 0; i < view.length; i++) view[i] /= s;
        use(t0, m, view);
      }
      this.calls++;
      this.tokens += n;
    } finally {
      k.free(y);
      k.free(x);
    }
  }
}
