/**
 * @module q4g-format — 4-bit group-wise expert weights (assembly/expert-q4g.ts): quantization,
 * exact byte sizes, and the Wasm layout. Runs once per expert (ExpertStore load or
 * scripts/convert.ts --quant int4), never per request.
 *
 * Per group of `group` inputs of a row (group a multiple of 32, ≤ 512), llama.cpp Q4_0-style: the
 * weight m of largest magnitude sets scale d = bf16(m / −8), q = clamp(nearest-even(w / d), −8, 7),
 * so the extreme weight is exact and all 16 levels are used; ŵ = f32(d · q). The scale is kept as
 * bf16 (2 bytes: 0.5625 bytes a weight with groups of 32) because widening it is one shift in the
 * kernel; its 8-bit mantissa costs far less than the 4-bit rounding itself. An all-zero group has
 * scale 0.
 *
 * Layout of a [rows, cols] matrix: [nibbles rows × colsG/2][scales rows × colsG/group u16 bf16],
 * rounded up to 16 bytes; 32 inputs k0..k0+31 are 16 bytes, byte i = (q[k0+i] + 8) | (q[k0+16+i] + 8) << 4.
 */
import { bf16ToF32, f32ToBf16 } from "./dense-format";
import type { Q8gRef } from "./reference";

/** Default 4-bit group: llama.cpp's Q4_0 size; measured in docs-snippets/h8-readme.md. */
export const Q4_GROUP = 32;
export const Q4_MAX_GROUP = 512;

const roundUp = (v: number, m: number) => Math.ceil(v / m) * m;
const ROUND = 6755399441055744; // 1.5·2^52: round half to even as the FPU does

/** An int4 group matrix as plain arrays: q [rows, colsG] in [-8, 7], scales [rows, colsG/group] bf16 bits. */
export interface Q4gMatrix {
  rows: number;
  cols: number;
  group: number;
  q: Int8Array;
  scales: Uint16Array;
}

export function checkQ4Group(group: number): void {
  if (!Number.isInteger(group) || group < 32 || group > Q4_MAX_GROUP || group % 32 !== 0) {
    throw new RangeError(`group must be a multiple of 32 in 32..${Q4_MAX_GROUP} for int4, got ${group}`);
  }
}

/** Exact bytes of a [rows, cols] int4 matrix in Wasm memory (a multiple of 16). */
export function q4gMatrixBytes(rows: number, cols: number, group: number): number {
  checkQ4Group(group);
  const colsG = roundUp(cols, group);
  return roundUp(rows * (colsG / 2) + rows * (colsG / group) * 2, 16);
}

/** Quantizes one row w[0..cols) into q (colsG values, zero-padded) and scales (colsG / group bf16 bits). */
export function quantizeRowQ4g(
  w: ArrayLike<number>,
  cols: number,
  group: number,
  q: Int8Array,
  scales: Uint16Array,
): void {
  for (let g = 0; g < scales.length; g++) {
    const k0 = g * group;
    const k1 = Math.min(cols, k0 + group);
    let m = 0;
    for (let k = k0; k < k1; k++) if (Math.abs(w[k]) > Math.abs(m)) m = w[k];
    const bits = f32ToBf16(m / -8);
    const d = bf16ToF32(bits);
    scales[g] = d === 0 ? 0 : bits;
    const inv = d === 0 ? 0 : 1 / d;
    for (let k = k0; k < k1; k++) q[k] = Math.max(-8, Math.min(7, w[k] * inv + ROUND - ROUND));
    for (let k = k1; k < k0 + group; k++) q[k] = 0;
  }
}

/** One-shot int4 group quantization of w [rows, cols]. */
export function quantizeQ4g(w: Float32Array, rows: number, cols: number, group: number): Q4gMatrix {
  checkQ4Group(group);
  const colsG = roundUp(cols, group);
  const groups = colsG / group;
  const q = new Int8Array(rows * colsG);
  const scales = new Uint16Array(rows * groups);
  for (let j = 0; j < rows; j++) {
    quantizeRowQ4g(
      w.subarray(j * cols, (j + 1) * cols),
      cols,
      group,
      q.subarray(j * colsG, (j + 1) * colsG),
      scales.subarray(j * groups, (j + 1) * groups),
    );
  }
  return { rows, cols, group, q, scales };
}

/** The matrix as the int8 group reference reads it (same integer dots, scales widened exactly). */
export function q4gAsRef(m: Q4gMatrix): Q8gRef {
  return { group: m.group, q: m.q, scales: Float32Array.from(m.scales, bf16ToF32) };
}

