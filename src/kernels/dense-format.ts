/**
 * @module dense-format — the stage weight formats (assembly/dense.ts): their exact byte sizes, and
 * the per-row conversions the streaming loader (src/kernels/dense.ts) and the references share, so
 * a matrix loaded chunk by chunk is byte-identical to one converted in one shot.
 *
 *  - "f32":  [rows, cols] f32 row-major (the plain `matmul` kernel's layout).
 *  - "bf16": [rows, cols8] u16, cols8 = cols rounded up to 8 (zero-padded); each block of 8 stored
 *            w0 w4 w1 w5 w2 w6 w3 w7 (two SIMD instructions widen 8 weights, see assembly/dense.ts).
 *            f32 → bf16 rounds to nearest even; bf16 sources are kept bit for bit.
 *  - "int8": [rows, colsG] int8, colsG = cols rounded up to `group` (zero-padded), then
 *            [rows, colsG / group] f32 scales. Per group: scale = max|w| / d (f32), q =
 *            clamp(nearest-even(w · (d / max|w|)), ±127); an all-zero group has scale 0.
 *            Dense stages use absmax, d = 127 (|ŵ − w| ≤ scale / 2 + f32 rounding); group-wise
 *            int8 experts the d near 127 with the least squared error (src/kernels/q8-scale.ts).
 *            Dequantized weight ŵ = f32(scale · q).
 * Every size is a multiple of 16 bytes, so `Kernels.alloc` accounts exactly `denseMatrixBytes`.
 */
import { Q8_ABSMAX, Q8_DIVISORS, q8Value, searchQ8Scale } from "./q8-scale";

export type DenseFormat = "f32" | "bf16" | "int8";

/** Checkpoint dtypes the loader reads (safetensors names). */
export type DenseSourceDType = "F32" | "BF16" | "F16";

/** Default int8 group (inputs per scale), chosen by measured accuracy and speed (README, "Dense stage
 * weights"): groups of 32 cost twice the scale bytes for a small error gain, 128 lose accuracy and
 * gain no decode speed. */
export const DEFAULT_GROUP = 64;
/** Largest int8 group: keeps each group's integer dot inside i32 with 16-bit activations. */
export const MAX_GROUP = 512;

/** A dense matrix held in Wasm memory: W[rows, cols] (out × in, nn.Linear layout). */
export interface DenseMatrix {
  readonly ptr: number;
  readonly rows: number;
  readonly cols: number;
  readonly format: DenseFormat;
  /** Inputs per int8 scale; 0 for f32 and bf16. */
  readonly group: number;
  /** Bytes the matrix holds in Wasm memory (= denseMatrixBytes): what a budget counts. */
  readonly bytes: number;
}

export const SOURCE_BYTES: Record<DenseSourceDType, number> = { F32: 4, BF16: 2, F16: 2 };

const roundUp = (v: number, m: number) => Math.ceil(v / m) * m;

