/**
 * @module simd-math — vector helpers for the packed kernels: multiply-add (fused in the relaxed
 * build), four horizontal sums at once, and a vector SiLU.
 *
 * Not exported from the Wasm module; only the SIMD builds reach these functions.
 */

/** acc + a·b. The relaxed build emits f32x4.relaxed_madd (one FMA where the CPU has it, rounded
 * once); the plain SIMD build multiplies then adds (rounded twice). */
// @ts-ignore: decorator
@inline
export function madd(a: v128, b: v128, acc: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, acc);
  return f32x4.add(acc, f32x4.mul(a, b));
}

/** [Σa, Σb, Σc, Σd] over the f32 lanes of four accumulators: two shuffle rounds, no lane extracts. */
// @ts-ignore: decorator
@inline
export function hsum4(a: v128, b: v128, c: v128, d: v128): v128 {
  // ab = [a0+a2, b0+b2, a1+a3, b1+b3]
  const ab = f32x4.add(v128.shuffle<f32>(a, b, 0, 4, 1, 5), v128.shuffle<f32>(a, b, 2, 6, 3, 7));
  const cd = f32x4.add(v128.shuffle<f32>(c, d, 0, 4, 1, 5), v128.shuffle<f32>(c, d, 2, 6, 3, 7));
  return f32x4.add(v128.shuffle<f32>(ab, cd, 0, 1, 4, 5), v128.shuffle<f32>(ab, cd, 2, 3, 6, 7));
}

/** hsum4 for i32 lanes (integer dot-product accumulators). */
// @ts-ignore: decorator
@inline
export function hsum4i(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = i32x4.add(v128.shuffle<i32>(a, b, 0, 4, 1, 5), v128.shuffle<i32>(a, b, 2, 6, 3, 7));
  const cd = i32x4.add(v128.shuffle<i32>(c, d, 0, 4, 1, 5), v128.shuffle<i32>(c, d, 2, 6, 3, 7));
  return i32x4.add(v128.shuffle<i32>(ab, cd, 0, 1, 4, 5), v128.shuffle<i32>(ab, cd, 2, 3, 6, 7));
}

/**
 * e^x per lane, ≤ 2 ulp on [-87.3, 88.7] (Cephes expf: x = n·ln2 + r, |r| ≤ ln2/2, degree-6
 * polynomial, 2^n from the exponent bits). Below the range it returns e^-87.3 ≈ 1e-38 instead of
 * a subnormal, from ≈ 88.4 up +Inf — what silu needs: silu(z) → z for z ≫ 0 and → −0 for z ≪ 0.
 */
// @ts-ignore: decorator
@inline
export function exp4(x: v128): v128 {
  x = f32x4.max(x, f32x4.splat(-87.33654));
  x = f32x4.min(x, f32x4.splat(88.72283));
  const n = f32x4.nearest(f32x4.mul(x, f32x4.splat(1.442695041)));
  // r = x − n·ln2 in two steps (ln2 = C1 + C2, C1 exact in few bits) so r stays exact.
  let r = f32x4.sub(x, f32x4.mul(n, f32x4.splat(0.693359375)));
  r = f32x4.add(r, f32x4.mul(n, f32x4.splat(2.12194440e-4)));
  let p = f32x4.splat(1.9875691500e-4);
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.3981999507e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(8.3334519073e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(4.1665795894e-2));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.6666665459e-1));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(5.0000001201e-1));
  p = f32x4.add(f32x4.add(f32x4.mul(p, f32x4.mul(r, r)), r), f32x4.splat(1.0));
  const pow2n = i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(n), i32x4.splat(127)), 23);
  return f32x4.mul(p, pow2n); // n = 128 at the top clamp: exponent bits 255 = +Inf
}

/** silu(g)·u per lane, silu(z) = z / (1 + e^−z) (torch's formula, so z → −∞ gives −0). */
// @ts-ignore: decorator
@inline
export function siluMul4(g: v128, u: v128): v128 {
  const s = f32x4.div(g, f32x4.add(f32x4.splat(1.0), exp4(f32x4.neg(g))));
  return f32x4.mul(s, u);
}

/** Lanes of v to o, o + stride, o + 2·stride, o + 3·stride (one output column, 4 tokens). */
// @ts-ignore: decorator
@inline
export function storeColumn(o: usize, stride: usize, v: v128): void {
  store<f32>(o, f32x4.extract_lane(v, 0));
  store<f32>(o + stride, f32x4.extract_lane(v, 1));
  store<f32>(o + 2 * stride, f32x4.extract_lane(v, 2));
  store<f32>(o + 3 * stride, f32x4.extract_lane(v, 3));
}
