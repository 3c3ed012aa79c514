/**
 * @module dense — streams a checkpoint tensor into Wasm memory as a dense stage matrix
 * (src/kernels/dense-format.ts), converting or quantizing each row as its bytes arrive.
 *
 * The whole tensor never exists in JS: the caller hands over chunks of the tensor's raw bytes
 * (row-major [rows, cols], little-endian F32 / BF16 / F16, e.g. the bodies of ranged R2 reads), of
 * any sizes — a chunk may end inside a row or inside a value. The writer keeps one f32 row
 * (4·cols bytes) and ≤ 3 carried bytes of a split value, and writes each finished row straight
 * into the matrix, which it allocates once, up front, at its exact size. So the peak JS memory of
 * a load is one chunk + `DenseMatrixWriter.jsScratchBytes` (= 4·cols + 4), and the Wasm memory
 * grows by exactly `denseMatrixBytes` — a host checks its budget with that number before loading,
 * and an allocation past the Wasm maximum throws MemoryBudgetError (catchable) before any byte is
 * read.
 */
import { MemoryBudgetError, type Kernels } from "./index";
import {
  bf16ToF32,
  checkDenseShape,
  DEFAULT_GROUP,
  denseMatrixBytes,
  denseScratchBytes,
  paddedCols,
  quantizeRowQ8g,
  SOURCE_BYTES,
  type DenseFormat,
  type DenseMatrix,
  type DenseSourceDType,
} from "./dense-format";

export {
  DEFAULT_GROUP,
  denseMatrixBytes,
  denseScratchBytes,
  MemoryBudgetError,
  type DenseFormat,
  type DenseMatrix,
  type DenseSourceDType,
};

export interface DenseLoadOptions {
  rows: number;
  cols: number;
  /** dtype of the checkpoint bytes fed in. */
  source: DenseSourceDType;
  /** How the matrix is held: "int8" (group-scaled), "bf16" or "f32". */
  format: DenseFormat;
  /** int8 only: inputs per scale, a multiple of 16 in 16..512; default DEFAULT_GROUP. */
  group?: number;
}

/** f16 bits → f32 value (exact; subnormals, ±Inf and NaN included). */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/**
 * Push-style loader: `new DenseMatrixWriter(kernels, opts)` allocates the matrix (throws
 * MemoryBudgetError when it does not fit), `push(chunk)` any number of times, then `finish()` for
 * the handle. On an error, or to give up, call `abort()` to free the matrix.
 */
export class DenseMatrixWriter {
  readonly rows: number;
  readonly cols: number;
  readonly format: DenseFormat;
  readonly group: number;
  readonly source: DenseSourceDType;
  readonly bytes: number;
  readonly #k: Kernels;
  readonly #ptr: number;
  readonly #row: Float32Array;
  /** The row's f32 bits (same buffer). */
  readonly #rowBits: Uint32Array;
  readonly #carry = new Uint8Array(4);
  #carryLen = 0;
  #consumed = 0;
  #r = 0;
  #c = 0;
  #state: "open" | "done" | "aborted" = "open";

