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
 *  - bf16: [rows × cols8 u16, cols8 = cols rounded up to 8, zero-padded], each block of 8 stored in
 *    the order w0 w4 w1 w5 w2 w6 w3 w7 so one u32 lane holds (w[m], w[m + 4]): `shl 16` widens
 *    w0..w3 and `and 0xffff0000` widens w4..w7, two instructions per 8 weights and no shuffle.
 *
 * Decode (n = 1) streams every weight once; the SIMD kernels run 4 rows at a time so each
 * activation vector loaded feeds 4 rows, and loop tokens inside a 4-row block so the block's
 * weights come from L1/L2 for every token after the first.
 */
import { hsum4, madd } from "./simd-math";

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
export function matmulQ8g(out: usize, x: usize, w: usize, n: i32, dIn: i32, dOut: i32, group: i32, scratch: usize): void {
  const colsG = ((dIn + group - 1) / group) * group;
  const groups = colsG / group;
  const sx = scratch;
  const xq = scratch + align16(<usize>n << 2);
  const xRow = <usize>colsG << 1;
  for (let t = 0; t < n; t++) {
    store<f32>(sx + (<usize>t << 2), quantizeI16(xq + <usize>t * xRow, x + (<usize>t * <usize>dIn << 2), dIn, colsG));
  }
  const scales = w + <usize>dOut * <usize>colsG;
  if (ASC_FEATURE_SIMD) q8gSimd(out, xq, sx, w, scales, n, dOut, colsG, group, groups);
  else q8gScalar(out, xq, sx, w, scales, n, dOut, colsG, group, groups);
}

/** q[k] = nearest-even(x[k] · 32767 / max|x|) as i16, zero up to kPad; returns max|x| / 32767. */
function quantizeI16(q: usize, src: usize, d: i32, kPad: i32): f32 {
  let amax: f32 = 0;
  let i = 0;
  if (ASC_FEATURE_SIMD) {
    let mv = f32x4.splat(0);
    for (; i + 4 <= d; i += 4) mv = f32x4.max(mv, f32x4.abs(v128.load(src + (<usize>i << 2))));
    amax = max(max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1)), max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)));
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

function q8gScalar(out: usize, xq: usize, sx: usize, w: usize, scales: usize, n: i32, dOut: i32, colsG: i32, group: i32, groups: i32): void {
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
  return i32x4.add(acc, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(w), v128.load(x)), i32x4.dot_i16x8_s(v128.load8x8_s(w, 8), v128.load(x, 16))));
}

function q8gSimd(out: usize, xq: usize, sx: usize, w: usize, scales: usize, n: i32, dOut: i32, colsG: i32, group: i32, groups: i32): void {
  const xRow = <usize>colsG << 1;
  const wRow = <usize>colsG;
  const sRow = <usize>groups << 2;
  const oRow = <usize>dOut << 2;
  let j = 0;
  for (; j + 4 <= dOut; j += 4) {
    const w0 = w + <usize>j * wRow;
    const s0 = scales + <usize>j * sRow;
    for (let t = 0; t < n; t++) {
      const xt = xq + <usize>t * xRow;
      let f0 = f32x4.splat(0), f1 = f32x4.splat(0), f2 = f32x4.splat(0), f3 = f32x4.splat(0);
      for (let g = 0; g < groups; g++) {
        let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
        const k0 = <usize>(g * group);
        const k1 = k0 + <usize>group;
        for (let k = k0; k < k1; k += 16) {
          const xl = v128.load(xt + (k << 1));
          const xh = v128.load(xt + (k << 1), 16);
          const wk = w0 + k;
          a0 = i32x4.add(a0, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(wk), xl), i32x4.dot_i16x8_s(v128.load8x8_s(wk, 8), xh)));
          const wk1 = wk + wRow;
          a1 = i32x4.add(a1, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(wk1), xl), i32x4.dot_i16x8_s(v128.load8x8_s(wk1, 8), xh)));
          const wk2 = wk1 + wRow;
          a2 = i32x4.add(a2, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(wk2), xl), i32x4.dot_i16x8_s(v128.load8x8_s(wk2, 8), xh)));
          const wk3 = wk2 + wRow;
          a3 = i32x4.add(a3, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(wk3), xl), i32x4.dot_i16x8_s(v128.load8x8_s(wk3, 8), xh)));
        }
        const sg = s0 + (<usize>g << 2);
        f0 = madd(f32x4.convert_i32x4_s(a0), f32x4.splat(load<f32>(sg)), f0);
        f1 = madd(f32x4.convert_i32x4_s(a1), f32x4.splat(load<f32>(sg + sRow)), f1);
        f2 = madd(f32x4.convert_i32x4_s(a2), f32x4.splat(load<f32>(sg + 2 * sRow)), f2);
        f3 = madd(f32x4.convert_i32x4_s(a3), f32x4.splat(load<f32>(sg + 3 * sRow)), f3);
      }
      const y = f32x4.mul(hsum4(f0, f1, f2, f3), f32x4.splat(load<f32>(sx + (<usize>t << 2))));
      v128.store(out + <usize>t * oRow + (<usize>j << 2), y);
    }
  }
  for (; j < dOut; j++) {
    const wj = w + <usize>j * wRow;
    const sj = scales + <usize>j * sRow;
    for (let t = 0; t < n; t++) {
      const xt = xq + <usize>t * xRow;
      let f = f32x4.splat(0);
      for (let g = 0; g < groups; g++) {
        let a = i32x4.splat(0);
        const k0 = <usize>(g * group);
        for (let k = k0; k < k0 + <usize>group; k += 16) a = dotGroup(a, wj + k, xt + (k << 1));
        f = madd(f32x4.convert_i32x4_s(a), f32x4.splat(load<f32>(sj + (<usize>g << 2))), f);
      }
      const s = (f32x4.extract_lane(f, 0) + f32x4.extract_lane(f, 1)) + (f32x4.extract_lane(f, 2) + f32x4.extract_lane(f, 3));
      store<f32>(out + <usize>t * oRow + (<usize>j << 2), s * load<f32>(sx + (<usize>t << 2)));
    }
  }
}

