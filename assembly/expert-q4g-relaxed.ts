/**
 * @module expert-q4g-relaxed — the SIMD 4-bit group matmul, mainly on the relaxed i8×i7 dot (relaxed
 * build, when the host's probe found a relaxed dot form that agrees with exact arithmetic:
 * setQ4DotForm); form 0 is the same loop on plain SIMD (signed nibbles, i16 products) for the simd
 * build.
 *
 * The 4-bit weights are used as stored, unsigned nibbles u = q + 8 ∈ [0, 15] — valid second
 * operands of the i8×i7 dot — against 8-bit activations: one instruction per 16 multiply-adds and
 * no widening. Per 32 inputs the i16 form gives 8 lanes of 4-input sums of u·x (|·| ≤ 4·127·15);
 * the zero point comes out per lane with one i16 subtract of z = 8·(the same 4 activations' sum),
 * precomputed per token (expert-q4g.ts quantizeTokensQ4), leaving Σ q·x (|·| ≤ 4·8·127). Up to 8
 * such blocks of a group are added in i16, then one `i32x4.dot_i16x8_s` against the splatted
 * integer sub-scale multiplies and widens at once. So a group costs no float work: a row's i32 sum
 * goes to f32 once per 8192 inputs (the i32 bound), then f32(Σ) · unit · sx. Integer sums are
 * exact, so every form and build gives the same bits (expert-q4g.ts has the layout).
 */
import { hsum4i } from "./simd-math";

/** Σ over 32 inputs of (u − 8)·x in lanes: v the 16 nibble bytes, x0/x1 the 16 + 16 activations,
 * z the zero-point lanes (relaxed forms). i16 lanes (|·| ≤ 4·8·127) for forms 0 and 1, i32 for 2. */
// @ts-ignore: decorator
@inline
function part<F>(v: v128, x0: v128, x1: v128, z: v128): v128 {
  const lo = v128.and(v, i8x16.splat(15));
  if (sizeof<F>() == 1) {
    // Plain SIMD: signed weights, i16 products (|q·x| ≤ 8·127), four summed per lane.
    const ql = i8x16.sub(lo, i8x16.splat(8));
    const qh = i8x16.sub(i8x16.shr_u(v, 4), i8x16.splat(8));
    return i16x8.add(
      i16x8.add(i16x8.extmul_low_i8x16_s(ql, x0), i16x8.extmul_high_i8x16_s(ql, x0)),
      i16x8.add(i16x8.extmul_low_i8x16_s(qh, x1), i16x8.extmul_high_i8x16_s(qh, x1)),
    );
  }
  const hi = v128.and(i16x8.shr_u(v, 4), i8x16.splat(15));
  if (sizeof<F>() == 2) {
    const s = i16x8.add(i16x8.relaxed_dot_i8x16_i7x16_s(x0, lo), i16x8.relaxed_dot_i8x16_i7x16_s(x1, hi));
    return i16x8.sub(s, z);
  }
  // The dot-add form's lane i is the i16 form's lanes 2i + 2i+1, so z's pair sums are its zero point.
  const s = i32x4.relaxed_dot_i8x16_i7x16_add_s(x1, hi, i32x4.relaxed_dot_i8x16_i7x16_add_s(x0, lo, i32x4.splat(0)));
  return i32x4.sub(s, i32x4.extadd_pairwise_i16x8_s(z));
}

/** p + q for part()'s lanes (up to 8 parts in i16: ≤ 8·4064 < 2^15). */
// @ts-ignore: decorator
@inline
function addPart<F>(p: v128, q: v128): v128 {
  return sizeof<F>() <= 2 ? i16x8.add(p, q) : i32x4.add(p, q);
}

/** acc + sub · p: one i16 multiply-add into i32 (forms 0, 1) or an i32 multiply (form 2). */
// @ts-ignore: decorator
@inline
function scaled<F>(acc: v128, p: v128, c: v128): v128 {
  return i32x4.add(acc, sizeof<F>() <= 2 ? i32x4.dot_i16x8_s(p, c) : i32x4.mul(p, c));
}

/** The sub-scale at p for scaled(): splat to i16 lanes (forms 0, 1) or i32 lanes (form 2). */
// @ts-ignore: decorator
@inline
function subAt<F>(p: usize): v128 {
  if (sizeof<F>() <= 2) return v128.load16_splat(p);
  return i32x4.splat(<i32>load<i16>(p));
}

/** Inputs summed in i32 before a row's partial goes to f32: 8192 · 255 · 8 · 127 < 2^31. */
const CHUNK = 8192;
/** 32-input blocks summed in i16 before the sub-scale multiply. */
const RUN = 8;

/** out[n, dOut] = xq · (u − 8)ᵀ, scaled per row; form 0 (plain SIMD, zv unused), 1 (relaxed
 * i16x8 dot) or 2 (relaxed i32x4 dot-add); forms 1 and 2 only in the relaxed build. */
export function matmulQ4gSimd(
  out: usize, xq: usize, sx: usize, zv: usize, w: usize, n: i32, dOut: i32, colsG: i32, group: i32, form: i32,
): void {
  if (ASC_FEATURE_RELAXED_SIMD) {
    if (form == 1) {
      q4gRelaxed<i16>(out, xq, sx, zv, w, n, dOut, colsG, group);
      return;
    }
    if (form == 2) {
      q4gRelaxed<i32>(out, xq, sx, zv, w, n, dOut, colsG, group);
      return;
    }
  }
  q4gRelaxed<i8>(out, xq, sx, zv, w, n, dOut, colsG, group);
}

