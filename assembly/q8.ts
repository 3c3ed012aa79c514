/**
 * @module q8 — int8 matmul and the fused SwiGLU expert on symmetric int8 weights.
 *
 * Weights: q[j, k] ∈ [-127, 127] with one f32 scale per output row (w ≈ scale[j]·q[j, k]),
 * packed like the f32 panels (assembly/packed.ts) but with 16 int8 columns per k-block:
 * panel[kb][r][c] = q[8p + r][16kb + c], zero-padded to 8 rows and cols rounded up to 16.
 * A packed matrix is one blob: [panels: rows8 × cols16 bytes][scale f32 × rows8][rowSum i32 × rows8]
 * with rowSum[j] = Σ_k q[j, k] (for the zero point below).
 *
 * Activations are quantized per token inside the kernel (symmetric, scale = max|x| / QMAX,
 * round to nearest even), then every output is an exact integer dot product rescaled once:
 * y[j] = scale[j] · sx · Σ_k q[j, k]·xq[k]. Two dot paths:
 *   plain (every SIMD build, and the scalar build): xq ∈ [-127, 127] widened to i16;
 *     i32x4.dot_i16x8_s on the weights sign-extended by v128.load8x8_s.
 *   relaxed (relaxed build, after the start-up probe agrees with exact arithmetic):
 *     the relaxed i8×i7 dot (see rdot) takes its second operand as 7-bit unsigned, so
 *     activations get 7 bits: xq ∈ [-63, 63] stored as xq + 64 ∈ [1, 127], and the zero point
 *     comes back out exactly as 64·rowSum[j]. One instruction per 16 multiply-adds.
 * Both keep every product and pair sum inside i16/i32 (2·127·127 < 2^15), so the integer part is
 * exact and the two paths differ only by the activation rounding (8 vs 7 bits).
 *
 * Tiles, loop order and the fused gate/up panel are those of the f32 kernels: ≤ 8 i32x4
 * accumulators, panels outermost, gate rows 0–3 and up rows 4–7 of each gate/up panel.
 */
import { hsum4i, siluMul4 } from "./simd-math";

/** Integer sums of the last tile (layout as ACC in packed.ts); hi/lo mode: the hi sums, and the
 * lo sums 32 bytes on. */
const ACCI: usize = memory.data(64, 16);
const KB_BYTES: usize = 128; // one k-block of a panel: 8 rows × 16 int8

/** true while a relaxed dot path is on (only ever in the relaxed build). */
let relaxedDot: bool = ASC_FEATURE_RELAXED_SIMD;
/** Which relaxed instruction form (see rdot): 1 = i16x8 dot + extadd, 2 = i32x4 dot-add. */
let dotForm: i32 = 1;
/** Relaxed activations as two 7-bit digits (14 bits, two dots per weight) instead of 7 bits. */
let hiLo: bool = false;

/**
 * Chooses the int8 dot: 0 = plain dot_i16x8 (12-bit activations); relaxed, 7-bit activations:
 * 1 = i16x8 form, 2 = i32x4 dot-add form; relaxed, 14-bit activations (hi/lo digits): 3 = i16x8
 * form, 4 = dot-add form. The host chooses after its probe; returns the mode in effect (always 0
 * outside the relaxed build).
 */
export function setQ8Relaxed(mode: i32): i32 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    relaxedDot = mode >= 1 && mode <= 4;
    hiLo = mode >= 3 && mode <= 4;
    if (relaxedDot) dotForm = hiLo ? mode - 2 : mode;
  }
  return relaxedDot ? (hiLo ? dotForm + 2 : dotForm) : 0;
}

/** The relaxed dot form in use (1 = i16x8 form, 2 = dot-add form), 0 when the plain path is on:
 * other int8/int4 kernels (expert-q4g-relaxed.ts) follow the host's probe-checked choice. */
export function relaxedDotForm(): i32 {
  return relaxedDot ? dotForm : 0;
}

/** Bytes of one quantized activation row of kPad (multiple of 16) values. */
// @ts-ignore: decorator
@inline
function qRowBytes(kPad: i32): usize {
  return relaxedDot && !hiLo ? <usize>kPad : <usize>kPad << 1;
}

// @ts-ignore: decorator
@inline
function align16(b: usize): usize {
  return (b + 15) & ~<usize>15;
}

