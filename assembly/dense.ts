/**
 * @module dense — matmul and row gather on the stage weight formats (attention projections, dense
 * MLPs, routers, head rows, embeddings): y[n, dOut] = x[n, dIn] · W[dOut, dIn]ᵀ, f32 in and out.
 *
 * Two formats, both row-major so a loader can write rows as they stream in and a gather reads one
 * row without touching the others (src/kernels/dense-format.ts lays them out):
 *  - int8 with one f32 scale per `group` consecutive inputs of a row (group a multiple of 16,
 *    ≤ 512): [q: rows × colsG int8, colsG = cols rounded up to group, zero-padded]
 *    [scales: rows × (colsG / group) f32]; w[j, k] ≈ scale[j, k / group] · q[j, k].
 *    Activations are quantized per token to 16 bits (i16, scale max|x| / 32767), then each group is
 *    an exact integer dot (i32x4.dot_i16x8_s: |Σ| ≤ 512·127·32767 < 2^31) rescaled once by its
 *    weight scale in f32; the token scale multiplies the row sum. Error vs the f32 product with the
 *    dequantized weights: ≤ (s_x / 2)·Σ_k |ŵ[j, k]| plus f32 rounding (tests/unit/kernels).
 *  - bf16: in assembly/bf16.ts.
 *
 * Decode (n = 1) streams every weight once; the SIMD kernels run 4 rows at a time so each
 * activation vector loaded feeds 4 rows, and loop tokens inside a 4-row block so the block's
 * weights come from L1/L2 for every token after the first.
 */
import { hsum4i, madd, storeColumn } from "./simd-math";

/** Activation levels of the int8 path: 16-bit symmetric. */
const XQ_LEVELS: f32 = 32767;

// @ts-ignore: decorator
@inline
function align16(b: usize): usize {
  return (b + 15) & ~<usize>15;
}

/**
 * out[n, dOut] = x[n, dIn] · wᵀ on an int8 group-scaled matrix; scratch ≥ align16(4n) + 2·n·colsG
 * bytes (quantized activations, zero-padded to colsG).
 */
export function matmulQ8g(
  out: usize, x: usize, w: usize, n: i32, dIn: i32, dOut: i32, group: i32, scratch: usize,
): void {
  const colsG = ((dIn + group - 1) / group) * group;
  const sx = scratch;
  const xq = scratch + align16(<usize>n << 2);
  quantizeTokens(xq, sx, x, n, dIn, colsG);
  matmulQ8gQuantized(out, xq, sx, w, n, dOut, colsG, group);
}

/** Per-token 16-bit quantization of x[n, dIn] into xq [n, colsG] i16 (zero-padded), scales sx[n]. */
export function quantizeTokens(xq: usize, sx: usize, x: usize, n: i32, dIn: i32, colsG: i32): void {
  const xRow = <usize>colsG << 1;
  for (let t = 0; t < n; t++) {
    store<f32>(sx + (<usize>t << 2), quantizeI16(xq + <usize>t * xRow, x + (<usize>t * <usize>dIn << 2), dIn, colsG));
  }
}

/** out[n, dOut] from activations already quantized by quantizeTokens (several matrices may share
 * them: the expert's gate and up). */
export function matmulQ8gQuantized(
  out: usize, xq: usize, sx: usize, w: usize, n: i32, dOut: i32, colsG: i32, group: i32,
): void {
  const groups = colsG / group;
  const scales = w + <usize>dOut * <usize>colsG;
  if (ASC_FEATURE_SIMD) {
    const n4 = n & ~3;
    if (n4 > 0) q8gTiles4x2(out, xq, sx, w, scales, n4, dOut, colsG, group, groups);
    q8gSimd(out, xq, sx, w, scales, n4, n, dOut, colsG, group, groups);
  } else q8gScalar(out, xq, sx, w, scales, n, dOut, colsG, group, groups);
}

/** q[k] = nearest-even(x[k] · 32767 / max|x|) as i16, zero up to kPad; returns max|x| / 32767. */
function quantizeI16(q: usize, src: usize, d: i32, kPad: i32): f32 {
  let amax: f32 = 0;
  let i = 0;
  if (ASC_FEATURE_SIMD) {
    let mv = f32x4.splat(0);
    for (; i + 4 <= d; i += 4) mv = f32x4.max(mv, f32x4.abs(v128.load(src + (<usize>i << 2))));
    const m01 = max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1));
    amax = max(m01, max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)));
  }
  for (; i < d; i++) amax = max(amax, Mathf.abs(load<f32>(src + (<usize>i << 2))));
  const inv: f32 = amax > 0 ? XQ_LEVELS / amax : 0;
  i = 0;
  if (ASC_FEATURE_SIMD) {
    const iv = f32x4.splat(inv);
    for (; i + 8 <= d; i += 8) {
      const p = src + (<usize>i << 2);
      const lo = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), iv)));
      const hi = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), iv)));
      v128.store(q + (<usize>i << 1), i16x8.narrow_i32x4_s(lo, hi));
    }
  }
  for (; i < d; i++) store<i16>(q + (<usize>i << 1), <i16><i32>nearest<f32>(load<f32>(src + (<usize>i << 2)) * inv));
  for (; i < kPad; i++) store<i16>(q + (<usize>i << 1), 0);
  return amax / XQ_LEVELS;
}

