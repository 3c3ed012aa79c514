/**
 * @module packing — lays weights out the way the packed kernels stream them (assembly/packed.ts,
 * assembly/q8.ts), and quantizes them to symmetric int8. Runs once per expert, when an
 * ExpertStore loads it (or in scripts/convert.ts), never per request.
 *
 * f32 panels: 8 rows interleaved in k-blocks of 4 columns, panel[kb][r][c] = w[8p + r][4kb + c].
 * q8 panels: the same with 16 int8 columns per k-block, followed by one f32 scale and one i32 row
 * sum (Σ_k q) per padded row. Everything is zero-padded to 8 rows and to 4 (f32) or 16 (q8)
 * columns. An expert is one blob: the gate/up matrix — panel p holds w1 rows 4p..4p+3 then w3 rows
 * 4p..4p+3, so the kernel gets gate and up of the same outputs side by side — then w2.
 */
import { expertQ4gBytes, Q4_GROUP } from "./q4g-format";
import { expertQ8gBytes } from "./dense-format";
import { Q8_DIVISORS, q8Value, searchQ8Scale } from "./q8-scale";

/** How an expert's weights are held in Wasm memory: f32 panels, int8 panels with per-row scales,
 * int8 groups (src/kernels/dense-format.ts, Q8_EXPERT_GROUP inputs an f32 scale) or 4-bit groups
 * (src/kernels/q4g-format.ts, Q4_GROUP inputs a bf16 scale). */
export type ExpertDtype = "f32" | "q8" | "q8g" | "q4";

/** Inputs per scale of the group-wise int8 experts ("q8g": expertFfnQ8g on the dense int8 format). */
export const Q8_EXPERT_GROUP = 32;

/** Symmetric int8 rows: w[j, k] ≈ scales[j] · q[j, k], q ∈ [-127, 127]. */
export interface Q8Rows {
  q: Int8Array; // [rows, cols]
  scales: Float32Array; // [rows]
}

/** One expert quantized: gate and up [dFf, dModel], down [dModel, dFf]. */
export interface Q8Expert {
  w1: Q8Rows;
  w3: Q8Rows;
  w2: Q8Rows;
}

const roundUp = (v: number, m: number) => Math.ceil(v / m) * m;

/** Bytes of a packed f32 matrix [rows, cols]. */
export function packedF32Bytes(rows: number, cols: number): number {
  return roundUp(rows, 8) * roundUp(cols, 4) * 4;
}

/** Bytes of a packed q8 matrix [rows, cols], scales and row sums included. */
export function packedQ8Bytes(rows: number, cols: number): number {
  const rows8 = roundUp(rows, 8);
  return rows8 * roundUp(cols, 16) + rows8 * 8;
}

/** Bytes of one packed expert as an ExpertStore holds it in Wasm memory. */
export function expertPackedBytes(dtype: ExpertDtype, dModel: number, dFf: number): number {
  if (dtype === "q4") return expertQ4gBytes(dModel, dFf, Q4_GROUP);
  if (dtype === "q8g") return expertQ8gBytes(dModel, dFf, Q8_EXPERT_GROUP);
  if (dtype === "f32") {
    const df4 = roundUp(dFf, 4);
    return packedF32Bytes(2 * df4, dModel) + packedF32Bytes(dModel, df4);
  }
  const df16 = roundUp(dFf, 16);
  return packedQ8Bytes(2 * df16, dModel) + packedQ8Bytes(dModel, df16);
}

/** Source row v of a packed matrix: [array, offset of its first value], or null for a zero row. */
type RowSource<T> = (v: number) => readonly [T, number] | null;

function packPanelsF32(dst: Float32Array, rows8: number, cols: number, row: RowSource<Float32Array>): void {
  const kb = Math.ceil(cols / 4);
  dst.fill(0, 0, rows8 * kb * 4);
  for (let v = 0; v < rows8; v++) {
    const src = row(v);
    if (src === null) continue;
    const [a, off] = src;
    const base = (v >> 3) * kb * 32 + (v & 7) * 4;
    for (let k = 0; k < cols; k++) dst[base + (k >> 2) * 32 + (k & 3)] = a[off + k];
  }
}

/** Packs w [rows, cols] (row-major) into dst, which holds packedF32Bytes(rows, cols) / 4 floats. */
export function packF32(dst: Float32Array, w: Float32Array, rows: number, cols: number): void {
  packPanelsF32(dst, roundUp(rows, 8), cols, (v) => (v < rows ? [w, v * cols] : null));
}