/** Bytes of a packed q8 matrix of rows × cols. */
export function q8MatrixBytes(rows: i32, cols: i32): usize {
  const rows8 = <usize>((rows + 7) & ~7);
  const cols16 = <usize>((cols + 15) & ~15);
  return rows8 * cols16 + rows8 * 8;
}

/** out[n, dOut] = x[n, dIn] · wᵀ, w a packed q8 matrix; scratch ≥ ffnScratchBytes(2, n, dIn, dOut). */
export function matmulQ8(out: usize, x: usize, wq: usize, n: i32, dIn: i32, dOut: i32, scratch: usize): void {
  const k16 = (dIn + 15) & ~15;
  const sx = scratch; // [n] f32
  const xq = scratch + align16(<usize>n << 2); // [n, qRowBytes(k16)]
  quantizeRows(xq, sx, x, n, dIn, k16);
  matmulQ8Panels(out, dOut, xq, qRowBytes(k16), sx, wq, n, k16 >> 4, dOut);
}

/**
 * One SwiGLU expert on a packed q8 blob: [gate/up matrix: 2·dFf16 rows × dModel][w2: dModel rows ×
 * dFf16], dX16 = dX rounded up to 16. scratch ≥ ffnScratchBytes(1, n, dModel, dFf).
 */
export function expertFfnQ8(out: usize, x: usize, blob: usize, n: i32, dModel: i32, dFf: i32, scratch: usize): void {
  const dm16 = (dModel + 15) & ~15;
  const df16 = (dFf + 15) & ~15;
  let s = scratch;
  const sx = s; // [n] f32
  s += align16(<usize>n << 2);
  const xq = s; // [n, dm16] quantized
  s += <usize>n * qRowBytes(dm16);
  const h = s; // [n, df16] f32
  s += <usize>n * <usize>df16 * 4;
  const sh = s; // [n] f32
  s += align16(<usize>n << 2);
  const hq = s; // [n, df16] quantized
  quantizeRows(xq, sx, x, n, dModel, dm16);
  gateUpQ8(h, df16, xq, qRowBytes(dm16), sx, blob, n, dm16 >> 4, df16 >> 2);
  quantizeRows(hq, sh, h, n, df16, df16);
  const w2 = blob + q8MatrixBytes(2 * df16, dm16);
  matmulQ8Panels(out, dModel, hq, qRowBytes(df16), sh, w2, n, df16 >> 4, dModel);
}

/** Per-token symmetric quantization of x[n, d] into rows of kPad values (zero-padded). */
function quantizeRows(dst: usize, scales: usize, x: usize, n: i32, d: i32, kPad: i32): void {
  const rowBytes = qRowBytes(kPad);
  for (let t = 0; t < n; t++) {
    const src = x + (<usize>t * <usize>d << 2);
    const q = dst + <usize>t * rowBytes;
    const scale = relaxedDot
      ? (hiLo ? quantizeRowHiLo(q, src, d, kPad) : quantizeRowU7(q, src, d, kPad))
      : quantizeRowI16(q, src, d, kPad);
    store<f32>(scales + (<usize>t << 2), scale);
  }
}

function absMax(src: usize, d: i32): f32 {
  let m: f32 = 0;
  let i = 0;
  if (ASC_FEATURE_SIMD) {
    let mv = f32x4.splat(0);
    for (; i + 4 <= d; i += 4) mv = f32x4.max(mv, f32x4.abs(v128.load(src + (<usize>i << 2))));
    m = max(
      max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1)),
      max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)),
    );
  }
  for (; i < d; i++) m = max(m, Mathf.abs(load<f32>(src + (<usize>i << 2))));
  return m;
}

/**
 * Largest activation level of the plain path for rows of kPad values: 12 bits (2047), fewer when
 * kPad·127·level would overflow the i32 sum (kPad > 8256; never for today's expert shapes).
 */
export function plainLevels(kPad: i32): i32 {
  return min(2047, <i32>(<u32>2147483647 / (<u32>127 * <u32>kPad)));
}

/** xq[k] = nearest(x[k]·L/max|x|) as i16, L = plainLevels (the plain dot path: 12-bit
 * activations, as cheap as 8 since they are widened to i16 anyway); returns the scale max|x|/L. */