  constructor(kernels: Kernels, opts: DenseLoadOptions) {
    const group = opts.format === "int8" ? (opts.group ?? DEFAULT_GROUP) : 0;
    checkDenseShape(opts.rows, opts.cols, opts.format, group);
    if (!(opts.source in SOURCE_BYTES)) {
      throw new RangeError(`source dtype must be F32, BF16 or F16, got "${opts.source}"`);
    }
    this.rows = opts.rows;
    this.cols = opts.cols;
    this.format = opts.format;
    this.group = group;
    this.source = opts.source;
    this.bytes = denseMatrixBytes(this.rows, this.cols, this.format, group);
    this.#k = kernels;
    this.#ptr = kernels.alloc(this.bytes); // throws MemoryBudgetError before anything is read
    // The size is rounded up to 16: zero that tail so equal tensors give equal bytes.
    kernels.u8(this.#ptr + this.bytes - 16, 16).fill(0);
    this.#row = new Float32Array(this.cols);
    this.#rowBits = new Uint32Array(this.#row.buffer);
  }

  /** JS memory the writer holds besides the caller's chunk: one f32 row and a split value. */
  get jsScratchBytes(): number {
    return this.#row.byteLength + this.#carry.byteLength;
  }

  /** Source bytes expected in total: rows · cols · dtype size. */
  get expectedBytes(): number {
    return this.rows * this.cols * SOURCE_BYTES[this.source];
  }

  /** Rows written so far. */
  get rowsDone(): number {
    return this.#r;
  }

  /** Consumes the next bytes of the tensor. More bytes than the tensor has is a RangeError (nothing
   * of that chunk is written). */
  push(chunk: Uint8Array): void {
    this.#checkOpen("push");
    if (this.#consumed + chunk.length > this.expectedBytes) {
      throw new RangeError(`tensor has ${this.expectedBytes} bytes; ${this.#consumed + chunk.length} were pushed`);
    }
    this.#consumed += chunk.length;
    const size = SOURCE_BYTES[this.source];
    let i = 0;
    if (this.#carryLen > 0) {
      while (this.#carryLen < size && i < chunk.length) this.#carry[this.#carryLen++] = chunk[i++];
      if (this.#carryLen < size) return;
      this.#carryLen = 0;
      this.#emit(this.#decode(new DataView(this.#carry.buffer), 0));
    }
    const whole = i + Math.floor((chunk.length - i) / size) * size;
    const view = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    // Whole values, a row's worth at a time (no call per value: loads run at tens of M values/s).
    const row = this.#row;
    const bits = this.#rowBits;
    const cols = this.cols;
    while (i < whole) {
      let c = this.#c;
      const end = Math.min(whole, i + (cols - c) * size);
      if (this.source === "F32") for (; i < end; i += 4) row[c++] = view.getFloat32(i, true);
      else if (this.source === "BF16") for (; i < end; i += 2) bits[c++] = view.getUint16(i, true) << 16;
      else for (; i < end; i += 2) row[c++] = f16ToF32(view.getUint16(i, true));
      this.#c = c;
      if (c === cols) {
        this.#c = 0;
        this.#writeRow(this.#r++);
      }
    }
    while (i < chunk.length) this.#carry[this.#carryLen++] = chunk[i++];
  }

  /** The loaded matrix; throws (and frees it) if fewer bytes than the tensor holds were pushed. */
  finish(): DenseMatrix {
    this.#checkOpen("finish");
    if (this.#r !== this.rows || this.#carryLen !== 0) {
      this.abort();
      throw new RangeError(`tensor has ${this.expectedBytes} bytes; only ${this.#consumed} were pushed`);
    }
    this.#state = "done";
    const { rows, cols, format, group, bytes } = this;
    return { ptr: this.#ptr, rows, cols, format, group, bytes };
  }

  #checkOpen(what: string): void {
    if (this.#state !== "open") {
      throw new Error(`DenseMatrixWriter: ${what} after ${this.#state === "done" ? "finish" : "abort"}`);
    }
  }

  /** Frees the matrix of an unfinished load (no-op after finish or a previous abort). */
  abort(): void {
    if (this.#state !== "open") return;
    this.#state = "aborted";
    this.#k.free(this.#ptr);
  }

  #decode(view: DataView, at: number): number {
    if (this.source === "F32") return view.getFloat32(at, true);
    const bits = view.getUint16(at, true);
    if (this.source === "BF16") return bf16ToF32(bits);
    return f16ToF32(bits);
  }

  #emit(v: number): void {
    this.#row[this.#c++] = v;
    if (this.#c < this.cols) return;
    this.#c = 0;
    this.#writeRow(this.#r++);
  }

  /** Converts the buffered row into the matrix (views taken now: an alloc elsewhere may have grown
   * the memory since the last row). */
  #writeRow(j: number): void {
    const k = this.#k;
    const cols = this.cols;
    const padded = paddedCols(cols, this.format, this.group);
    if (this.format === "f32") {
      k.f32(this.#ptr + j * cols * 4, cols).set(this.#row);
    } else if (this.format === "bf16") {
      const u8 = k.u8(this.#ptr + j * padded * 2, padded * 2);
      const dst = new Uint16Array(u8.buffer, u8.byteOffset, padded);
      dst.fill(0, cols & ~7);
      const bits = this.#rowBits;
      for (let c = 0; c < cols; c++) {
        const u = bits[c];
        // Round to nearest even on the bits (f32ToBf16 inlined); a NaN stays a quiet NaN.
        const b = (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x40 : (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
        dst[(c & ~7) + ((c & 7) < 4 ? 2 * (c & 7) : 2 * (c & 7) - 7)] = b; // bf16Slot(c), inlined
      }
    } else {
      const groups = padded / this.group;
      const q = new Int8Array(k.u8(0, 0).buffer, this.#ptr + j * padded, padded);
      const scales = k.f32(this.#ptr + this.rows * padded + j * groups * 4, groups);
      quantizeRowQ8g(this.#row, cols, this.group, q, scales);
    }
  }
}

/**
 * Loads a [rows, cols] tensor from its raw checkpoint bytes, given as chunks (sync or async
 * iterable, any sizes), into a dense matrix in Wasm memory. Frees the matrix and rethrows when the
 * chunks fail or hold the wrong number of bytes. Peak JS memory: one chunk + 4·cols + 4 bytes.
 */
export async function loadDenseMatrix(
  kernels: Kernels,
  chunks: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  opts: DenseLoadOptions,
): Promise<DenseMatrix> {
  const w = new DenseMatrixWriter(kernels, opts);
  try {
    for await (const chunk of chunks) w.push(chunk);
    return w.finish();
  } catch (err) {
    w.abort();
    throw err;
  }
}

/** Something bytes can be read from by range (R2 object, file, safetensors ByteSource). */
export interface RangeReader {
  read(offset: number, length: number): Promise<Uint8Array>;
}

/**
 * The bytes [offset, offset + length) of a source as ranged reads of ≤ chunkBytes each, one at a
 * time (the next read starts only after the consumer took the previous chunk).
 */
export async function* rangeChunks(
  src: RangeReader,
  offset: number,
  length: number,
  chunkBytes: number,
): AsyncGenerator<Uint8Array> {
  if (!Number.isInteger(chunkBytes) || chunkBytes < 1) {
    throw new RangeError(`chunkBytes must be a positive integer, got ${chunkBytes}`);
  }
  for (let at = 0; at < length; at += chunkBytes) yield await src.read(offset + at, Math.min(chunkBytes, length - at));
}

/** Frees a loaded matrix. */
export function freeDense(kernels: Kernels, m: DenseMatrix): void {
  kernels.free(m.ptr);
}

/**
 * Convenience for tests, scripts and one-off calls: y = x · Wᵀ with x [n, m.cols] from JS; allocates
 * and frees x, out and scratch around one kernel call. Hot paths keep their buffers and call
 * `kernels.matmulDense` directly.
 */
export function denseMatmul(kernels: Kernels, m: DenseMatrix, x: Float32Array, n: number): Float32Array {
  if (x.length !== n * m.cols) throw new RangeError(`x must hold n·cols = ${n * m.cols} values, got ${x.length}`);
  const px = kernels.allocF32(x);
  const scratchBytes = denseScratchBytes(m, n);
  const scratch = scratchBytes > 0 ? kernels.alloc(scratchBytes) : 0;
  const out = kernels.alloc(n * m.rows * 4);
  try {
    kernels.matmulDense(m, out, px, n, scratch);
    return kernels.f32(out, n * m.rows).slice();
  } finally {
    kernels.free(out);
    if (scratch) kernels.free(scratch);
    kernels.free(px);
  }
}

/** Convenience: rows `ids` of W as f32 [ids.length, m.cols]. */
export function denseGather(kernels: Kernels, m: DenseMatrix, ids: readonly number[]): Float32Array {
  const pIds = kernels.alloc(ids.length * 4);
  const out = kernels.alloc(ids.length * m.cols * 4);
  try {
    new Int32Array(kernels.u8(pIds, ids.length * 4).buffer, pIds, ids.length).set(ids);
    kernels.gatherDense(m, out, pIds, ids.length);
    return kernels.f32(out, ids.length * m.cols).slice();
  } finally {
    kernels.free(out);
    kernels.free(pIds);
  }
}
