/**
 * @module expert-q4g — one SwiGLU expert on 4-bit weights with one bf16 scale per group of inputs
 * (issue 14 item 1): half the bytes of int8, for decode that is bound by reading weights.
 *
 * Matrix [rows, cols] (src/kernels/q4g-format.ts writes it): [nibbles: rows × colsG/2 bytes]
 * [scales: rows × colsG/group bf16], colsG = cols rounded up to group (a multiple of 32), the whole
 * rounded up to 16 bytes. Each 32 inputs of a row are 16 bytes: byte i holds q[k0 + i] + 8 in its
 * low nibble and q[k0 + 16 + i] + 8 in its high nibble, q ∈ [-8, 7] (so one load, one mask and
 * one shift give 32 weights in input order). w[j, k] ≈ scale[j, k / group] · q[j, k].
 *
 * Activations are the dense int8 path's (assembly/dense.ts quantizeTokens: 16-bit per token), so
 * each group is an exact integer dot (i32x4.dot_i16x8_s: |Σ| ≤ 512·8·32767 < 2^31) rescaled once by
 * its scale in f32. Expert blob: [w1 (gate) dFf × dModel][w3 (up)][w2 (down) dModel × dFf];
 * scratch as expert-q8g.ts (src/kernels/q4g-format.ts expertQ4gScratchBytes). In the relaxed build,
 * while the host has a relaxed dot enabled, the matmuls run on it instead (expert-q4g-relaxed.ts,
 * 8-bit activations); `q4ActivationBits()` says which.
 */
import { quantizeTokens } from "./dense";
import { matmulQ4gRelaxed, quantizeTokensI8 } from "./expert-q4g-relaxed";
import { relaxedDotForm } from "./q8";
import { hsum4, hsum4i, madd, storeColumn } from "./simd-math";
import { siluMul } from "./silu-mul";

// @ts-ignore: decorator
@inline
function align16(b: usize): usize {
  return (b + 15) & ~<usize>15;
}

function q4gBytes(rows: i32, cols: i32, group: i32): usize {
  const colsG = <usize>(((cols + group - 1) / group) * group);
  return align16(<usize>rows * (colsG >> 1) + <usize>rows * (colsG / <usize>group) * 2);
}

/** f32 of the bf16 scale at p. */
// @ts-ignore: decorator
@inline
function scaleAt(p: usize): f32 {
  return reinterpret<f32>(<u32>load<u16>(p) << 16);
}

export function expertFfnQ4g(
  out: usize, x: usize, blob: usize, n: i32, dModel: i32, dFf: i32, group: i32, scratch: usize,
): void {
  const dmG = ((dModel + group - 1) / group) * group;
  const dfG = ((dFf + group - 1) / group) * group;
  const hBytes = align16(<usize>n * <usize>dFf * 4);
  const h = scratch;
  const u = h + hBytes;
  const sx = u + hBytes;
  const xq = sx + align16(<usize>n << 2);
  const w1 = blob;
  const w3 = w1 + q4gBytes(dFf, dModel, group);
  const w2 = w3 + q4gBytes(dFf, dModel, group);
  if (ASC_FEATURE_RELAXED_SIMD) {
    const form = relaxedDotForm();
    if (form > 0) {
      // 8-bit activations (n·wide bytes), then their group sums, in the 16-bit path's room.
      const xs = xq + <usize>n * <usize>max(dmG, dfG);
      quantizeTokensI8(xq, sx, xs, x, n, dModel, dmG, group);
      matmulQ4gRelaxed(h, xq, sx, xs, w1, n, dFf, dmG, group, form);
      matmulQ4gRelaxed(u, xq, sx, xs, w3, n, dFf, dmG, group, form);
      siluMul(h, h, u, n * dFf);
      quantizeTokensI8(xq, sx, xs, h, n, dFf, dfG, group);
      matmulQ4gRelaxed(out, xq, sx, xs, w2, n, dModel, dfG, group, form);
      return;
    }
  }
  quantizeTokens(xq, sx, x, n, dModel, dmG);
  matmulQ4gQuantized(h, xq, sx, w1, n, dFf, dmG, group);
  matmulQ4gQuantized(u, xq, sx, w3, n, dFf, dmG, group);
  siluMul(h, h, u, n * dFf);
  quantizeTokens(xq, sx, h, n, dFf, dfG);
  matmulQ4gQuantized(out, xq, sx, w2, n, dModel, dfG, group);
}