function quantizeRowI16(q: usize, src: usize, d: i32, kPad: i32): f32 {
  const amax = absMax(src, d);
  const levels = <f32>plainLevels(kPad);
  const inv: f32 = amax > 0 ? levels / amax : 0;
  let i = 0;
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
  return amax / levels;
}

/**
 * 14-bit activations for the relaxed dot as two 7-bit digits: v = nearest(x·8191/max|x|) ∈
 * [-8191, 8191] = 128·hi + lo with hi = v >> 7 ∈ [-64, 63] stored + 64, lo = v & 127; hi digits
 * at q, lo digits at q + kPad. Returns max|x|/8191.
 */
function quantizeRowHiLo(q: usize, src: usize, d: i32, kPad: i32): f32 {
  const amax = absMax(src, d);
  const inv: f32 = amax > 0 ? <f32>8191 / amax : 0;
  const lo = q + <usize>kPad;
  let i = 0;
  if (ASC_FEATURE_SIMD) {
    const iv = f32x4.splat(inv);
    const zp = i32x4.splat(64);
    const m = i32x4.splat(127);
    for (; i + 8 <= d; i += 8) {
      const p = src + (<usize>i << 2);
      const v0 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), iv)));
      const v1 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), iv)));
      const h = i16x8.narrow_i32x4_s(i32x4.add(i32x4.shr_s(v0, 7), zp), i32x4.add(i32x4.shr_s(v1, 7), zp));
      const l = i16x8.narrow_i32x4_s(v128.and(v0, m), v128.and(v1, m));
      v128.store64_lane(q + <usize>i, i8x16.narrow_i16x8_u(h, h), 0);
      v128.store64_lane(lo + <usize>i, i8x16.narrow_i16x8_u(l, l), 0);
    }
  }
  for (; i < d; i++) {
    const v = <i32>nearest<f32>(load<f32>(src + (<usize>i << 2)) * inv);
    store<u8>(q + <usize>i, <u8>((v >> 7) + 64));
    store<u8>(lo + <usize>i, <u8>(v & 127));
  }
  for (; i < kPad; i++) {
    store<u8>(q + <usize>i, 64);
    store<u8>(lo + <usize>i, 0);
  }
  return amax / 8191;
}

/** xq[k] = nearest(x[k]·63/max|x|) + 64 as u8 (the relaxed dot path); returns max|x|/63. */
function quantizeRowU7(q: usize, src: usize, d: i32, kPad: i32): f32 {
  const amax = absMax(src, d);
  const inv: f32 = amax > 0 ? <f32>63 / amax : 0;
  let i = 0;
  if (ASC_FEATURE_SIMD) {
    const iv = f32x4.splat(inv);
    const zp = i16x8.splat(64);
    for (; i + 16 <= d; i += 16) {
      const p = src + (<usize>i << 2);
      const v0 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), iv)));
      const v1 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), iv)));
      const v2 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 32), iv)));
      const v3 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 48), iv)));
      const lo = i16x8.add(i16x8.narrow_i32x4_s(v0, v1), zp);
      const hi = i16x8.add(i16x8.narrow_i32x4_s(v2, v3), zp);
      v128.store(q + <usize>i, i8x16.narrow_i16x8_u(lo, hi));
    }
  }
  for (; i < d; i++) store<u8>(q + <usize>i, <u8>(<i32>nearest<f32>(load<f32>(src + (<usize>i << 2)) * inv) + 64));
  for (; i < kPad; i++) store<u8>(q + <usize>i, 64);
  return amax / 63;
}