function q8gScalar(
  out: usize, xq: usize, sx: usize, w: usize, scales: usize, n: i32, dOut: i32, colsG: i32, group: i32, groups: i32,
): void {
  const xRow = <usize>colsG << 1;
  for (let t = 0; t < n; t++) {
    const xt = xq + <usize>t * xRow;
    const st = load<f32>(sx + (<usize>t << 2));
    for (let j = 0; j < dOut; j++) {
      const wj = w + <usize>j * <usize>colsG;
      const sj = scales + (<usize>j * <usize>groups << 2);
      let acc: f32 = 0;
      for (let g = 0; g < groups; g++) {
        let s: i32 = 0;
        const k0 = g * group;
        for (let k = k0; k < k0 + group; k++) s += <i32>load<i8>(wj + <usize>k) * <i32>load<i16>(xt + (<usize>k << 1));
        acc += <f32>s * load<f32>(sj + (<usize>g << 2));
      }
      store<f32>(out + ((<usize>t * <usize>dOut + <usize>j) << 2), acc * st);
    }
  }
}

/** Σ over one group of row w · x (i16 activations): 16 int8 weights per step, two i16x8 dots. */
// @ts-ignore: decorator
@inline
function dotGroup(acc: v128, w: usize, x: usize): v128 {
  const lo = i32x4.dot_i16x8_s(v128.load8x8_s(w), v128.load(x));
  return i32x4.add(acc, i32x4.add(lo, i32x4.dot_i16x8_s(v128.load8x8_s(w, 8), v128.load(x, 16))));
}

/** acc + Σ of 16 int8 weights at w times 16 i16 activations (xl, xh): two i16x8 dots. */
// @ts-ignore: decorator
@inline
function dot16(acc: v128, w: usize, xl: v128, xh: v128): v128 {
  return dotW(acc, v128.load8x8_s(w), v128.load8x8_s(w, 8), xl, xh);
}

/**
 * Tokens t0..n-1, one token at a time over 4-row blocks (decode, and the tokens left after the
 * 4-token tiles). A row's value is computed as the tiles compute it — each group's integer sum
 * whole (exact), converted once, then one multiply-add by the group scale, in group order, times
 * the token scale — so a token's row is bit for bit the same whichever path it takes, whatever
 * tokens share the call (batch-rows contract).
 */
function q8gSimd(
  out: usize, xq: usize, sx: usize, w: usize, scales: usize, t0: i32, n: i32, dOut: i32, colsG: i32, group: i32,
  groups: i32,
): void {
  const xRow = <usize>colsG << 1;
  const wRow = <usize>colsG;
  const sRow = <usize>groups << 2;
  const oRow = <usize>dOut << 2;
  let j = 0;
  for (; j + 4 <= dOut; j += 4) {
    const w0 = w + <usize>j * wRow;
    const s0 = scales + <usize>j * sRow;
    for (let t = t0; t < n; t++) {
      const xt = xq + <usize>t * xRow;
      let f = f32x4.splat(0); // rows j..j+3 in lanes
      for (let g = 0; g < groups; g++) {
        let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
        const k0 = <usize>(g * group);
        const k1 = k0 + <usize>group;
        for (let k = k0; k < k1; k += 16) {
          const xl = v128.load(xt + (k << 1));
          const xh = v128.load(xt + (k << 1), 16);
          const wk = w0 + k;
          a0 = dot16(a0, wk, xl, xh);
          a1 = dot16(a1, wk + wRow, xl, xh);
          a2 = dot16(a2, wk + 2 * wRow, xl, xh);
          a3 = dot16(a3, wk + 3 * wRow, xl, xh);
        }
        const sg = s0 + (<usize>g << 2);
        let sv = f32x4.splat(load<f32>(sg));
        sv = f32x4.replace_lane(sv, 1, load<f32>(sg + sRow));
        sv = f32x4.replace_lane(sv, 2, load<f32>(sg + 2 * sRow));
        sv = f32x4.replace_lane(sv, 3, load<f32>(sg + 3 * sRow));
        f = madd(f32x4.convert_i32x4_s(hsum4i(a0, a1, a2, a3)), sv, f);
      }
      const y = f32x4.mul(f, f32x4.splat(load<f32>(sx + (<usize>t << 2))));
      v128.store(out + <usize>t * oRow + (<usize>j << 2), y);
    }
  }
  for (; j < dOut; j++) q8gOneRow(out, xq, sx, w, scales, j, t0, n, dOut, colsG, group, groups);
}

