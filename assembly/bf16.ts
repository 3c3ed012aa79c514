/**
 * @module bf16 — y[n, dOut] = x[n, dIn] · Wᵀ and row gather on bf16 stage weights (the dense
 * formats: assembly/dense.ts, src/kernels/dense-format.ts).
 *
 * Layout: [rows × cols8 u16, cols8 = cols rounded up to 8, zero-padded], each block of 8 stored in
 * the order w0 w4 w1 w5 w2 w6 w3 w7 so one u32 lane holds (w[m], w[m + 4]): `shl 16` widens
 * w0..w3 and `and 0xffff0000` widens w4..w7, two instructions per 8 weights and no shuffle.
 * f32 accumulation (fused multiply-add in the relaxed build); 4-row blocks for decode, 4-token ×
 * 2-row tiles for n ≥ 4, as the int8 kernel.
 */
import { hsum4, madd, storeColumn } from "./simd-math";

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
  let t0 = 0;
  if (ASC_FEATURE_SIMD) {
    t0 = n & ~3;
    if (t0 > 0) bf16Tiles4x2(out, x, w, t0, dIn, dOut);
    const hiMask = i32x4.splat(0xffff0000);
    for (; j + 4 <= dOut; j += 4) {
      const w0 = w + <usize>j * wRow;
      for (let t = t0; t < n; t++) {
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
    for (let t = t0; t < n; t++) {
      store<f32>(out + <usize>t * oRow + (<usize>j << 2), bf16Row(x + <usize>t * xRow, wj, dIn));
    }
  }
}

/** bf16, tokens 0..n4-1 (n4 a multiple of 4) in 4-token × 2-row tiles, rows outermost (a row pair
 * stays in L1 while every token block passes over it). */
function bf16Tiles4x2(out: usize, x: usize, w: usize, n4: i32, dIn: i32, dOut: i32): void {
  const wRow = <usize>((dIn + 7) & ~7) << 1;
  const xRow = <usize>dIn << 2;
  const oRow = <usize>dOut << 2;
  const k8 = dIn & ~7;
  const hiMask = i32x4.splat(0xffff0000);
  let j = 0;
  for (; j + 2 <= dOut; j += 2) {
    const wa = w + <usize>j * wRow;
    const wb = wa + wRow;
    for (let t = 0; t < n4; t += 4) {
      const x0 = x + <usize>t * xRow;
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
      let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0), b3 = f32x4.splat(0);
      for (let k = 0; k < k8; k += 8) {
        const va = v128.load(wa + (<usize>k << 1));
        const vb = v128.load(wb + (<usize>k << 1));
        const wal = i32x4.shl(va, 16);
        const wah = v128.and(va, hiMask);
        const wbl = i32x4.shl(vb, 16);
        const wbh = v128.and(vb, hiMask);
        let xp = x0 + (<usize>k << 2);
        let xl = v128.load(xp);
        let xh = v128.load(xp, 16);
        a0 = madd(wah, xh, madd(wal, xl, a0));
        b0 = madd(wbh, xh, madd(wbl, xl, b0));
        xp += xRow;
        xl = v128.load(xp);
        xh = v128.load(xp, 16);
        a1 = madd(wah, xh, madd(wal, xl, a1));
        b1 = madd(wbh, xh, madd(wbl, xl, b1));
        xp += xRow;
        xl = v128.load(xp);
        xh = v128.load(xp, 16);
        a2 = madd(wah, xh, madd(wal, xl, a2));
        b2 = madd(wbh, xh, madd(wbl, xl, b2));
        xp += xRow;
        xl = v128.load(xp);
        xh = v128.load(xp, 16);
        a3 = madd(wah, xh, madd(wal, xl, a3));
        b3 = madd(wbh, xh, madd(wbl, xl, b3));
      }
      let ya = hsum4(a0, a1, a2, a3);
      let yb = hsum4(b0, b1, b2, b3);
      if (k8 < dIn) {
        ya = f32x4.add(ya, bf16Tail4(x0, xRow, wa, k8, dIn));
        yb = f32x4.add(yb, bf16Tail4(x0, xRow, wb, k8, dIn));
      }
      storeColumn(out + <usize>t * oRow + (<usize>j << 2), oRow, ya);
      storeColumn(out + <usize>t * oRow + (<usize>j << 2) + 4, oRow, yb);
    }
  }
  for (; j < dOut; j++) {
    const wj = w + <usize>j * wRow;
    for (let t = 0; t < n4; t++) {
      store<f32>(out + <usize>t * oRow + (<usize>j << 2), bf16Row(x + <usize>t * xRow, wj, dIn));
    }
  }
}

/**
 * One row · one token (a row left over after the 4-row blocks or row pairs), summed as those blocks
 * sum each of their rows — SIMD: one multiply-add chain over the 8-column blocks, the lanes reduced
 * as hsum4 does, plus the < 8 leftover columns summed from 0; scalar build: in order, as its only
 * path does — so every output is independent of dOut's remainder and of the token count.
 */
function bf16Row(xt: usize, wj: usize, dIn: i32): f32 {
  let s: f32 = 0;
  let k = 0;
  if (ASC_FEATURE_SIMD) {
    const k8 = dIn & ~7;
    const hiMask = i32x4.splat(0xffff0000);
    let a = f32x4.splat(0);
    for (; k < k8; k += 8) {
      const v = v128.load(wj + (<usize>k << 1));
      const xp = xt + (<usize>k << 2);
      a = madd(v128.and(v, hiMask), v128.load(xp, 16), madd(i32x4.shl(v, 16), v128.load(xp), a));
    }
    const y = f32x4.extract_lane(hsum4(a, a, a, a), 0);
    if (k8 == dIn) return y;
    for (; k < dIn; k++) s += bf16At(wj, k) * load<f32>(xt + (<usize>k << 2));
    return y + s;
  }
  for (; k < dIn; k++) s += bf16At(wj, k) * load<f32>(xt + (<usize>k << 2));
  return s;
}

/** Σ_{k8 ≤ k < dIn} row · x for 4 tokens (xRow bytes apart): the < 8 columns after the blocks. */
function bf16Tail4(x0: usize, xRow: usize, row: usize, k8: i32, dIn: i32): v128 {
  let r0: f32 = 0, r1: f32 = 0, r2: f32 = 0, r3: f32 = 0;
  for (let k = k8; k < dIn; k++) {
    const wv = bf16At(row, k);
    const xp = x0 + (<usize>k << 2);
    r0 += wv * load<f32>(xp);
    r1 += wv * load<f32>(xp + xRow);
    r2 += wv * load<f32>(xp + 2 * xRow);
    r3 += wv * load<f32>(xp + 3 * xRow);
  }
  return f32x4(r0, r1, r2, r3);
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