/** out[t, j] for j < dOut from quantized rows xq (xqRow bytes apart) and their scales sx. */
function matmulQ8Panels(
  out: usize, ldo: i32, xq: usize, xqRow: usize, sx: usize, wq: usize, n: i32, kBlocks: i32, dOut: i32,
): void {
  const rows8 = <usize>((dOut + 7) & ~7);
  const panelBytes = <usize>kBlocks * KB_BYTES;
  const scales = wq + rows8 * (<usize>kBlocks << 4);
  const sums = scales + (rows8 << 2);
  const oRow = <usize>ldo << 2;
  const panels = (dOut + 7) >> 3;
  for (let p = 0; p < panels; p++) {
    const panel = wq + <usize>p * panelBytes;
    const j0 = p << 3;
    const valid = min(8, dOut - j0);
    let t = 0;
    if (ASC_FEATURE_SIMD) {
      for (; t + 4 <= n; t += 4) {
        const sxv = v128.load(sx + (<usize>t << 2));
        for (let r = 0; r < 4; r++) {
          tileQ8x4x2(xq + <usize>t * xqRow, xqRow, panel, r, kBlocks);
          const ja = <usize>(j0 + r) << 2;
          const ya = rescaleTile(sxv, sums + ja, scales + ja, 0);
          const yb = rescaleTile(sxv, sums + ja, scales + ja, 16);
          const o = out + <usize>t * oRow + ja;
          if (r < valid) {
            store<f32>(o, f32x4.extract_lane(ya, 0));
            store<f32>(o + oRow, f32x4.extract_lane(ya, 1));
            store<f32>(o + 2 * oRow, f32x4.extract_lane(ya, 2));
            store<f32>(o + 3 * oRow, f32x4.extract_lane(ya, 3));
          }
          if (r + 4 < valid) {
            store<f32>(o, f32x4.extract_lane(yb, 0), 16);
            store<f32>(o + oRow, f32x4.extract_lane(yb, 1), 16);
            store<f32>(o + 2 * oRow, f32x4.extract_lane(yb, 2), 16);
            store<f32>(o + 3 * oRow, f32x4.extract_lane(yb, 3), 16);
          }
        }
      }
    }
    for (; t < n; t++) {
      tileQ8x1x8(xq + <usize>t * xqRow, panel, kBlocks);
      const s = load<f32>(sx + (<usize>t << 2));
      const o = out + <usize>t * oRow + (<usize>j0 << 2);
      const jb = <usize>j0 << 2;
      if (ASC_FEATURE_SIMD) {
        const sv = f32x4.splat(s);
        const ya = rescaleRows(sv, sums + jb, scales + jb, 0);
        const yb = rescaleRows(sv, sums + jb, scales + jb, 16);
        v128.store(ACCI, ya);
        v128.store(ACCI, yb, 16);
      } else {
        for (let r: usize = 0; r < 32; r += 4) {
          store<f32>(ACCI + r, <f32>load<i32>(ACCI + r) * (load<f32>(scales + jb + r) * s));
        }
      }
      memory.copy(o, ACCI, <usize>valid << 2);
    }
  }
}

/** hi/lo mode: f32(128·(hi − 64·rowSum) + lo) · scale, per lane (combined in f32: 128·hi may pass
 * i32 for long rows; f32 keeps 24 bits of a result that the scales round anyway). */
// @ts-ignore: decorator
@inline
function rescaleHiLo(hi: v128, lo: v128, rowSum: v128, scale: v128): v128 {
  const h = f32x4.convert_i32x4_s(i32x4.sub(hi, i32x4.shl(rowSum, 6)));
  return f32x4.mul(f32x4.add(f32x4.mul(h, f32x4.splat(128)), f32x4.convert_i32x4_s(lo)), scale);
}

/**
 * One weight row (rows[off], off 0 = row r, 16 = row r + 4 of the tile) for the 4 tokens of a
 * 4×2 tile, lanes = tokens: the same lane-wise integer-to-f32 steps as the 1-token path (which has
 * lanes = rows), so each token's outputs are bit-identical to a batch of 1.
 */
// @ts-ignore: decorator
@inline
function rescaleTile(sxv: v128, sums: usize, scales: usize, off: usize): v128 {
  const rowSum = i32x4.splat(load<i32>(sums + off));
  const scale = f32x4.mul(sxv, f32x4.splat(load<f32>(scales + off)));
  if (hiLo) return rescaleHiLo(v128.load(ACCI + off), v128.load(ACCI + off, 32), rowSum, scale);
  return rescale4(v128.load(ACCI + off), rowSum, scale);
}

/** Rows off/4 .. off/4 + 3 of a panel for one token (sv = its scale splatted), lanes = rows: the
 * 1-token path's rescale (ACCI as tileQ8x1x8 left it). */
// @ts-ignore: decorator
@inline
function rescaleRows(sv: v128, sums: usize, scales: usize, off: usize): v128 {
  const scale = f32x4.mul(sv, v128.load(scales + off));
  if (hiLo) return rescaleHiLo(v128.load(ACCI + off), v128.load(ACCI + off, 32), v128.load(sums + off), scale);
  return rescale4(v128.load(ACCI + off), v128.load(sums + off), scale);
}