/** Row j for tokens t0..n-1 (the rows left over after the row blocks), summed as q8gSimd does. */
function q8gOneRow(
  out: usize, xq: usize, sx: usize, w: usize, scales: usize, j: i32, t0: i32, n: i32, dOut: i32, colsG: i32,
  group: i32, groups: i32,
): void {
  const wj = w + <usize>j * <usize>colsG;
  const sj = scales + (<usize>j * <usize>groups << 2);
  const xRow = <usize>colsG << 1;
  for (let t = t0; t < n; t++) {
    const xt = xq + <usize>t * xRow;
    let f = f32x4.splat(0); // the row in lane 0 (the same multiply-add as the tiles' lanes)
    for (let g = 0; g < groups; g++) {
      let a = i32x4.splat(0);
      const k0 = <usize>(g * group);
      for (let k = k0; k < k0 + <usize>group; k += 16) a = dotGroup(a, wj + k, xt + (k << 1));
      const sum = i32x4.extract_lane(a, 0) + i32x4.extract_lane(a, 1) + i32x4.extract_lane(a, 2) +
        i32x4.extract_lane(a, 3);
      f = madd(f32x4.splat(<f32>sum), f32x4.splat(load<f32>(sj + (<usize>g << 2))), f);
    }
    const y = f32x4.extract_lane(f, 0) * load<f32>(sx + (<usize>t << 2));
    store<f32>(out + ((<usize>t * <usize>dOut + <usize>j) << 2), y);
  }
}

/**
 * Tokens 0..n4-1 (n4 a multiple of 4) in 4-token × 2-row tiles: each weight vector loaded feeds 4
 * tokens. Rows outermost, so a row pair stays in L1 while every token block passes over it.
 * At the end of a group the 4 integer accumulators of a row are summed across lanes first (exact:
 * a group's sum fits i32), giving one i32x4 of that row's 4 tokens: one convert and one multiply-add
 * per row and group, and the f32 sums come out with tokens in lanes, ready for the token scales.
 */
function q8gTiles4x2(
  out: usize, xq: usize, sx: usize, w: usize, scales: usize, n4: i32, dOut: i32, colsG: i32, group: i32, groups: i32,
): void {
  const xRow = <usize>colsG << 1;
  const wRow = <usize>colsG;
  const sRow = <usize>groups << 2;
  const oRow = <usize>dOut << 2;
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
        for (let k = k0; k < k1; k += 16) {
          const wal = v128.load8x8_s(wa + k);
          const wah = v128.load8x8_s(wa + k, 8);
          const wbl = v128.load8x8_s(wb + k);
          const wbh = v128.load8x8_s(wb + k, 8);
          let xp = x0 + (k << 1);
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
        const sga = f32x4.splat(load<f32>(sa + (<usize>g << 2)));
        const sgb = f32x4.splat(load<f32>(sa + sRow + (<usize>g << 2)));
        fa = madd(f32x4.convert_i32x4_s(hsum4i(a0, a1, a2, a3)), sga, fa);
        fb = madd(f32x4.convert_i32x4_s(hsum4i(b0, b1, b2, b3)), sgb, fb);
      }
      const sxv = v128.load(sx + (<usize>t << 2));
      const ya = f32x4.mul(fa, sxv);
      const yb = f32x4.mul(fb, sxv);
      storeColumn(out + <usize>t * oRow + (<usize>j << 2), oRow, ya);
      storeColumn(out + <usize>t * oRow + (<usize>j << 2) + 4, oRow, yb);
    }
  }
  if (j < dOut) q8gOneRow(out, xq, sx, w, scales, j, 0, n4, dOut, colsG, group, groups);
}

/** acc + wl·xl + wh·xh as i16x8 dots (weights already widened). */
// @ts-ignore: decorator
@inline
function dotW(acc: v128, wl: v128, wh: v128, xl: v128, xh: v128): v128 {
  return i32x4.add(acc, i32x4.add(i32x4.dot_i16x8_s(wl, xl), i32x4.dot_i16x8_s(wh, xh)));
}

/**
 * Dequantizes rows ids[0..count) (i32 each, caller-checked < rows) of an int8 group-scaled matrix
 * [rows, cols] into out[count, cols] f32: out = scale · q, the exact f32 product.
 */
export function gatherQ8g(out: usize, w: usize, ids: usize, count: i32, rows: i32, cols: i32, group: i32): void {
  const colsG = ((cols + group - 1) / group) * group;
  const groups = colsG / group;
  const scales = w + <usize>rows * <usize>colsG;
  for (let c = 0; c < count; c++) {
    const j = <usize>load<i32>(ids + (<usize>c << 2));
    const wj = w + j * <usize>colsG;
    const sj = scales + (j * <usize>groups << 2);
    const o = out + (<usize>c * <usize>cols << 2);
    for (let k = 0; k < cols; k++) {
      store<f32>(o + (<usize>k << 2), <f32>load<i8>(wj + <usize>k) * load<f32>(sj + (<usize>(k / group) << 2)));
    }
  }
}
