/**
 * @module expert-q4g — one SwiGLU expert on 4-bit weights with one scale per group of inputs
 * (issue 14 item 1): half the bytes of int8, for decode that is bound by reading weights.
 *
 * Matrix [rows, cols] (src/kernels/q4g-format.ts writes it): [nibbles: rows × colsG/2 bytes]
 * [units: rows f32][subs: rows × colsG/group i16], colsG = cols rounded up to group (a multiple of
 * 32), the whole rounded up to 16 bytes. Each 32 inputs of a row are 16 bytes: byte i holds
 * q[k0 + i] + 8 in its low nibble and q[k0 + 16 + i] + 8 in its high nibble, q ∈ [-8, 7] (one
 * mask or one shift and mask give 16 weights in input order). Rows come in panels of 4: per 32
 * inputs 64 bytes, 4 columns of 16 bytes, column c holding bytes 4c..4c+3 of rows 0, 1, 2, 3 in
 * turn (so one load and one splat of 4 activations feed all 4 rows: expert-q4g-relaxed.ts); a
 * panel's subs are [group][4 rows]. The dOut % 4 rows after the last panel are row-major.
 *
 * w[j, k] ≈ units[j] · subs[j, k / group] · q[j, k] with integer subs (|sub| ≤ 255), so a row is an
 * exact integer sum — Σ_g sub · Σ q·x over 8-bit activations, |·| ≤ 255·8·127 per input, so i32
 * holds 8192 inputs; longer rows add such chunks in f32 — rescaled once: y = f32(Σ) · unit · sx.
 * Exact integers make every build and dot form give the same bits, and a token's row the same bits
 * whatever else is in the batch.
 *
 * Expert blob: [w1 (gate) dFf × dModel][w3 (up)][w2 (down) dModel × dFf]; scratch (q4g-format.ts
 * expertQ4gScratchBytes): h, u [n, dFf] f32, token scales, 8-bit activations [n, wide], and for
 * the relaxed dot the zero points [n, wide / 8] (4 bytes per 32 inputs, expert-q4g-relaxed.ts).
 */
import { matmulQ4gSimd } from "./expert-q4g-relaxed";
import { siluMul } from "./silu-mul";

/** Relaxed dot form for int4 (1 = i16x8 form, 2 = dot-add form, 0 = plain SIMD): set by the host
 * after its probe, independent of the int8 kernels' path choice. */
let q4Form: i32 = 0;

/** Sets the int4 relaxed dot form (kept only in the relaxed build; a negative form only asks);
 * returns the form in effect. */
export function setQ4DotForm(form: i32): i32 {
  if (ASC_FEATURE_RELAXED_SIMD && form >= 0) q4Form = form <= 2 ? form : 0;
  return q4Form;
}

// @ts-ignore: decorator
@inline
function align16(b: usize): usize {
  return (b + 15) & ~<usize>15;
}

function q4gBytes(rows: i32, cols: i32, group: i32): usize {
  const colsG = <usize>(((cols + group - 1) / group) * group);
  return align16(<usize>rows * (colsG >> 1) + (<usize>rows << 2) + <usize>rows * (colsG / <usize>group) * 2);
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
  const zv = xq + <usize>n * <usize>max(dmG, dfG);
  const w1 = blob;
  const w3 = w1 + q4gBytes(dFf, dModel, group);
  const w2 = w3 + q4gBytes(dFf, dModel, group);
  quantizeTokensQ4(xq, sx, zv, x, n, dModel, dmG);
  matmulQ4g(h, u, xq, sx, zv, w1, w3, n, dFf, dmG, group);
  siluMul(h, h, u, n * dFf);
  quantizeTokensQ4(xq, sx, zv, h, n, dFf, dfG);
  matmulQ4g(out, 0, xq, sx, zv, w2, 0, n, dModel, dfG, group);
}

/** Activation bits of the int4 expert: always 8 (every build and form). */
export function q4ActivationBits(): i32 {
  return 8;
}

/** out = xq · wᵀ (and out2 = xq · w2ᵀ when w2 ≠ 0: gate and up in one pass). */
function matmulQ4g(
  out: usize, out2: usize, xq: usize, sx: usize, zv: usize, w: usize, w2: usize, n: i32, dOut: i32, colsG: i32,
  group: i32,
): void {
  if (ASC_FEATURE_SIMD) matmulQ4gSimd(out, out2, xq, sx, zv, w, w2, n, dOut, colsG, group, q4Form);
  else {
    q4gScalar(out, xq, sx, w, n, dOut, colsG, group);
    if (w2 != 0) q4gScalar(out2, xq, sx, w2, n, dOut, colsG, group);
  }
}

/**
 * xq [n, colsG] i8 (per token: scale max|x| / 127, round half to even, zero-padded), sx [n] f32,
 * and on the relaxed dot zv [n, colsG / 8]: per 32 inputs 4 bytes, the zero point −8 · Σ x that
 * starts a block's sum (expert-q4g-relaxed.ts) — for the i16 form the pair (−8 · Σ x[k], k ≡ 0, 1
 * mod 4; −8 · Σ x[k], k ≡ 2, 3 mod 4), its lanes [2r], [2r + 1]; for the dot-add form their i32 sum.
 */