/** f32(sum − zeroPoint·rowSum) · scale, per lane; the zero point is 64 on the relaxed path. */
// @ts-ignore: decorator
@inline
function rescale4(sum: v128, rowSum: v128, scale: v128): v128 {
  if (relaxedDot) sum = i32x4.sub(sum, i32x4.shl(rowSum, 6));
  return f32x4.mul(f32x4.convert_i32x4_s(sum), scale);
}

/** h[t, 4p + r] = silu(gate)·up over the fused gate/up q8 panels. */
function gateUpQ8(
  h: usize, ldh: i32, xq: usize, xqRow: usize, sx: usize, w13: usize, n: i32, kBlocks: i32, panels: i32,
): void {
  const rows8 = <usize>panels << 3;
  const panelBytes = <usize>kBlocks * KB_BYTES;
  const scales = w13 + rows8 * (<usize>kBlocks << 4);
  const sums = scales + (rows8 << 2);
  const hRow = <usize>ldh << 2;
  for (let p = 0; p < panels; p++) {
    const panel = w13 + <usize>p * panelBytes;
    const jb = <usize>p << 5; // byte offset of row 8p in scales / sums
    const hj = <usize>p << 4; // byte offset of output 4p in h
    let t = 0;
    if (ASC_FEATURE_SIMD) {
      for (; t + 4 <= n; t += 4) {
        const sxv = v128.load(sx + (<usize>t << 2));
        const ht = h + <usize>t * hRow + hj;
        for (let r = 0; r < 4; r++) {
          tileQ8x4x2(xq + <usize>t * xqRow, xqRow, panel, r, kBlocks);
          const ja = jb + (<usize>r << 2);
          const g = rescaleTile(sxv, sums + ja, scales + ja, 0);
          const hv = siluMul4(g, rescaleTile(sxv, sums + ja, scales + ja, 16));
          const o = ht + (<usize>r << 2);
          store<f32>(o, f32x4.extract_lane(hv, 0));
          store<f32>(o + hRow, f32x4.extract_lane(hv, 1));
          store<f32>(o + 2 * hRow, f32x4.extract_lane(hv, 2));
          store<f32>(o + 3 * hRow, f32x4.extract_lane(hv, 3));
        }
      }
      for (; t < n; t++) {
        tileQ8x1x8(xq + <usize>t * xqRow, panel, kBlocks);
        const sv = f32x4.splat(load<f32>(sx + (<usize>t << 2)));
        const g = rescaleRows(sv, sums + jb, scales + jb, 0);
        const u = rescaleRows(sv, sums + jb, scales + jb, 16);
        v128.store(h + <usize>t * hRow + hj, siluMul4(g, u));
      }
    } else {
      for (; t < n; t++) {
        tileQ8x1x8(xq + <usize>t * xqRow, panel, kBlocks);
        const s = load<f32>(sx + (<usize>t << 2));
        const o = h + <usize>t * hRow + hj;
        for (let r: usize = 0; r < 16; r += 4) {
          const g = <f32>load<i32>(ACCI + r) * (load<f32>(scales + jb + r) * s);
          const u = <f32>load<i32>(ACCI + r, 16) * (load<f32>(scales + jb + r, 16) * s);
          store<f32>(o + r, (g / (<f32>1 + Mathf.exp(-g))) * u);
        }
      }
    }
  }
}

/** ACCI[r] = Σ_k panel row r · xq (i32), r = 0..7. */
function tileQ8x1x8(xq: usize, panel: usize, kBlocks: i32): void {
  if (!ASC_FEATURE_SIMD) {
    tileQ8x1x8Scalar(xq, panel, kBlocks);
    return;
  }
  if (ASC_FEATURE_RELAXED_SIMD) {
    if (relaxedDot) {
      if (hiLo) {
        // Same quantized-row stride as the plain path (2·kPad): the lo digits start kPad on.
        const lo = xq + (<usize>kBlocks << 4);
        if (dotForm == 1) {
          tileQ8HiLo<i16>(xq, lo, panel, kBlocks, 0);
          tileQ8HiLo<i16>(xq, lo, panel + 64, kBlocks, 16);
        } else {
          tileQ8HiLo<i32>(xq, lo, panel, kBlocks, 0);
          tileQ8HiLo<i32>(xq, lo, panel + 64, kBlocks, 16);
        }
      } else if (dotForm == 1) tileQ8x1x8Relaxed<i16>(xq, panel, kBlocks);
      else tileQ8x1x8Relaxed<i32>(xq, panel, kBlocks);
      return;
    }
  }
  v128.store(ACCI, tileQ8x1x4(xq, panel, kBlocks));
  v128.store(ACCI, tileQ8x1x4(xq, panel + 64, kBlocks), 16);
}

