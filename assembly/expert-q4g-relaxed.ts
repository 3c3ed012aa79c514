/**
 * @module expert-q4g-relaxed — the 4-bit group matmul on the relaxed i8×i7 dot (relaxed build only,
 * when the host's probe enabled a relaxed dot form for the int8 kernels: q8.ts relaxedDotForm).
 *
 * The 4-bit weights are used as stored, unsigned nibbles u = q + 8 ∈ [0, 15] — valid second
 * operands of the i8×i7 dot — against activations quantized per token to 8 bits (xq ∈ [-127, 127],
 * scale max|x| / 127): one instruction per 16 multiply-adds and no widening. The zero point comes
 * back out exactly per group: Σ q·x = Σ u·x − 8·Σ x, with Σ x of each token's group precomputed.
 * Pair sums stay inside i16 (2·127·15 < 2^15), so the integer part is exact and the result differs
 * from the 16-bit-activation path (expert-q4g.ts) only by the activation rounding, far below the
 * 4-bit weight rounding. Layout: expert-q4g.ts.
 */
import { hsum4i, madd } from "./simd-math";

/** xq [n, colsG] i8, sx [n] f32, xs [n, colsG / group] i32 (Σ xq per group). */
export function quantizeTokensI8(
  xq: usize, sx: usize, xs: usize, x: usize, n: i32, d: i32, colsG: i32, group: i32,
): void {
  const groups = colsG / group;
  for (let t = 0; t < n; t++) {
    const src = x + (<usize>t * <usize>d << 2);
    const q = xq + <usize>t * <usize>colsG;
    let mv = f32x4.splat(0);
    let i = 0;
    for (; i + 4 <= d; i += 4) mv = f32x4.max(mv, f32x4.abs(v128.load(src + (<usize>i << 2))));
    const m01 = max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1));
    let amax = max(m01, max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)));
    for (; i < d; i++) amax = max(amax, Mathf.abs(load<f32>(src + (<usize>i << 2))));
    const inv: f32 = amax > 0 ? <f32>127 / amax : 0;
    const iv = f32x4.splat(inv);
    i = 0;
    for (; i + 16 <= d; i += 16) {
      const p = src + (<usize>i << 2);
      const a = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), iv)));
      const b = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), iv)));
      const c = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 32), iv)));
      const e = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 48), iv)));
      v128.store(q + <usize>i, i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(a, b), i16x8.narrow_i32x4_s(c, e)));
    }
    for (; i < d; i++) store<i8>(q + <usize>i, <i8><i32>nearest<f32>(load<f32>(src + (<usize>i << 2)) * inv));
    for (; i < colsG; i++) store<i8>(q + <usize>i, 0);
    store<f32>(sx + (<usize>t << 2), amax / 127);
    for (let g = 0; g < groups; g++) {
      let s: i32 = 0;
      const k0 = g * group;
      for (let k = k0; k < k0 + group; k++) s += <i32>load<i8>(q + <usize>k);
      store<i32>(xs + ((<usize>t * <usize>groups + <usize>g) << 2), s);
    }
  }
}

/** acc + the i8×i7 dot of a (signed) and b (7-bit): F = i16 picks the i16x8 form + extadd. */
// @ts-ignore: decorator
@inline
function rdot<F>(a: v128, b: v128, acc: v128): v128 {
  if (sizeof<F>() == 2) return i32x4.add(acc, i32x4.extadd_pairwise_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(a, b)));
  return i32x4.relaxed_dot_i8x16_i7x16_add_s(a, b, acc);
}

/** acc + Σ over 32 inputs: x0/x1 the 16 + 16 activations, v the 16 nibble bytes. The i16x8 form
 * adds the two halves' pair sums in i16 first (|each| ≤ 2·127·15, so their sum fits) and widens once. */
// @ts-ignore: decorator
@inline
function dot32u<F>(acc: v128, v: v128, x0: v128, x1: v128): v128 {
  const lo = v128.and(v, i8x16.splat(15));
  const hi = v128.and(i16x8.shr_u(v, 4), i8x16.splat(15));
  if (sizeof<F>() == 2) {
    const s = i16x8.add(i16x8.relaxed_dot_i8x16_i7x16_s(x0, lo), i16x8.relaxed_dot_i8x16_i7x16_s(x1, hi));
    return i32x4.add(acc, i32x4.extadd_pairwise_i16x8_s(s));
  }
  return rdot<F>(x1, hi, rdot<F>(x0, lo, acc));
}