function quantizeTokensQ4(xq: usize, sx: usize, zv: usize, x: usize, n: i32, d: i32, colsG: i32): void {
  for (let t = 0; t < n; t++) {
    const src = x + (<usize>t * <usize>d << 2);
    const q = xq + <usize>t * <usize>colsG;
    let amax: f32 = 0;
    let i = 0;
    if (ASC_FEATURE_SIMD) {
      let mv = f32x4.splat(0);
      for (; i + 4 <= d; i += 4) mv = f32x4.max(mv, f32x4.abs(v128.load(src + (<usize>i << 2))));
      const m01 = max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1));
      amax = max(m01, max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)));
    }
    for (; i < d; i++) amax = max(amax, Mathf.abs(load<f32>(src + (<usize>i << 2))));
    const inv: f32 = amax > 0 ? <f32>127 / amax : 0;
    i = 0;
    if (ASC_FEATURE_SIMD) {
      const iv = f32x4.splat(inv);
      for (; i + 16 <= d; i += 16) {
        const p = src + (<usize>i << 2);
        const a = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), iv)));
        const b = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), iv)));
        const c = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 32), iv)));
        const e = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 48), iv)));
        v128.store(q + <usize>i, i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(a, b), i16x8.narrow_i32x4_s(c, e)));
      }
    }
    for (; i < d; i++) store<i8>(q + <usize>i, <i8><i32>nearest<f32>(load<f32>(src + (<usize>i << 2)) * inv));
    for (; i < colsG; i++) store<i8>(q + <usize>i, 0);
    store<f32>(sx + (<usize>t << 2), amax / 127);
    if (ASC_FEATURE_RELAXED_SIMD) {
      if (q4Form > 0) {
        const z = zv + <usize>t * <usize>(colsG >> 3);
        for (let k = 0; k < colsG; k += 32) {
          let z0 = 0, z1 = 0;
          for (let i = 0; i < 32; i += 4) {
            const b = q + <usize>(k + i);
            z0 += <i32>load<i8>(b) + <i32>load<i8>(b, 1);
            z1 += <i32>load<i8>(b, 2) + <i32>load<i8>(b, 3);
          }
          const zb = z + <usize>(k >> 3);
          if (q4Form == 2) store<i32>(zb, -8 * (z0 + z1));
          else {
            store<i16>(zb, <i16>(-8 * z0));
            store<i16>(zb, <i16>(-8 * z1), 2);
          }
        }
      }
    }
  }
}

/** The scalar build: the same exact integer sums (in f32 once per 8192 inputs), one rescale per row. */
function q4gScalar(out: usize, xq: usize, sx: usize, w: usize, n: i32, dOut: i32, colsG: i32, group: i32): void {
  const groups = colsG / group;
  const chunkGroups = max(1, 8192 / group);
  const rows4 = dOut & ~3;
  const wRow = <usize>(colsG >> 1);
  const units = w + <usize>dOut * wRow;
  const subs = units + (<usize>dOut << 2);
  for (let t = 0; t < n; t++) {
    const xt = xq + <usize>t * <usize>colsG;
    const st = load<f32>(sx + (<usize>t << 2));
    for (let j = 0; j < dOut; j++) {
      // Panel rows: row j's byte m of a 32-input block sits at its panel + 64 · block + 16 · (m >> 2)
      // + 4 · (j & 3) + (m & 3); its subs at the panel's [group][4 rows].
      const inPanel = j < rows4;
      const wj = inPanel ? w + <usize>(j & ~3) * wRow + (<usize>(j & 3) << 2) : w + <usize>j * wRow;
      const sj = inPanel
        ? subs + ((<usize>(j & ~3) * <usize>groups + <usize>(j & 3)) << 1)
        : subs + (<usize>j * <usize>groups << 1);
      const sStep: usize = inPanel ? 8 : 2;
      let f: f32 = 0;
      for (let g0 = 0; g0 < groups; g0 += chunkGroups) {
        let isum: i32 = 0;
        for (let g = g0; g < min(groups, g0 + chunkGroups); g++) {
          let s: i32 = 0;
          for (let k = g * group; k < (g + 1) * group; k += 32) {
            const wb = inPanel ? wj + <usize>(k << 1) : wj + <usize>(k >> 1);
            const xk = xt + <usize>k;
            for (let i = 0; i < 16; i++) {
              const b = <i32>load<u8>(wb + (inPanel ? <usize>((i >> 2) << 4) + <usize>(i & 3) : <usize>i));
              s += ((b & 15) - 8) * <i32>load<i8>(xk + <usize>i);
              s += ((b >> 4) - 8) * <i32>load<i8>(xk + <usize>(i + 16));
            }
          }
          isum += s * <i32>load<i16>(sj + <usize>g * sStep);
        }
        f += <f32>isum;
      }
      store<f32>(out + ((<usize>t * <usize>dOut + <usize>j) << 2), f * load<f32>(units + (<usize>j << 2)) * st);
    }
  }
}