/** Σ_k row r · xq for rows 0–3 from `panel` (8-row k-blocks). The plain path runs a panel as two
 * 4-row halves (the second from L1): with 8 rows, V8 spills the i16 weights and accumulators. */
// @ts-ignore: decorator
@inline
function tileQ8x1x4(xq: usize, panel: usize, kBlocks: i32): v128 {
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
  let w = panel;
  const end = xq + (<usize>kBlocks << 5);
  for (let xp = xq; xp < end; xp += 32) {
    const xl = v128.load(xp);
    const xh = v128.load(xp, 16);
    a0 = i32x4.add(
      a0, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(w), xl), i32x4.dot_i16x8_s(v128.load8x8_s(w, 8), xh)),
    );
    a1 = i32x4.add(
      a1, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(w, 16), xl), i32x4.dot_i16x8_s(v128.load8x8_s(w, 24), xh)),
    );
    a2 = i32x4.add(
      a2, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(w, 32), xl), i32x4.dot_i16x8_s(v128.load8x8_s(w, 40), xh)),
    );
    a3 = i32x4.add(
      a3, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(w, 48), xl), i32x4.dot_i16x8_s(v128.load8x8_s(w, 56), xh)),
    );
    w += KB_BYTES;
  }
  return hsum4i(a0, a1, a2, a3);
}

/**
 * acc + Σ of each 4 adjacent w·x products (w signed, x 7-bit), in one of two instruction forms
 * (F = i16: form 1, F = i32: form 2), both exact:
 *  - i16x8.relaxed_dot_i8x16_i7x16_s + i32x4.extadd_pairwise_i16x8_s + add: on x64 V8 12 (Node 22)
 *    lowers it to pmaddubsw + pmaddwd + paddd — the fastest form there, since V8 12 lowers the
 *    dot-add below to the same instructions but rebuilds a constant for every use and spills;
 *  - i32x4.relaxed_dot_i8x16_i7x16_add_s: one vpdpbusd where V8 uses AVX-VNNI (V8 ≥ 15: workerd).
 */
// @ts-ignore: decorator
@inline
function rdot<F>(w: v128, x: v128, acc: v128): v128 {
  if (sizeof<F>() == 2) return i32x4.add(acc, i32x4.extadd_pairwise_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(w, x)));
  return i32x4.relaxed_dot_i8x16_i7x16_add_s(w, x, acc);
}

function tileQ8x1x8Relaxed<F>(xq: usize, panel: usize, kBlocks: i32): void {
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
  let a4 = i32x4.splat(0), a5 = i32x4.splat(0), a6 = i32x4.splat(0), a7 = i32x4.splat(0);
  let w = panel;
  const end = xq + (<usize>kBlocks << 4);
  for (let xp = xq; xp < end; xp += 16) {
    const xv = v128.load(xp);
    a0 = rdot<F>(v128.load(w), xv, a0);
    a1 = rdot<F>(v128.load(w, 16), xv, a1);
    a2 = rdot<F>(v128.load(w, 32), xv, a2);
    a3 = rdot<F>(v128.load(w, 48), xv, a3);
    a4 = rdot<F>(v128.load(w, 64), xv, a4);
    a5 = rdot<F>(v128.load(w, 80), xv, a5);
    a6 = rdot<F>(v128.load(w, 96), xv, a6);
    a7 = rdot<F>(v128.load(w, 112), xv, a7);
    w += KB_BYTES;
  }
  v128.store(ACCI, hsum4i(a0, a1, a2, a3));
  v128.store(ACCI, hsum4i(a4, a5, a6, a7), 16);
}

/** hi/lo mode, rows 0–3 of `panel` (4-row half of a panel): ACCI[at..] = hi sums, ACCI[at + 32..]
 * = lo sums. 8 accumulators: one weight load feeds both digits. */
