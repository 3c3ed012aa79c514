/**
 * @module q4g-format — 4-bit group-wise expert weights (assembly/expert-q4g.ts): quantization,
 * exact byte sizes, and the Wasm layout. Runs once per expert (ExpertStore load or
 * scripts/convert.ts --quant int4), never per request.
 *
 * Per group of `group` inputs of a row (group a multiple of 32, ≤ 512): q ∈ [-8, 7] and a scale d,
 * ŵ = f32(d · q). d is searched per group for the least squared error (quantizeRowQ4g), and every d
 * of a row is an integer sub-scale (|sub| ≤ 255) times one power of two per row — so a bf16 holds
 * it exactly (the checkpoint's `.scales`), and the kernel multiplies integer group sums by integer
 * subs (one i16 multiply-add) and rescales in f32 once per row, not once per group.
 *
 * Wasm layout of a [rows, cols] matrix: [nibbles rows × colsG/2][row units f32 × rows]
 * [subs i16 rows × colsG/group], rounded up to 16 bytes; 32 inputs k0..k0+31 are 16 bytes,
 * byte i = (q[k0+i] + 8) | (q[k0+16+i] + 8) << 4; in Wasm memory rows are in panels of 4 (per 32
 * inputs 4 columns of 16 bytes, each 4 bytes of every row: panelNibbles, panelSubs), the
 * checkpoint's `.qweight` and `.scales` are row-major.
 */
import { bf16ToF32, f32ToBf16 } from "./dense-format";
import type { Q8gRef } from "./reference";

/** Default 4-bit group: llama.cpp's Q4_0 size; chosen by measurement (README "Expert accuracy": groups of 64
 * are 10–15% faster at 12% more weight error). */
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
  return roundUp(rows * (colsG / 2) + rows * 4 + rows * (colsG / group) * 2, 16);
}

/** Largest |sub-scale| (src/kernels/q4g-format.ts splitQ4Scales): 8 significant bits, so sub · 2^e is
 * exactly a bf16 (the kernel's integer bound: |sub · q · x| ≤ 255 · 8 · 127 per input). */
export const Q4_SUB_MAX = 255;
/** Scale divisors tried per group (the Q4_0 choice m / 8 is one of them). */
const DIVISORS = Array.from({ length: 17 }, (_, i) => 6.5 + i / 8);

/** Σ (w − s·clamp(nearest-even(w / s), −8, 7))² over w[k0..k1): the error of scale s. */
function groupError(w: ArrayLike<number>, k0: number, k1: number, s: number): number {
  const inv = 1 / s;
  let e = 0;
  for (let k = k0; k < k1; k++) {
    const q = Math.max(-8, Math.min(7, w[k] * inv + ROUND - ROUND));
    const d = w[k] - Math.fround(s * q);
    e += d * d;
  }
  return e;
}

/**
 * Quantizes one row w[0..cols) into q (colsG values, zero-padded) and scales (colsG / group bf16
 * bits). Every scale of the row is sub · 2^e with one power of two per row and an integer
 * |sub| ≤ Q4_SUB_MAX (so the kernel keeps integer sub-scales and one f32 per row, and a bf16 holds
 * each scale exactly); per group the sub with the least squared error is searched (both signs,
 * divisors 6.5..8.5 of the group's largest magnitude — the llama.cpp quantizers' idea).
 */
export function quantizeRowQ4g(
  w: ArrayLike<number>,
  cols: number,
  group: number,
  q: Int8Array,
  scales: Uint16Array,
): void {
  let rowMax = 0;
  for (let k = 0; k < cols; k++) rowMax = Math.max(rowMax, Math.abs(w[k]));
  // The row's power of two: the largest group's biggest candidate sub (divisor 6.5) fits in 8 bits.
  const unit = rowMax > 0 ? 2 ** Math.max(-126, Math.ceil(Math.log2(rowMax / (6.5 * Q4_SUB_MAX)))) : 0;
  for (let g = 0; g < scales.length; g++) {
    const k0 = g * group;
    const k1 = Math.min(cols, k0 + group);
    let amax = 0;
    for (let k = k0; k < k1; k++) amax = Math.max(amax, Math.abs(w[k]));
    let best = 0;
    let bestErr = Number.POSITIVE_INFINITY;
    if (amax > 0 && unit > 0) {
      let last = 0;
      for (const div of DIVISORS) {
        const sub = Math.max(1, Math.min(Q4_SUB_MAX, Math.round(amax / (div * unit))));
        if (sub === last) continue;
        last = sub;
        for (const s of [sub * unit, -sub * unit]) {
          const e = groupError(w, k0, k1, s);
          if (e < bestErr) [best, bestErr] = [s, e];
        }
      }
    }
    scales[g] = best === 0 ? 0 : f32ToBf16(best);
    const inv = best === 0 ? 0 : 1 / best;
    for (let k = k0; k < k1; k++) q[k] = Math.max(-8, Math.min(7, w[k] * inv + ROUND - ROUND));
    for (let k = k1; k < k0 + group; k++) q[k] = 0;
  }
}