/** Throws a RangeError naming the bad argument (rows/cols positive integers, group valid). */
export function checkDenseShape(rows: number, cols: number, format: DenseFormat, group: number): void {
  for (const [name, v] of [
    ["rows", rows],
    ["cols", cols],
  ] as const) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${v}`);
  }
  if (format === "int8" && (!Number.isInteger(group) || group < 16 || group > MAX_GROUP || group % 16 !== 0)) {
    throw new RangeError(`group must be a multiple of 16 in 16..${MAX_GROUP} for int8, got ${group}`);
  }
  if (format !== "f32" && format !== "bf16" && format !== "int8") {
    throw new RangeError(`unknown dense format "${String(format)}"`);
  }
}

/** Padded row length (values) of a format: cols, cols8 or colsG. */
export function paddedCols(cols: number, format: DenseFormat, group: number): number {
  if (format === "f32") return cols;
  if (format === "bf16") return roundUp(cols, 8);
  return roundUp(cols, group);
}

/** Exact bytes a [rows, cols] matrix takes in Wasm memory (a multiple of 16). */
export function denseMatrixBytes(
  rows: number,
  cols: number,
  format: DenseFormat,
  group = format === "int8" ? DEFAULT_GROUP : 0,
): number {
  checkDenseShape(rows, cols, format, group);
  let bytes: number;
  if (format === "f32") bytes = rows * cols * 4;
  else if (format === "bf16") bytes = rows * roundUp(cols, 8) * 2;
  else {
    const colsG = roundUp(cols, group);
    bytes = rows * colsG + rows * (colsG / group) * 4;
  }
  return roundUp(bytes, 16);
}

/** Scratch bytes `Kernels.matmulDense` needs for n tokens (int8: quantized activations). */
export function denseScratchBytes(m: Pick<DenseMatrix, "cols" | "format" | "group">, n: number): number {
  if (m.format !== "int8") return 0;
  return roundUp(n * 4, 16) + n * roundUp(m.cols, m.group) * 2;
}

const f32Buf = new Float32Array(1);
const u32Buf = new Uint32Array(f32Buf.buffer);

/** f32 → bf16 bits, round to nearest even; NaN stays a (quiet) NaN. */
export function f32ToBf16(v: number): number {
  f32Buf[0] = v;
  const u = u32Buf[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** bf16 bits → f32 value (exact). */
export function bf16ToF32(b: number): number {
  u32Buf[0] = (b & 0xffff) << 16;
  return f32Buf[0];
}

/** Position (in u16 units) of column k in a bf16 row (blocks of 8 stored w0 w4 w1 w5 w2 w6 w3 w7). */
export function bf16Slot(k: number): number {
  const m = k & 7;
  return (k & ~7) + (m < 4 ? 2 * m : 2 * (m - 4) + 1);
}

/**
 * Quantizes one row w[0..cols) to int8 groups: q (colsG int8, zero-padded) and scales (colsG /
 * group f32), each group's scale = max|w| / d for the d of `divisors` with the least squared error
 * (src/kernels/q8-scale.ts): absmax by default (the dense stages), Q8_DIVISORS for experts. The only
 * int8 group quantizer: the loader and the one-shot reference both call it.
 */
export function quantizeRowQ8g(
  w: ArrayLike<number>,
  cols: number,
  group: number,
  q: Int8Array,
  scales: Float32Array,
  divisors: readonly number[] = Q8_ABSMAX,
): void {
  const groups = scales.length;
  for (let g = 0; g < groups; g++) {
    const k0 = g * group;
    const k1 = Math.min(cols, k0 + group);
    const [scale, inv] = searchQ8Scale(w, k0, k1, divisors);
    scales[g] = scale;
    for (let k = k0; k < k1; k++) q[k] = q8Value(w[k], inv);
    for (let k = k1; k < k0 + group; k++) q[k] = 0;
  }
}

/** An int8 group-scaled matrix in plain arrays (q [rows, colsG], scales [rows, colsG / group]). */
export interface Q8gMatrix {
  rows: number;
  cols: number;
  group: number;
  q: Int8Array;
  scales: Float32Array;
}

/** One-shot int8 group quantization of w [rows, cols] (the loader's result, as plain arrays). */
export function quantizeQ8g(
  w: Float32Array,
  rows: number,
  cols: number,
  group: number,
  divisors: readonly number[] = Q8_ABSMAX,
): Q8gMatrix {
  const colsG = roundUp(cols, group);
  const groups = colsG / group;
  const q = new Int8Array(rows * colsG);
  const scales = new Float32Array(rows * groups);
  for (let j = 0; j < rows; j++) {
    const row = w.subarray(j * cols, (j + 1) * cols);
    const rowScales = scales.subarray(j * groups, (j + 1) * groups);
    quantizeRowQ8g(row, cols, group, q.subarray(j * colsG, (j + 1) * colsG), rowScales, divisors);
  }
  return { rows, cols, group, q, scales };
}

/** Dequantized f32 copy [rows, cols] of an int8 group matrix: f32(scale · q), exactly as gathered. */
export function dequantizeQ8g(m: Q8gMatrix): Float32Array {
  const colsG = roundUp(m.cols, m.group);
  const groups = colsG / m.group;
  const w = new Float32Array(m.rows * m.cols);
  for (let j = 0; j < m.rows; j++) {
    for (let k = 0; k < m.cols; k++) {
      w[j * m.cols + k] = Math.fround(m.scales[j * groups + Math.floor(k / m.group)] * m.q[j * colsG + k]);
    }
  }
  return w;
}

/** Serializes an int8 group matrix into the Wasm layout (dst of denseMatrixBytes bytes). */
export function packQ8g(dst: Uint8Array, m: Q8gMatrix): void {
  const qBytes = m.q.length;
  new Int8Array(dst.buffer, dst.byteOffset, qBytes).set(m.q);
  const scaleBytes = new Uint8Array(m.scales.buffer, m.scales.byteOffset, m.scales.length * 4);
  new Uint8Array(dst.buffer, dst.byteOffset + qBytes, scaleBytes.length).set(scaleBytes);
}

/** Bytes of one expert in the group-scaled int8 format (assembly/expert-q8g.ts): w1, w3 [dFf, dModel]
 * and w2 [dModel, dFf], each an int8 dense matrix. */
export function expertQ8gBytes(dModel: number, dFf: number, group: number): number {
  return 2 * denseMatrixBytes(dFf, dModel, "int8", group) + denseMatrixBytes(dModel, dFf, "int8", group);
}

/** Scratch bytes of `Kernels.expertFfnQ8g` for n tokens. */
export function expertQ8gScratchBytes(n: number, dModel: number, dFf: number, group: number): number {
  const wide = Math.max(roundUp(dModel, group), roundUp(dFf, group));
  return 2 * roundUp(n * dFf * 4, 16) + roundUp(n * 4, 16) + n * wide * 2;
}

/** Quantizes (searched scales, as experts load) and lays out one expert (w1, w3 [dFf, dModel], w2
 * [dModel, dFf]) into dst of expertQ8gBytes bytes; returns the three quantized matrices (for references). */
export function packExpertQ8g(
  dst: Uint8Array,
  w1: Float32Array,
  w3: Float32Array,
  w2: Float32Array,
  dModel: number,
  dFf: number,
  group: number,
): { w1: Q8gMatrix; w3: Q8gMatrix; w2: Q8gMatrix } {
  const q = {
    w1: quantizeQ8g(w1, dFf, dModel, group, Q8_DIVISORS),
    w3: quantizeQ8g(w3, dFf, dModel, group, Q8_DIVISORS),
    w2: quantizeQ8g(w2, dModel, dFf, group, Q8_DIVISORS),
  };
  const gu = denseMatrixBytes(dFf, dModel, "int8", group);
  dst.fill(0, 0, expertQ8gBytes(dModel, dFf, group));
  packQ8g(dst.subarray(0, gu), q.w1);
  packQ8g(dst.subarray(gu, 2 * gu), q.w3);
  packQ8g(dst.subarray(2 * gu), q.w2);
  return q;
}