/** Activation bits the int4 expert uses now: 8 on the relaxed dot, else 16. */
export function q4ActivationBits(): i32 {
  return ASC_FEATURE_RELAXED_SIMD && relaxedDotForm() > 0 ? 8 : 16;
}

/** out[n, dOut] = xq · wᵀ on a 4-bit group matrix, xq [n, colsG] i16 with token scales sx. */
export function matmulQ4gQuantized(
  out: usize, xq: usize, sx: usize, w: usize, n: i32, dOut: i32, colsG: i32, group: i32,
): void {
  const groups = colsG / group;
  const scales = w + <usize>dOut * <usize>(colsG >> 1);
  if (ASC_FEATURE_SIMD) {
    const n4 = n & ~3;
    if (n4 > 0) q4gTiles4x2(out, xq, sx, w, scales, n4, dOut, colsG, group, groups);
    q4gSimd(out, xq, sx, w, scales, n4, n, dOut, colsG, group, groups);
  } else q4gScalar(out, xq, sx, w, scales, n, dOut, colsG, group, groups);
}

function q4gScalar(
  out: usize, xq: usize, sx: usize, w: usize, scales: usize, n: i32, dOut: i32, colsG: i32, group: i32, groups: i32,
): void {
  const xRow = <usize>colsG << 1;
  const wRow = <usize>(colsG >> 1);
  for (let t = 0; t < n; t++) {
    const xt = xq + <usize>t * xRow;
    const st = load<f32>(sx + (<usize>t << 2));
    for (let j = 0; j < dOut; j++) {
      const wj = w + <usize>j * wRow;
      const sj = scales + (<usize>j * <usize>groups << 1);
      let acc: f32 = 0;
      for (let g = 0; g < groups; g++) {
        let s: i32 = 0;
        for (let k = g * group; k < (g + 1) * group; k += 32) {
          const wb = wj + <usize>(k >> 1);
          const xk = xt + (<usize>k << 1);
          for (let i = 0; i < 16; i++) {
            const b = <i32>load<u8>(wb + <usize>i);
            s += ((b & 15) - 8) * <i32>load<i16>(xk + (<usize>i << 1));
            s += ((b >> 4) - 8) * <i32>load<i16>(xk + (<usize>(i + 16) << 1));
          }
        }
        acc += <f32>s * scaleAt(sj + (<usize>g << 1));
      }
      store<f32>(out + ((<usize>t * <usize>dOut + <usize>j) << 2), acc * st);
    }
  }
}

/** acc + Σ of the 32 weights in the 16 bytes v times 32 i16 activations at x. */
// @ts-ignore: decorator
@inline
function dot32(acc: v128, v: v128, x: usize): v128 {
  const eight = i8x16.splat(8);
  const lo = i8x16.sub(v128.and(v, i8x16.splat(15)), eight);
  const hi = i8x16.sub(i8x16.shr_u(v, 4), eight);
  let s = i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(lo), v128.load(x));
  s = i32x4.add(s, i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(lo), v128.load(x, 16)));
  s = i32x4.add(s, i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(hi), v128.load(x, 32)));
  s = i32x4.add(s, i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(hi), v128.load(x, 48)));
  return i32x4.add(acc, s);
}