/**
 * A row's bf16 group scales as the kernel holds them: one f32 power of two `unit` and integer
 * subs with scale = sub · unit, |sub| ≤ Q4_SUB_MAX. Exact for scales written by quantizeRowQ4g;
 * scales from elsewhere whose small ones have more bits than fit are rounded — so a checkpoint's
 * stored scales are checked with inexactQ4Scale at load, and refused.
 */
export function splitQ4Scales(scales: Uint16Array, sub: Int16Array): number {
  let emax = 0;
  for (let g = 0; g < scales.length; g++) emax = Math.max(emax, (scales[g] >> 7) & 0xff);
  if (emax === 0) {
    sub.fill(0);
    return 0;
  }
  const unit = 2 ** Math.max(-126, emax - 127 - 7);
  for (let g = 0; g < scales.length; g++) {
    sub[g] = Math.max(-Q4_SUB_MAX, Math.min(Q4_SUB_MAX, Math.round(bf16ToF32(scales[g]) / unit)));
  }
  return unit;
}

/**
 * Index of the first group whose bf16 scale splitQ4Scales cannot hold exactly (sub · unit ≠ scale),
 * or -1. Scales [rows, groups]. Checkpoints converted before the kernel held scales as integer subs
 * have small scales with more bits than a sub keeps: they would load as changed weights.
 */
export function inexactQ4Scale(scales: Uint16Array, groups: number): number {
  const sub = new Int16Array(groups);
  for (let j = 0; j * groups < scales.length; j++) {
    const row = scales.subarray(j * groups, (j + 1) * groups);
    const unit = splitQ4Scales(row, sub);
    for (let g = 0; g < row.length; g++) if (sub[g] * unit !== bf16ToF32(row[g])) return j * groups + g;
  }
  return -1;
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

/** The kernel's scales of a matrix: per row a power-of-two unit, per group an integer sub. */
export function q4gKernelScales(m: Q4gMatrix): { units: Float32Array; subs: Int16Array } {
  const groups = roundUp(m.cols, m.group) / m.group;
  const units = new Float32Array(m.rows);
  const subs = new Int16Array(m.rows * groups);
  for (let j = 0; j < m.rows; j++) {
    units[j] = splitQ4Scales(
      m.scales.subarray(j * groups, (j + 1) * groups),
      subs.subarray(j * groups, (j + 1) * groups),
    );
  }
  return { units, subs };
}

/** Row-major nibble rows → the kernel's 4-row panels: per 32 inputs 64 bytes, 4 columns of 16,
 * column c holding bytes 4c..4c+3 of the panel's rows 0, 1, 2, 3 in turn (one load gives 4 weights
 * of each row); the rows after the last whole panel stay row-major. */
export function panelNibbles(nib: Uint8Array, rows: number, colsG: number): Uint8Array {
  const wRow = colsG / 2;
  const out = nib.slice();
  for (let j0 = 0; j0 + 4 <= rows; j0 += 4) {
    for (let r = 0; r < 4; r++) {
      const src = (j0 + r) * wRow;
      for (let m = 0; m < wRow; m++) {
        const b = m >> 4;
        const i = m & 15;
        out[j0 * wRow + b * 64 + (i >> 2) * 16 + r * 4 + (i & 3)] = nib[src + m];
      }
    }
  }
  return out;
}

/** Row-major subs [rows, groups] → the kernel's: a panel's as [group][4 rows], the rest row-major. */
export function panelSubs(subs: Int16Array, rows: number, groups: number): Int16Array {
  const out = subs.slice();
  for (let j0 = 0; j0 + 4 <= rows; j0 += 4) {
    for (let r = 0; r < 4; r++) {
      for (let g = 0; g < groups; g++) out[j0 * groups + g * 4 + r] = subs[(j0 + r) * groups + g];
    }
  }
  return out;
}

/** Serializes an int4 group matrix into dst of q4gMatrixBytes bytes. */
export function packQ4g(dst: Uint8Array, m: Q4gMatrix): void {
  const colsG = roundUp(m.cols, m.group);
  const nib = panelNibbles(packNibbles(m.q, m.rows, colsG), m.rows, colsG);
  const scales = q4gKernelScales(m);
  const units = scales.units;
  const subs = panelSubs(scales.subs, m.rows, colsG / m.group);
  dst.fill(0, 0, q4gMatrixBytes(m.rows, m.cols, m.group));
  dst.set(nib, 0);
  dst.set(new Uint8Array(units.buffer), nib.length);
  dst.set(new Uint8Array(subs.buffer), nib.length + units.byteLength);
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

/** Scratch bytes of `Kernels.expertFfnQ4g` for n tokens (the same as the int8 group expert's: h, u,
 * token scales, then 8-bit activations n × wide and their zero points n × wide / 8; room for n × wide
 * more is kept so the size stays the int8 group expert's). */
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