function tileQ8HiLo<F>(hi: usize, lo: usize, panel: usize, kBlocks: i32, at: usize): void {
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
  let b0 = i32x4.splat(0), b1 = i32x4.splat(0), b2 = i32x4.splat(0), b3 = i32x4.splat(0);
  let w = panel;
  const d = lo - hi;
  const end = hi + (<usize>kBlocks << 4);
  for (let xp = hi; xp < end; xp += 16) {
    const xh = v128.load(xp);
    const xl = v128.load(xp + d);
    let wv = v128.load(w);
    a0 = rdot<F>(wv, xh, a0);
    b0 = rdot<F>(wv, xl, b0);
    wv = v128.load(w, 16);
    a1 = rdot<F>(wv, xh, a1);
    b1 = rdot<F>(wv, xl, b1);
    wv = v128.load(w, 32);
    a2 = rdot<F>(wv, xh, a2);
    b2 = rdot<F>(wv, xl, b2);
    wv = v128.load(w, 48);
    a3 = rdot<F>(wv, xh, a3);
    b3 = rdot<F>(wv, xl, b3);
    w += KB_BYTES;
  }
  v128.store(ACCI + at, hsum4i(a0, a1, a2, a3));
  v128.store(ACCI + at, hsum4i(b0, b1, b2, b3), 32);
}

/** ACCI[0..3] = row r for tokens 0..3, ACCI[4..7] = row r + 4; hi/lo mode: the hi digits' sums
 * there and the lo digits' sums 32 bytes on (a second pass over the same panel rows, from L1). */
function tileQ8x4x2(xq: usize, xqRow: usize, panel: usize, r: i32, kBlocks: i32): void {
  if (ASC_FEATURE_RELAXED_SIMD) {
    if (relaxedDot) {
      // hi/lo rows keep the plain stride (2·kPad): the lo digits start kPad on.
      const lo = xq + (<usize>kBlocks << 4);
      if (dotForm == 1) {
        tileQ8x4x2Relaxed<i16>(xq, xqRow, panel, r, kBlocks, 0);
        if (hiLo) tileQ8x4x2Relaxed<i16>(lo, xqRow, panel, r, kBlocks, 32);
      } else {
        tileQ8x4x2Relaxed<i32>(xq, xqRow, panel, r, kBlocks, 0);
        if (hiLo) tileQ8x4x2Relaxed<i32>(lo, xqRow, panel, r, kBlocks, 32);
      }
      return;
    }
  }
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
  let b0 = i32x4.splat(0), b1 = i32x4.splat(0), b2 = i32x4.splat(0), b3 = i32x4.splat(0);
  let w = panel + (<usize>r << 4);
  const x1 = xqRow;
  const x2 = 2 * xqRow;
  const x3 = 3 * xqRow;
  const end = xq + (<usize>kBlocks << 5);
  for (let xp = xq; xp < end; xp += 32) {
    const wal = v128.load8x8_s(w);
    const wah = v128.load8x8_s(w, 8);
    const wbl = v128.load8x8_s(w, 64);
    const wbh = v128.load8x8_s(w, 72);
    let xl = v128.load(xp);
    let xh = v128.load(xp, 16);
    a0 = i32x4.add(a0, i32x4.add(i32x4.dot_i16x8_s(wal, xl), i32x4.dot_i16x8_s(wah, xh)));
    b0 = i32x4.add(b0, i32x4.add(i32x4.dot_i16x8_s(wbl, xl), i32x4.dot_i16x8_s(wbh, xh)));
    xl = v128.load(xp + x1);
    xh = v128.load(xp + x1, 16);
    a1 = i32x4.add(a1, i32x4.add(i32x4.dot_i16x8_s(wal, xl), i32x4.dot_i16x8_s(wah, xh)));
    b1 = i32x4.add(b1, i32x4.add(i32x4.dot_i16x8_s(wbl, xl), i32x4.dot_i16x8_s(wbh, xh)));
    xl = v128.load(xp + x2);
    xh = v128.load(xp + x2, 16);
    a2 = i32x4.add(a2, i32x4.add(i32x4.dot_i16x8_s(wal, xl), i32x4.dot_i16x8_s(wah, xh)));
    b2 = i32x4.add(b2, i32x4.add(i32x4.dot_i16x8_s(wbl, xl), i32x4.dot_i16x8_s(wbh, xh)));
    xl = v128.load(xp + x3);
    xh = v128.load(xp + x3, 16);
    a3 = i32x4.add(a3, i32x4.add(i32x4.dot_i16x8_s(wal, xl), i32x4.dot_i16x8_s(wah, xh)));
    b3 = i32x4.add(b3, i32x4.add(i32x4.dot_i16x8_s(wbl, xl), i32x4.dot_i16x8_s(wbh, xh)));
    w += KB_BYTES;
  }
  v128.store(ACCI, hsum4i(a0, a1, a2, a3));
  v128.store(ACCI, hsum4i(b0, b1, b2, b3), 16);
}