/** Tokens t0..n-1, one token at a time over 4-row blocks (decode, and tokens left after the tiles). */
function q4gSimd(
  out: usize, xq: usize, sx: usize, w: usize, scales: usize, t0: i32, n: i32, dOut: i32, colsG: i32, group: i32,
  groups: i32,
): void {
  const xRow = <usize>colsG << 1;
  const wRow = <usize>(colsG >> 1);
  const sRow = <usize>groups << 1;
  const oRow = <usize>dOut << 2;
  let j = 0;
  for (; j + 4 <= dOut; j += 4) {
    const w0 = w + <usize>j * wRow;
    const s0 = scales + <usize>j * sRow;
    for (let t = t0; t < n; t++) {
      const xt = xq + <usize>t * xRow;
      let f0 = f32x4.splat(0), f1 = f32x4.splat(0), f2 = f32x4.splat(0), f3 = f32x4.splat(0);
      for (let g = 0; g < groups; g++) {
        let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
        const k0 = <usize>(g * group);
        const k1 = k0 + <usize>group;
        for (let k = k0; k < k1; k += 32) {
          const xk = xt + (k << 1);
          const wk = w0 + (k >> 1);
          a0 = dot32(a0, v128.load(wk), xk);
          a1 = dot32(a1, v128.load(wk + wRow), xk);
          a2 = dot32(a2, v128.load(wk + 2 * wRow), xk);
          a3 = dot32(a3, v128.load(wk + 3 * wRow), xk);
        }
        const sg = s0 + (<usize>g << 1);
        f0 = madd(f32x4.convert_i32x4_s(a0), f32x4.splat(scaleAt(sg)), f0);
        f1 = madd(f32x4.convert_i32x4_s(a1), f32x4.splat(scaleAt(sg + sRow)), f1);
        f2 = madd(f32x4.convert_i32x4_s(a2), f32x4.splat(scaleAt(sg + 2 * sRow)), f2);
        f3 = madd(f32x4.convert_i32x4_s(a3), f32x4.splat(scaleAt(sg + 3 * sRow)), f3);
      }
      const y = f32x4.mul(hsum4(f0, f1, f2, f3), f32x4.splat(load<f32>(sx + (<usize>t << 2))));
      v128.store(out + <usize>t * oRow + (<usize>j << 2), y);
    }
  }
  for (; j < dOut; j++) q4gOneRow(out, xq, sx, w, scales, j, t0, n, dOut, colsG, group, groups);
}

/** Row j for tokens t0..n-1 (rows left over after the row blocks). */
function q4gOneRow(
  out: usize, xq: usize, sx: usize, w: usize, scales: usize, j: i32, t0: i32, n: i32, dOut: i32, colsG: i32,
  group: i32, groups: i32,
): void {
  const wj = w + <usize>j * <usize>(colsG >> 1);
  const sj = scales + (<usize>j * <usize>groups << 1);
  const xRow = <usize>colsG << 1;
  for (let t = t0; t < n; t++) {
    const xt = xq + <usize>t * xRow;
    let f = f32x4.splat(0);
    for (let g = 0; g < groups; g++) {
      let a = i32x4.splat(0);
      const k0 = <usize>(g * group);
      for (let k = k0; k < k0 + <usize>group; k += 32) a = dot32(a, v128.load(wj + (k >> 1)), xt + (k << 1));
      f = madd(f32x4.convert_i32x4_s(a), f32x4.splat(scaleAt(sj + (<usize>g << 1))), f);
    }
    const s = (f32x4.extract_lane(f, 0) + f32x4.extract_lane(f, 1)) +
      (f32x4.extract_lane(f, 2) + f32x4.extract_lane(f, 3));
    store<f32>(out + ((<usize>t * <usize>dOut + <usize>j) << 2), s * load<f32>(sx + (<usize>t << 2)));
  }
}

/** acc + wl·xl + wh·xh as i16x8 dots (weights already widened). */
// @ts-ignore: decorator
@inline
function dotW(acc: v128, wl: v128, wh: v128, xl: v128, xh: v128): v128 {
  return i32x4.add(acc, i32x4.add(i32x4.dot_i16x8_s(wl, xl), i32x4.dot_i16x8_s(wh, xh)));
}