/** Byte offset of column k inside a bf16 row (blocks of 8 stored w0 w4 w1 w5 w2 w6 w3 w7). */
// @ts-ignore: decorator
@inline
function bf16Slot(k: i32): usize {
  const m = k & 7;
  return <usize>((k & ~7) + (m < 4 ? m << 1 : ((m - 4) << 1) + 1)) << 1;
}

// @ts-ignore: decorator
@inline
function bf16At(row: usize, k: i32): f32 {
  return reinterpret<f32>(<u32>load<u16>(row + bf16Slot(k)) << 16);
}

/** out[n, dOut] = x[n, dIn] · wᵀ on a bf16 matrix (layout above). No scratch. */
export function matmulBf16(out: usize, x: usize, w: usize, n: i32, dIn: i32, dOut: i32): void {
  const cols8 = (dIn + 7) & ~7;
  const wRow = <usize>cols8 << 1;
  const xRow = <usize>dIn << 2;
  const oRow = <usize>dOut << 2;
  const k8 = dIn & ~7;
  let j = 0;
  if (ASC_FEATURE_SIMD) {
    const hiMask = i32x4.splat(0xffff0000);
    for (; j + 4 <= dOut; j += 4) {
      const w0 = w + <usize>j * wRow;
      for (let t = 0; t < n; t++) {
        const xt = x + <usize>t * xRow;
        let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
        for (let k = 0; k < k8; k += 8) {
          const xl = v128.load(xt + (<usize>k << 2));
          const xh = v128.load(xt + (<usize>k << 2), 16);
          const wk = w0 + (<usize>k << 1);
          let v = v128.load(wk);
          a0 = madd(i32x4.shl(v, 16), xl, a0);
          a0 = madd(v128.and(v, hiMask), xh, a0);
          v = v128.load(wk + wRow);
          a1 = madd(i32x4.shl(v, 16), xl, a1);
          a1 = madd(v128.and(v, hiMask), xh, a1);
          v = v128.load(wk + 2 * wRow);
          a2 = madd(i32x4.shl(v, 16), xl, a2);
          a2 = madd(v128.and(v, hiMask), xh, a2);
          v = v128.load(wk + 3 * wRow);
          a3 = madd(i32x4.shl(v, 16), xl, a3);
          a3 = madd(v128.and(v, hiMask), xh, a3);
        }
        let y = hsum4(a0, a1, a2, a3);
        if (k8 < dIn) {
          let r0: f32 = 0, r1: f32 = 0, r2: f32 = 0, r3: f32 = 0;
          for (let k = k8; k < dIn; k++) {
            const xv = load<f32>(xt + (<usize>k << 2));
            r0 += bf16At(w0, k) * xv;
            r1 += bf16At(w0 + wRow, k) * xv;
            r2 += bf16At(w0 + 2 * wRow, k) * xv;
            r3 += bf16At(w0 + 3 * wRow, k) * xv;
          }
          y = f32x4.add(y, f32x4(r0, r1, r2, r3));
        }
        v128.store(out + <usize>t * oRow + (<usize>j << 2), y);
      }
    }
  }
  for (; j < dOut; j++) {
    const wj = w + <usize>j * wRow;
    for (let t = 0; t < n; t++) {
      const xt = x + <usize>t * xRow;
      let s: f32 = 0;
      for (let k = 0; k < dIn; k++) s += bf16At(wj, k) * load<f32>(xt + (<usize>k << 2));
      store<f32>(out + <usize>t * oRow + (<usize>j << 2), s);
    }
  }
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
    for (let k = 0; k < cols; k++) store<f32>(o + (<usize>k << 2), <f32>load<i8>(wj + <usize>k) * load<f32>(sj + (<usize>(k / group) << 2)));
  }
}

/** Widens rows ids[0..count) of a bf16 matrix [rows, cols] into out[count, cols] f32 (exact). */
export function gatherBf16(out: usize, w: usize, ids: usize, count: i32, rows: i32, cols: i32): void {
  const wRow = <usize>((cols + 7) & ~7) << 1;
  for (let c = 0; c < count; c++) {
    const j = <usize>load<i32>(ids + (<usize>c << 2));
    const wj = w + j * wRow;
    const o = out + (<usize>c * <usize>cols << 2);
    for (let k = 0; k < cols; k++) store<f32>(o + (<usize>k << 2), bf16At(wj, k));
  }
}