/** Dequantized f32 copy [rows, cols]: f32(scale · q). */
export function dequantizeQ4g(m: Q4gMatrix): Float32Array {
  const colsG = roundUp(m.cols, m.group);
  const groups = colsG / m.group;
  const w = new Float32Array(m.rows * m.cols);
  for (let j = 0; j < m.rows; j++) {
    for (let k = 0; k < m.cols; k++) {
      w[j * m.cols + k] = bf16ToF32(m.scales[j * groups + Math.floor(k / m.group)]) * m.q[j * colsG + k];
    }
  }
  return w;
}

/** Nibble bytes [rows, colsG/2] of q (the checkpoint's `.qweight` U8 tensor and the Wasm layout). */
export function packNibbles(q: Int8Array, rows: number, colsG: number): Uint8Array {
  const out = new Uint8Array(rows * (colsG / 2));
  for (let j = 0; j < rows; j++) {
    const src = j * colsG;
    const dst = j * (colsG / 2);
    for (let k0 = 0; k0 < colsG; k0 += 32) {
      for (let i = 0; i < 16; i++) {
        out[dst + k0 / 2 + i] = (q[src + k0 + i] + 8) | ((q[src + k0 + 16 + i] + 8) << 4);
      }
    }
  }
  return out;
}

/** Inverse of packNibbles. */
export function unpackNibbles(b: Uint8Array, rows: number, colsG: number): Int8Array {
  const q = new Int8Array(rows * colsG);
  for (let j = 0; j < rows; j++) {
    const src = j * (colsG / 2);
    const dst = j * colsG;
    for (let k0 = 0; k0 < colsG; k0 += 32) {
      for (let i = 0; i < 16; i++) {
        const v = b[src + k0 / 2 + i];
        q[dst + k0 + i] = (v & 15) - 8;
        q[dst + k0 + 16 + i] = (v >> 4) - 8;
      }
    }
  }
  return q;
}

/** Serializes an int4 group matrix into dst of q4gMatrixBytes bytes. */
export function packQ4g(dst: Uint8Array, m: Q4gMatrix): void {
  const colsG = roundUp(m.cols, m.group);
  const nib = packNibbles(m.q, m.rows, colsG);
  dst.fill(0, 0, q4gMatrixBytes(m.rows, m.cols, m.group));
  dst.set(nib, 0);
  dst.set(new Uint8Array(m.scales.buffer, m.scales.byteOffset, m.scales.length * 2), nib.length);
}

/** One expert as int4 group matrices: gate and up [dFf, dModel], down [dModel, dFf]. */
export interface Q4gExpert {
  w1: Q4gMatrix;
  w3: Q4gMatrix;
  w2: Q4gMatrix;
}

/** Bytes of one expert in the int4 group format (assembly/expert-q4g.ts blob). */
export function expertQ4gBytes(dModel: number, dFf: number, group: number): number {
  return 2 * q4gMatrixBytes(dFf, dModel, group) + q4gMatrixBytes(dModel, dFf, group);
}

/** Scratch bytes of `Kernels.expertFfnQ4g` for n tokens (the same as the int8 group expert's). */
export function expertQ4gScratchBytes(n: number, dModel: number, dFf: number, group: number): number {
  const wide = Math.max(roundUp(dModel, group), roundUp(dFf, group));
  return 2 * roundUp(n * dFf * 4, 16) + roundUp(n * 4, 16) + n * wide * 2;
}

/** Quantizes one f32 expert. */
export function quantizeExpertQ4g(
  w1: Float32Array,
  w3: Float32Array,
  w2: Float32Array,
  dModel: number,
  dFf: number,
  group: number,
): Q4gExpert {
  return {
    w1: quantizeQ4g(w1, dFf, dModel, group),
    w3: quantizeQ4g(w3, dFf, dModel, group),
    w2: quantizeQ4g(w2, dModel, dFf, group),
  };
}

/** Lays out a quantized expert into dst of expertQ4gBytes bytes. */
export function packExpertQ4g(dst: Uint8Array, e: Q4gExpert, dModel: number, dFf: number): void {
  const group = e.w1.group;
  const gu = q4gMatrixBytes(dFf, dModel, group);
  packQ4g(dst.subarray(0, gu), e.w1);
  packQ4g(dst.subarray(gu, 2 * gu), e.w3);
  packQ4g(dst.subarray(2 * gu), e.w2);
}