/**
 * Tokens 0..n4-1 in 4-token × 2-row tiles (as q8gTiles4x2 in dense.ts): each 16 weight bytes are
 * unpacked once and feed 4 tokens. Each 32-input step runs as two halves (low nibbles = inputs
 * 0..15, high = 16..31) to keep the widened weights of both rows and the 8 accumulators in registers.
 */
function q4gTiles4x2(
  out: usize, xq: usize, sx: usize, w: usize, scales: usize, n4: i32, dOut: i32, colsG: i32, group: i32, groups: i32,
): void {
  const xRow = <usize>colsG << 1;
  const wRow = <usize>(colsG >> 1);
  const sRow = <usize>groups << 1;
  const oRow = <usize>dOut << 2;
  const mask = i8x16.splat(15);
  const eight = i8x16.splat(8);
  let j = 0;
  for (; j + 2 <= dOut; j += 2) {
    const wa = w + <usize>j * wRow;
    const wb = wa + wRow;
    const sa = scales + <usize>j * sRow;
    for (let t = 0; t < n4; t += 4) {
      const x0 = xq + <usize>t * xRow;
      let fa = f32x4.splat(0);
      let fb = f32x4.splat(0);
      for (let g = 0; g < groups; g++) {
        let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
        let b0 = i32x4.splat(0), b1 = i32x4.splat(0), b2 = i32x4.splat(0), b3 = i32x4.splat(0);
        const k0 = <usize>(g * group);
        const k1 = k0 + <usize>group;
        for (let k = k0; k < k1; k += 32) {
          const va = v128.load(wa + (k >> 1));
          const vb = v128.load(wb + (k >> 1));
          for (let half = 0; half < 2; half++) {
            const qa = half == 0 ? i8x16.sub(v128.and(va, mask), eight) : i8x16.sub(i8x16.shr_u(va, 4), eight);
            const qb = half == 0 ? i8x16.sub(v128.and(vb, mask), eight) : i8x16.sub(i8x16.shr_u(vb, 4), eight);
            const wal = i16x8.extend_low_i8x16_s(qa);
            const wah = i16x8.extend_high_i8x16_s(qa);
            const wbl = i16x8.extend_low_i8x16_s(qb);
            const wbh = i16x8.extend_high_i8x16_s(qb);
            let xp = x0 + ((k + <usize>(half << 4)) << 1);
            let xl = v128.load(xp);
            let xh = v128.load(xp, 16);
            a0 = dotW(a0, wal, wah, xl, xh);
            b0 = dotW(b0, wbl, wbh, xl, xh);
            xp += xRow;
            xl = v128.load(xp);
            xh = v128.load(xp, 16);
            a1 = dotW(a1, wal, wah, xl, xh);
            b1 = dotW(b1, wbl, wbh, xl, xh);
            xp += xRow;
            xl = v128.load(xp);
            xh = v128.load(xp, 16);
            a2 = dotW(a2, wal, wah, xl, xh);
            b2 = dotW(b2, wbl, wbh, xl, xh);
            xp += xRow;
            xl = v128.load(xp);
            xh = v128.load(xp, 16);
            a3 = dotW(a3, wal, wah, xl, xh);
            b3 = dotW(b3, wbl, wbh, xl, xh);
          }
        }
        const sga = f32x4.splat(scaleAt(sa + (<usize>g << 1)));
        const sgb = f32x4.splat(scaleAt(sa + sRow + (<usize>g << 1)));
        fa = madd(f32x4.convert_i32x4_s(hsum4i(a0, a1, a2, a3)), sga, fa);
        fb = madd(f32x4.convert_i32x4_s(hsum4i(b0, b1, b2, b3)), sgb, fb);
      }
      const sxv = v128.load(sx + (<usize>t << 2));
      storeColumn(out + <usize>t * oRow + (<usize>j << 2), oRow, f32x4.mul(fa, sxv));
      storeColumn(out + <usize>t * oRow + (<usize>j << 2) + 4, oRow, f32x4.mul(fb, sxv));
    }
  }
  if (j < dOut) q4gOneRow(out, xq, sx, w, scales, j, 0, n4, dOut, colsG, group, groups);
}
