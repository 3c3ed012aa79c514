/**
 * @module q8-scale — the error-minimising scale of one symmetric int8 group (a row of per-row int8
 * experts, or a group of group-wise int8 experts; dense stages keep absmax, Q8_ABSMAX).
 *
 * Absmax (scale = max|w| / 127) puts the largest weight exactly on the grid, but on a short group the
 * rounding errors of the other weights depend on where the grid happens to fall: a slightly
 * different scale (clipping the largest weight a little, or widening the grid a little) often fits
 * the group better. So a few divisors around 127 are tried and the one with the least squared error
 * is kept — the int4 quantizer's search (src/kernels/q4g-format.ts), narrowed to int8's fine grid.
 * Divisor 127 (absmax) is always a candidate, so the chosen scale is never worse than absmax on the
 * group it is chosen for. The stored format does not change: q ∈ [-127, 127] and one f32 scale.
 */

/** 1.5·2^52: adding and subtracting it rounds a double of magnitude < 2^51 to an integer, half to even
 * (as f32x4.nearest does). */
const ROUND = 6755399441055744;

/** Divisors of the group's largest magnitude tried per group: 127 (absmax) first, then a little
 * wider (< 127: no clipping) and a little narrower (> 127: the largest weights clip to ±127). Chosen
 * by measured weight error on Gaussian weights (README "Expert accuracy"): a finer, wider search
 * gains little more, and each divisor costs one pass over the group at load. */
export const Q8_DIVISORS: readonly number[] = [
  127, 126, 125, 124, 123, 122, 121, 120, 119, 118, 117, 116, 128, 129, 130,
];

/** Absmax alone (divisor 127): the dense stages' int8 groups, whose load cost the search would
 * multiply (README "Expert accuracy": no resolvable accuracy gain there). */
export const Q8_ABSMAX: readonly number[] = [127];

/** q = clamp(nearest-even(f32(w · inv)), ±127): the int8 value of w at inverse scale inv. */
export function q8Value(w: number, inv: number): number {
  const q = Math.fround(w * inv) + ROUND - ROUND;
  return Math.max(-127, Math.min(127, q));
}

/** Σ (w − f32(s · q))² over w[k0..k1) at scale s (inverse inv); q8Value inlined (a hot loop at load). */
function groupError(w: ArrayLike<number>, k0: number, k1: number, s: number, inv: number): number {
  let e = 0;
  for (let k = k0; k < k1; k++) {
    const x = w[k];
    let q = Math.fround(x * inv) + ROUND - ROUND;
    q = Math.max(-127, Math.min(127, q));
    const d = x - Math.fround(s * q);
    e += d * d;
  }
  return e;
}

/**
 * The scale for w[k0..k1) and its inverse: [f32(amax / d), f32(d / amax)] for the divisor d of
 * Q8_DIVISORS with the least squared error (ties keep the earlier divisor, so absmax wins ties).
 * An all-zero (or empty) group gets [0, 0].
 */
export function searchQ8Scale(
  w: ArrayLike<number>,
  k0: number,
  k1: number,
  divisors: readonly number[] = Q8_DIVISORS,
): [number, number] {
  let amax = 0;
  for (let k = k0; k < k1; k++) {
    const a = Math.abs(w[k]);
    if (a > amax) amax = a;
  }
  if (!(amax > 0)) return [0, 0];
  let best: [number, number] = [0, 0];
  let bestErr = Number.POSITIVE_INFINITY;
  for (const d of divisors) {
    const s = Math.fround(amax / d);
    const inv = Math.fround(d / amax);
    const e = groupError(w, k0, k1, s, inv);
    if (e < bestErr) {
      bestErr = e;
      best = [s, inv];
    }
  }
  return best;
}