/** The 4 bf16 scales at p, p + stride, p + 2·stride, p + 3·stride as f32 lanes. */
// @ts-ignore: decorator
@inline
function scales4(p: usize, stride: usize): v128 {
  let v = i32x4.splat(<i32>load<u16>(p));
  v = i32x4.replace_lane(v, 1, <i32>load<u16>(p + stride));
  v = i32x4.replace_lane(v, 2, <i32>load<u16>(p + 2 * stride));
  v = i32x4.replace_lane(v, 3, <i32>load<u16>(p + 3 * stride));
  return i32x4.shl(v, 16);
}

/** out[n, dOut] = xq · (u − 8)ᵀ · scales · sx; form 1 or 2 (relaxedDotForm). */
export function matmulQ4gRelaxed(
  out: usize, xq: usize, sx: usize, xs: usize, w: usize, n: i32, dOut: i32, colsG: i32, group: i32, form: i32,
): void {
  if (form == 1) q4gRelaxed<i16>(out, xq, sx, xs, w, n, dOut, colsG, group);
  else q4gRelaxed<i32>(out, xq, sx, xs, w, n, dOut, colsG, group);
}

/** 4-row blocks, tokens inside a block (its 4 rows stay in L1 for every token after the first). */
function q4gRelaxed<F>(
  out: usize, xq: usize, sx: usize, xs: usize, w: usize, n: i32, dOut: i32, colsG: i32, group: i32,
): void {
  const groups = colsG / group;
  const wRow = <usize>(colsG >> 1);
  const scales = w + <usize>dOut * wRow;
  const sRow = <usize>groups << 1;
  const oRow = <usize>dOut << 2;
  let j = 0;
  for (; j + 4 <= dOut; j += 4) {
    const w0 = w + <usize>j * wRow;
    const s0 = scales + <usize>j * sRow;
    for (let t = 0; t < n; t++) {
      const xt = xq + <usize>t * <usize>colsG;
      const xst = xs + (<usize>t * <usize>groups << 2);
      let f = f32x4.splat(0);
      for (let g = 0; g < groups; g++) {
        let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
        const k0 = <usize>(g * group);
        const k1 = k0 + <usize>group;
        for (let k = k0; k < k1; k += 32) {
          const x0 = v128.load(xt + k);
          const x1 = v128.load(xt + k, 16);
          const wk = w0 + (k >> 1);
          a0 = dot32u<F>(a0, v128.load(wk), x0, x1);
          a1 = dot32u<F>(a1, v128.load(wk + wRow), x0, x1);
          a2 = dot32u<F>(a2, v128.load(wk + 2 * wRow), x0, x1);
          a3 = dot32u<F>(a3, v128.load(wk + 3 * wRow), x0, x1);
        }
        const zp = i32x4.splat(load<i32>(xst + (<usize>g << 2)) << 3);
        const s = i32x4.sub(hsum4i(a0, a1, a2, a3), zp);
        f = madd(f32x4.convert_i32x4_s(s), scales4(s0 + (<usize>g << 1), sRow), f);
      }
      v128.store(out + <usize>t * oRow + (<usize>j << 2), f32x4.mul(f, f32x4.splat(load<f32>(sx + (<usize>t << 2)))));
    }
  }
  for (; j < dOut; j++) {
    const wj = w + <usize>j * wRow;
    const sj = scales + (<usize>j * <usize>groups << 1);
    for (let t = 0; t < n; t++) {
      const xt = xq + <usize>t * <usize>colsG;
      let acc: f32 = 0;
      for (let g = 0; g < groups; g++) {
        let a = i32x4.splat(0);
        const k0 = <usize>(g * group);
        for (let k = k0; k < k0 + <usize>group; k += 32) {
          a = dot32u<F>(a, v128.load(wj + (k >> 1)), v128.load(xt + k), v128.load(xt + k, 16));
        }
        const isum = i32x4.extract_lane(a, 0) + i32x4.extract_lane(a, 1) + i32x4.extract_lane(a, 2) +
          i32x4.extract_lane(a, 3) - (load<i32>(xs + ((<usize>t * <usize>groups + <usize>g) << 2)) << 3);
        acc += <f32>isum * reinterpret<f32>(<u32>load<u16>(sj + (<usize>g << 1)) << 16);
      }
      store<f32>(out + ((<usize>t * <usize>dOut + <usize>j) << 2), acc * load<f32>(sx + (<usize>t << 2)));
    }
  }
}