/** 4-row panels (64 bytes per 32 inputs: one sequential stream), tokens inside a panel (its 4 rows
 * stay in L1 for every token after the first); rows after the last whole panel are row-major. */
function q4gRelaxed<F>(
  out: usize, xq: usize, sx: usize, zv: usize, w: usize, n: i32, dOut: i32, colsG: i32, group: i32,
): void {
  const groups = colsG / group;
  const chunkGroups = max(1, CHUNK / group);
  const wRow = <usize>(colsG >> 1);
  const units = w + <usize>dOut * wRow;
  const subs = units + (<usize>dOut << 2);
  const sRow = <usize>groups << 1;
  const oRow = <usize>dOut << 2;
  let j = 0;
  for (; j + 4 <= dOut; j += 4) {
    const w0 = w + <usize>j * wRow;
    const s0 = subs + <usize>j * sRow;
    const u4 = v128.load(units + (<usize>j << 2));
    for (let t = 0; t < n; t++) {
      const xt = xq + <usize>t * <usize>colsG;
      const zt = zv + <usize>t * wRow;
      let f = f32x4.splat(0);
      for (let g0 = 0; g0 < groups; g0 += chunkGroups) {
        let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
        const g1 = min(groups, g0 + chunkGroups);
        for (let g = g0; g < g1; g++) {
          const sg = s0 + (<usize>g << 1);
          const kEnd = <usize>((g + 1) * group);
          for (let k = <usize>(g * group); k < kEnd; ) {
            // The run's first block starts the i16 sums (no add to zero: most groups are one block).
            const runEnd = min(kEnd, k + (RUN << 5));
            const xa = v128.load(xt + k);
            const xb = v128.load(xt + k, 16);
            const za = sizeof<F>() == 1 ? xa : v128.load(zt + (k >> 1));
            const wa = w0 + (k << 1);
            let p0 = part<F>(v128.load(wa), xa, xb, za);
            let p1 = part<F>(v128.load(wa, 16), xa, xb, za);
            let p2 = part<F>(v128.load(wa, 32), xa, xb, za);
            let p3 = part<F>(v128.load(wa, 48), xa, xb, za);
            for (k += 32; k < runEnd; k += 32) {
              const x0 = v128.load(xt + k);
              const x1 = v128.load(xt + k, 16);
              const z = sizeof<F>() == 1 ? x0 : v128.load(zt + (k >> 1));
              const wk = w0 + (k << 1);
              p0 = addPart<F>(p0, part<F>(v128.load(wk), x0, x1, z));
              p1 = addPart<F>(p1, part<F>(v128.load(wk, 16), x0, x1, z));
              p2 = addPart<F>(p2, part<F>(v128.load(wk, 32), x0, x1, z));
              p3 = addPart<F>(p3, part<F>(v128.load(wk, 48), x0, x1, z));
            }
            a0 = scaled<F>(a0, p0, subAt<F>(sg));
            a1 = scaled<F>(a1, p1, subAt<F>(sg + sRow));
            a2 = scaled<F>(a2, p2, subAt<F>(sg + 2 * sRow));
            a3 = scaled<F>(a3, p3, subAt<F>(sg + 3 * sRow));
          }
        }
        f = f32x4.add(f, f32x4.convert_i32x4_s(hsum4i(a0, a1, a2, a3)));
      }
      const y = f32x4.mul(f32x4.mul(f, u4), f32x4.splat(load<f32>(sx + (<usize>t << 2))));
      v128.store(out + <usize>t * oRow + (<usize>j << 2), y);
    }
  }
  for (; j < dOut; j++) {
    const wj = w + <usize>j * wRow;
    const sj = subs + <usize>j * sRow;
    const unit = load<f32>(units + (<usize>j << 2));
    for (let t = 0; t < n; t++) {
      const xt = xq + <usize>t * <usize>colsG;
      const zt = zv + <usize>t * wRow;
      let f: f32 = 0;
      for (let g0 = 0; g0 < groups; g0 += chunkGroups) {
        let a = i32x4.splat(0);
        const g1 = min(groups, g0 + chunkGroups);
        for (let g = g0; g < g1; g++) {
          const kEnd = <usize>((g + 1) * group);
          for (let k = <usize>(g * group); k < kEnd; ) {
            const runEnd = min(kEnd, k + (RUN << 5));
            const xa = v128.load(xt + k);
            const za = sizeof<F>() == 1 ? xa : v128.load(zt + (k >> 1));
            let p = part<F>(v128.load(wj + (k >> 1)), xa, v128.load(xt + k, 16), za);
            for (k += 32; k < runEnd; k += 32) {
              const x0 = v128.load(xt + k);
              const z = sizeof<F>() == 1 ? x0 : v128.load(zt + (k >> 1));
              p = addPart<F>(p, part<F>(v128.load(wj + (k >> 1)), x0, v128.load(xt + k, 16), z));
            }
            a = scaled<F>(a, p, subAt<F>(sj + (<usize>g << 1)));
          }
        }
        f += <f32>(i32x4.extract_lane(a, 0) + i32x4.extract_lane(a, 1) + i32x4.extract_lane(a, 2) +
          i32x4.extract_lane(a, 3));
      }
      store<f32>(out + ((<usize>t * <usize>dOut + <usize>j) << 2), f * unit * load<f32>(sx + (<usize>t << 2)));
    }
  }
}
