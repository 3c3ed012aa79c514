/**
 * @module expert-q4g-plain — the int4 group matmul on plain SIMD (the simd build, and
 * Kernels.setQ4Relaxed(false)) and the dOut % 4 rows after the last panel on every SIMD form: signed
 * nibbles and i16 products, the same exact integer sums as the relaxed forms
 * (expert-q4g-relaxed.ts), so the same bits.
 */

/** Inputs summed in i32 before a row's partial goes to f32: 8192 · 255 · 8 · 127 < 2^31. */
export const CHUNK = 8192;

/** y = f32(Σ) · unit · sx for 4 rows of token t. */
// @ts-ignore: decorator
@inline
export function storeRows(out: usize, f: v128, u4: v128, sx: usize, t: i32, oRow: usize, j: i32): void {
  const y = f32x4.mul(f32x4.mul(f, u4), f32x4.splat(load<f32>(sx + (<usize>t << 2))));
  v128.store(out + <usize>t * oRow + (<usize>j << 2), y);
}

/** Form 0 (plain SIMD): signed nibbles, i16 products; rows 0–1 in the low half of each column's
 * products and rows 2–3 in the high half, each half's 4 lanes scaled by its row's sub-scale. */
export function q4gPanelsPlain(
  out: usize, xq: usize, sx: usize, w: usize, n: i32, dOut: i32, colsG: i32, group: i32,
): void {
  const groups = colsG / group;
  const chunkGroups = max(1, CHUNK / group);
  const wRow = <usize>(colsG >> 1);
  const units = w + <usize>dOut * wRow;
  const subs = units + (<usize>dOut << 2);
  const sRow = <usize>groups << 1;
  const oRow = <usize>dOut << 2;
  for (let j = 0; j + 4 <= dOut; j += 4) {
    const w0 = w + <usize>j * wRow;
    const s0 = subs + <usize>j * sRow;
    const u4 = v128.load(units + (<usize>j << 2));
    for (let t = 0; t < n; t++) {
      const xt = xq + <usize>t * <usize>colsG;
      let f = f32x4.splat(0);
      for (let g0 = 0; g0 < groups; g0 += chunkGroups) {
        let aL = i32x4.splat(0), aH = i32x4.splat(0);
        const g1 = min(groups, g0 + chunkGroups);
        for (let g = g0; g < g1; g++) {
          const s = v128.load64_zero(s0 + (<usize>g << 3));
          const sL = v128.shuffle<i16>(s, s, 0, 0, 0, 0, 1, 1, 1, 1);
          const sH = v128.shuffle<i16>(s, s, 2, 2, 2, 2, 3, 3, 3, 3);
          const kEnd = <usize>((g + 1) * group);
          for (let k = <usize>(g * group); k < kEnd; ) {
            // Up to 4 blocks in i16: |Σ| ≤ 4 · 8 · 8 · 127 per lane.
            const runEnd = min(kEnd, k + 128);
            let pL = i16x8.splat(0), pH = i16x8.splat(0);
            for (; k < runEnd; k += 32) {
              for (let c: usize = 0; c < 16; c += 4) {
                const v = v128.load(w0 + (k << 1) + (c << 2));
                const ql = i8x16.sub(v128.and(v, i8x16.splat(15)), i8x16.splat(8));
                const qh = i8x16.sub(i8x16.shr_u(v, 4), i8x16.splat(8));
                const xl = v128.load32_splat(xt + k + c);
                const xh = v128.load32_splat(xt + k + c, 16);
                pL = i16x8.add(pL, i16x8.add(i16x8.extmul_low_i8x16_s(ql, xl), i16x8.extmul_low_i8x16_s(qh, xh)));
                pH = i16x8.add(pH, i16x8.add(i16x8.extmul_high_i8x16_s(ql, xl), i16x8.extmul_high_i8x16_s(qh, xh)));
              }
            }
            aL = i32x4.add(aL, i32x4.dot_i16x8_s(pL, sL));
            aH = i32x4.add(aH, i32x4.dot_i16x8_s(pH, sH));
          }
        }
        const rows = i32x4.add(v128.shuffle<i32>(aL, aH, 0, 2, 4, 6), v128.shuffle<i32>(aL, aH, 1, 3, 5, 7));
        f = f32x4.add(f, f32x4.convert_i32x4_s(rows));
      }
      storeRows(out, f, u4, sx, t, oRow, j);
    }
  }
}

/** The dOut % 4 rows after the last whole panel (row-major, plain SIMD on signed nibbles). */
export function q4gTail(out: usize, xq: usize, sx: usize, w: usize, n: i32, dOut: i32, colsG: i32, group: i32): void {
  const groups = colsG / group;
  const chunkGroups = max(1, CHUNK / group);
  const wRow = <usize>(colsG >> 1);
  const units = w + <usize>dOut * wRow;
  const subs = units + (<usize>dOut << 2);
  const sRow = <usize>groups << 1;
  for (let j = dOut & ~3; j < dOut; j++) {
    const wj = w + <usize>j * wRow;
    const sj = subs + <usize>j * sRow;
    const unit = load<f32>(units + (<usize>j << 2));
    for (let t = 0; t < n; t++) {
      const xt = xq + <usize>t * <usize>colsG;
      let f: f32 = 0;
      for (let g0 = 0; g0 < groups; g0 += chunkGroups) {
        let a = i32x4.splat(0);
        const g1 = min(groups, g0 + chunkGroups);
        for (let g = g0; g < g1; g++) {
          const kEnd = <usize>((g + 1) * group);
          for (let k = <usize>(g * group); k < kEnd; ) {
            // Up to 8 blocks in i16: |Σ| ≤ 8 · 4 · 8 · 127 per lane.
            const runEnd = min(kEnd, k + 256);
            let p = i16x8.splat(0);
            for (; k < runEnd; k += 32) {
              const v = v128.load(wj + (k >> 1));
              const ql = i8x16.sub(v128.and(v, i8x16.splat(15)), i8x16.splat(8));
              const qh = i8x16.sub(i8x16.shr_u(v, 4), i8x16.splat(8));
              const x0 = v128.load(xt + k);
              const x1 = v128.load(xt + k, 16);
              p = i16x8.add(p, i16x8.add(i16x8.extmul_low_i8x16_s(ql, x0), i16x8.extmul_high_i8x16_s(ql, x0)));
              p = i16x8.add(p, i16x8.add(i16x8.extmul_low_i8x16_s(qh, x1), i16x8.extmul_high_i8x16_s(qh, x1)));
            }
            a = i32x4.add(a, i32x4.dot_i16x8_s(p, v128.load16_splat(sj + (<usize>g << 1))));
          }
        }
        f += <f32>(i32x4.extract_lane(a, 0) + i32x4.extract_lane(a, 1) + i32x4.extract_lane(a, 2) +
          i32x4.extract_lane(a, 3));
      }
      store<f32>(out + ((<usize>t * <usize>dOut + <usize>j) << 2), f * unit * load<f32>(sx + (<usize>t << 2)));
    }
  }
}