/** Packs one expert (w1, w3 [dFf, dModel], w2 [dModel, dFf]) into dst of expertPackedBytes("f32") / 4 floats. */
export function packExpertF32(
  dst: Float32Array,
  w1: Float32Array,
  w3: Float32Array,
  w2: Float32Array,
  dModel: number,
  dFf: number,
): void {
  const df4 = roundUp(dFf, 4);
  const gateUpFloats = packedF32Bytes(2 * df4, dModel) / 4;
  packPanelsF32(dst.subarray(0, gateUpFloats), 2 * df4, dModel, (v) => {
    const j = 4 * (v >> 3) + (v & 3);
    if (j >= dFf) return null;
    return [(v & 4) === 0 ? w1 : w3, j * dModel];
  });
  packF32(dst.subarray(gateUpFloats), w2, dModel, dFf); // columns past dFf stay 0: they meet h's zero padding
}

/** round half to even, as f32x4.nearest does in the kernels. */
export function nearestEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Symmetric per-row int8: per row the scale with the least squared error among max_k |w[j, k]| / d
 * for the divisors d of Q8_DIVISORS (absmax d = 127 among them; src/kernels/q8-scale.ts), q =
 * clamp(nearest-even(w · d / max), ±127). An all-zero row gets scale 0 and q = 0. `divisors` = [127]
 * is plain absmax (error per weight ≤ scales[j] / 2).
 */
export function quantizeRowsQ8(
  w: Float32Array,
  rows: number,
  cols: number,
  divisors: readonly number[] = Q8_DIVISORS,
): Q8Rows {
  const q = new Int8Array(rows * cols);
  const scales = new Float32Array(rows);
  for (let j = 0; j < rows; j++) {
    const o = j * cols;
    const [scale, inv] = searchQ8Scale(w, o, o + cols, divisors);
    scales[j] = scale;
    for (let k = 0; k < cols; k++) q[o + k] = q8Value(w[o + k], inv);
  }
  return { q, scales };
}

/** Dequantized copy: scales[j] · q[j, k] (for references and accuracy checks). */
export function dequantizeQ8(m: Q8Rows, rows: number, cols: number): Float32Array {
  const w = new Float32Array(rows * cols);
  for (let j = 0; j < rows; j++) for (let k = 0; k < cols; k++) w[j * cols + k] = m.scales[j] * m.q[j * cols + k];
  return w;
}

function packPanelsQ8(dst: Uint8Array, rows8: number, cols: number, row: RowSource<Q8Rows>): void {
  const kb = Math.ceil(cols / 16);
  const panelsBytes = rows8 * kb * 16;
  const bytes = new Int8Array(dst.buffer, dst.byteOffset, panelsBytes);
  bytes.fill(0);
  const tail = new DataView(dst.buffer, dst.byteOffset + panelsBytes, rows8 * 8);
  for (let v = 0; v < rows8; v++) {
    const src = row(v);
    let scale = 0;
    let sum = 0;
    if (src !== null) {
      const [m, j] = src;
      const off = j * cols;
      const base = (v >> 3) * kb * 128 + (v & 7) * 16;
      for (let k = 0; k < cols; k++) {
        const q = m.q[off + k];
        bytes[base + (k >> 4) * 128 + (k & 15)] = q;
        sum += q;
      }
      scale = m.scales[j];
    }
    tail.setFloat32(4 * v, scale, true);
    tail.setInt32(4 * rows8 + 4 * v, sum, true);
  }
}

/** Packs q8 rows [rows, cols] into dst of packedQ8Bytes(rows, cols) bytes. */
export function packQ8(dst: Uint8Array, m: Q8Rows, rows: number, cols: number): void {
  packPanelsQ8(dst, roundUp(rows, 8), cols, (v) => (v < rows ? [m, v] : null));
}

/** Packs one quantized expert into dst of expertPackedBytes("q8") bytes. */
export function packExpertQ8(dst: Uint8Array, e: Q8Expert, dModel: number, dFf: number): void {
  const df16 = roundUp(dFf, 16);
  const gateUpBytes = packedQ8Bytes(2 * df16, dModel);
  packPanelsQ8(dst.subarray(0, gateUpBytes), 2 * df16, dModel, (v) => {
    const j = 4 * (v >> 3) + (v & 3);
    if (j >= dFf) return null;
    return [(v & 4) === 0 ? e.w1 : e.w3, j];
  });
  packQ8(dst.subarray(gateUpBytes), e.w2, dModel, dFf);
}