function tileQ8x4x2Relaxed<F>(xq: usize, xqRow: usize, panel: usize, r: i32, kBlocks: i32, at: usize): void {
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
  let b0 = i32x4.splat(0), b1 = i32x4.splat(0), b2 = i32x4.splat(0), b3 = i32x4.splat(0);
  let w = panel + (<usize>r << 4);
  const x1 = xqRow;
  const x2 = 2 * xqRow;
  const x3 = 3 * xqRow;
  const end = xq + (<usize>kBlocks << 4);
  for (let xp = xq; xp < end; xp += 16) {
    const wa = v128.load(w);
    const wb = v128.load(w, 64);
    let xv = v128.load(xp);
    a0 = rdot<F>(wa, xv, a0);
    b0 = rdot<F>(wb, xv, b0);
    xv = v128.load(xp + x1);
    a1 = rdot<F>(wa, xv, a1);
    b1 = rdot<F>(wb, xv, b1);
    xv = v128.load(xp + x2);
    a2 = rdot<F>(wa, xv, a2);
    b2 = rdot<F>(wb, xv, b2);
    xv = v128.load(xp + x3);
    a3 = rdot<F>(wa, xv, a3);
    b3 = rdot<F>(wb, xv, b3);
    w += KB_BYTES;
  }
  v128.store(ACCI + at, hsum4i(a0, a1, a2, a3));
  v128.store(ACCI + at, hsum4i(b0, b1, b2, b3), 16);
}

/**
 * The int8 ceiling probe of bench:kernels at the kernel's own register tile: `reps` calls of the batch
 * tile (tileQ8x4x2: 4 tokens × 2 rows, kBlocks k-blocks, the dot path and activation mode set by
 * setQ8Relaxed) over a panel and x rows small enough to stay in L1 — the kernel's instruction mix
 * without memory traffic. 128·kBlocks multiply-adds a call (hi/lo mode: the same in two passes).
 * x rows are xqRow bytes apart (≥ 32·kBlocks fits every mode). Returns a sum so the work is kept.
 */
export function q8TilePeak(xq: usize, xqRow: usize, panel: usize, kBlocks: i32, reps: i32): i32 {
  let s: i32 = 0;
  for (let i = 0; i < reps; i++) {
    if (ASC_FEATURE_SIMD) tileQ8x4x2(xq, xqRow, panel, 0, kBlocks);
    else tileQ8x1x8Scalar(xq, panel, kBlocks);
    s += load<i32>(ACCI);
  }
  return s;
}

function tileQ8x1x8Scalar(xq: usize, panel: usize, kBlocks: i32): void {
  for (let r: usize = 0; r < 8; r++) {
    let s: i32 = 0;
    let w = panel + (r << 4);
    for (let kb = 0; kb < kBlocks; kb++) {
      const xp = xq + (<usize>kb << 5);
      for (let c: usize = 0; c < 16; c++) s += <i32>load<i8>(w + c) * <i32>load<i16>(xp + (c << 1));
      w += KB_BYTES;
    }
    store<i32>(ACCI + (r << 2), s);
  }
}

/**
 * Start-up probe of the relaxed build, on 16-byte vectors a, b, c: out[0..3] = rdot form 1,
 * out[4..7] = f32x4.relaxed_madd(a, b, c) on the same bytes read as f32, out[8..11] = rdot form 2
 * (i32). The host checks them against exact values and keeps only the forms that agree. Returns 0
 * (and writes nothing) outside the relaxed build.
 */
export function probeRelaxed(out: usize, a: usize, b: usize, c: usize): i32 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    v128.store(out, rdot<i16>(v128.load(a), v128.load(b), v128.load(c)));
    v128.store(out, f32x4.relaxed_madd(v128.load(a), v128.load(b), v128.load(c)), 16);
    v128.store(out, rdot<i32>(v128.load(a), v128.load(b), v128.load(c)), 32);
    return 1;
  }
  return 0;
}
