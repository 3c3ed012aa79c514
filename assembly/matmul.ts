/**
 * @module matmul — out[n, dOut] = x[n, dIn] · w[dOut, dIn]ᵀ (HF nn.Linear weight layout).
 *
 * Decode is memory-bound: one token (n = 1) streams every weight once, so the kernel's job is to
 * keep the weight stream flowing and never read a weight row twice within a token tile. The SIMD
 * build tiles tokens × weight rows so that each weight vector loaded from memory feeds every token
 * of the tile (4 tokens × 2 rows, or 1 × 4, 2 × 4, 3 × 2 for the leftover tokens): at most 8 f32x4
 * accumulators live at once, which leaves V8 registers for the loads (x64 has 16 xmm, V8 reserves
 * some). The 4-token tiles of a call run with weight row pairs outermost over blocks of up to 64
 * tokens, so at batch the weights are read once per block, not once per 4 tokens; while a pair's
 * tiles run from L1, loads of the next pair's lines keep the memory bus busy. Tails — dIn
 * not a multiple of 4, dOut not a multiple of the row block — run scalar.
 *
 * Every SIMD tile multiply-adds with `madd` (one FMA in the relaxed build, mul + add otherwise) in
 * the same order per output — one f32x4 chain over the 4-column blocks, hsum, the leftover columns
 * — so which tile computes a row never changes its bits.
 *
 * `out` must not overlap `x` or `w`. Pointers are byte offsets; no alignment is required
 * (v128.load tolerates misalignment, rows of w are misaligned whenever dIn % 4 ≠ 0).
 */
import { matmulScalar, rowDot } from "./matmul-rows";
import { madd } from "./simd-math";
import { hsum } from "./vec";

export function matmul(out: usize, x: usize, w: usize, n: i32, dIn: i32, dOut: i32): void {
  if (ASC_FEATURE_SIMD) matmulSimd(out, x, w, n, dIn, dOut);
  else matmulScalar(out, x, w, n, dIn, dOut);
}

// ---------------------------------------------------------------------------------------------
// SIMD build

function matmulSimd(out: usize, x: usize, w: usize, n: i32, dIn: i32, dOut: i32): void {
  // Whole 4-token tiles in blocks of up to tokenBlock tokens: inside a block the row pairs run
  // outermost, so a pair of weight rows is read from memory once and every 4-token tile of the
  // block passes over it from L1 (the x block stays in L2). Each tile's sums are those of a lone
  // 4-token call, so the loop order changes no bit of any row.
  const n4 = n & ~3;
  const block = tokenBlock(dIn);
  for (let t = 0; t < n4; t += block) {
    const m = min(block, n4 - t);
    tiles4x2(out + <usize>t * (<usize>dOut << 2), x + <usize>t * (<usize>dIn << 2), w, m, dIn, dOut);
  }
  out += <usize>n4 * (<usize>dOut << 2);
  x += <usize>n4 * (<usize>dIn << 2);
  const rest = n - n4;
  if (rest == 1) tile1x4(out, x, w, dIn, dOut);
  else if (rest == 2) tile2x4(out, x, w, dIn, dOut);
  else if (rest == 3) tile3x2(out, x, w, dIn, dOut);
}

/** Rows of w left over after the row blocks: one rowDot per (token, row); ≤ 3 rows, so cheap. */
function tailRows(out: usize, x: usize, w: usize, tokens: i32, dIn: i32, dOut: i32, j0: i32): void {
  const rb = (<usize>dIn) << 2;
  const ob = (<usize>dOut) << 2;
  for (let j = j0; j < dOut; j++) {
    const wj = w + <usize>j * rb;
    for (let t = 0; t < tokens; t++) {
      store<f32>(out + <usize>t * ob + ((<usize>j) << 2), rowDot(x + <usize>t * rb, wj, rb));
    }
  }
}

/** One token × 4 weight rows: the GEMV path (decode). */
function tile1x4(out: usize, x: usize, w: usize, dIn: i32, dOut: i32): void {
  const rb = (<usize>dIn) << 2;
  const kb = rb & ~(<usize>15);
  let j = 0;
  for (; j + 4 <= dOut; j += 4) {
    const w0 = w + <usize>j * rb;
    const w1 = w0 + rb;
    const w2 = w1 + rb;
    const w3 = w2 + rb;
    let a0 = f32x4.splat(0);
    let a1 = f32x4.splat(0);
    let a2 = f32x4.splat(0);
    let a3 = f32x4.splat(0);
    for (let k: usize = 0; k < kb; k += 16) {
      const xv = v128.load(x + k);
      a0 = madd(xv, v128.load(w0 + k), a0);
      a1 = madd(xv, v128.load(w1 + k), a1);
      a2 = madd(xv, v128.load(w2 + k), a2);
      a3 = madd(xv, v128.load(w3 + k), a3);
    }
    let s0 = hsum(a0),
      s1 = hsum(a1),
      s2 = hsum(a2),
      s3 = hsum(a3);
    for (let k = kb; k < rb; k += 4) {
      const xs = load<f32>(x + k);
      s0 += xs * load<f32>(w0 + k);
      s1 += xs * load<f32>(w1 + k);
      s2 += xs * load<f32>(w2 + k);
      s3 += xs * load<f32>(w3 + k);
    }
    const o = out + ((<usize>j) << 2);
    store<f32>(o, s0);
    store<f32>(o, s1, 4);
    store<f32>(o, s2, 8);
    store<f32>(o, s3, 12);
  }
  if (j < dOut) tailRows(out, x, w, 1, dIn, dOut, j);
}

/** Two tokens × 4 weight rows: 8 accumulators. */
function tile2x4(out: usize, x: usize, w: usize, dIn: i32, dOut: i32): void {
  const rb = (<usize>dIn) << 2;
  const ob = (<usize>dOut) << 2;
  const kb = rb & ~(<usize>15);
  const x0 = x;
  const x1 = x + rb;
  let j = 0;
  for (; j + 4 <= dOut; j += 4) {
    const w0 = w + <usize>j * rb;
    const w1 = w0 + rb;
    const w2 = w1 + rb;
    const w3 = w2 + rb;
    let a00 = f32x4.splat(0),
      a01 = f32x4.splat(0),
      a02 = f32x4.splat(0),
      a03 = f32x4.splat(0);
    let a10 = f32x4.splat(0),
      a11 = f32x4.splat(0),
      a12 = f32x4.splat(0),
      a13 = f32x4.splat(0);
    for (let k: usize = 0; k < kb; k += 16) {
      const v0 = v128.load(x0 + k);
      const v1 = v128.load(x1 + k);
      let wv = v128.load(w0 + k);
      a00 = madd(v0, wv, a00);
      a10 = madd(v1, wv, a10);
      wv = v128.load(w1 + k);
      a01 = madd(v0, wv, a01);
      a11 = madd(v1, wv, a11);
      wv = v128.load(w2 + k);
      a02 = madd(v0, wv, a02);
      a12 = madd(v1, wv, a12);
      wv = v128.load(w3 + k);
      a03 = madd(v0, wv, a03);
      a13 = madd(v1, wv, a13);
    }
    let s00 = hsum(a00),
      s01 = hsum(a01),
      s02 = hsum(a02),
      s03 = hsum(a03);
    let s10 = hsum(a10),
      s11 = hsum(a11),
      s12 = hsum(a12),
      s13 = hsum(a13);
    for (let k = kb; k < rb; k += 4) {
      const p0 = load<f32>(x0 + k);
      const p1 = load<f32>(x1 + k);
      let ws = load<f32>(w0 + k);
      s00 += p0 * ws;
      s10 += p1 * ws;
      ws = load<f32>(w1 + k);
      s01 += p0 * ws;
      s11 += p1 * ws;
      ws = load<f32>(w2 + k);
      s02 += p0 * ws;
      s12 += p1 * ws;
      ws = load<f32>(w3 + k);
      s03 += p0 * ws;
      s13 += p1 * ws;
    }
    const o0 = out + ((<usize>j) << 2);
    const o1 = o0 + ob;
    store<f32>(o0, s00);
    store<f32>(o0, s01, 4);
    store<f32>(o0, s02, 8);
    store<f32>(o0, s03, 12);
    store<f32>(o1, s10);
    store<f32>(o1, s11, 4);
    store<f32>(o1, s12, 8);
    store<f32>(o1, s13, 12);
  }
  if (j < dOut) tailRows(out, x, w, 2, dIn, dOut, j);
}

/** Three tokens × 2 weight rows: 6 accumulators. */
function tile3x2(out: usize, x: usize, w: usize, dIn: i32, dOut: i32): void {
  const rb = (<usize>dIn) << 2;
  const ob = (<usize>dOut) << 2;
  const kb = rb & ~(<usize>15);
  const x0 = x;
  const x1 = x0 + rb;
  const x2 = x1 + rb;
  let j = 0;
  for (; j + 2 <= dOut; j += 2) {
    const w0 = w + <usize>j * rb;
    const w1 = w0 + rb;
    let a00 = f32x4.splat(0),
      a01 = f32x4.splat(0);
    let a10 = f32x4.splat(0),
      a11 = f32x4.splat(0);
    let a20 = f32x4.splat(0),
      a21 = f32x4.splat(0);
    for (let k: usize = 0; k < kb; k += 16) {
      const v0 = v128.load(w0 + k);
      const v1 = v128.load(w1 + k);
      let xv = v128.load(x0 + k);
      a00 = madd(xv, v0, a00);
      a01 = madd(xv, v1, a01);
      xv = v128.load(x1 + k);
      a10 = madd(xv, v0, a10);
      a11 = madd(xv, v1, a11);
      xv = v128.load(x2 + k);
      a20 = madd(xv, v0, a20);
      a21 = madd(xv, v1, a21);
    }
    let s00 = hsum(a00),
      s01 = hsum(a01);
    let s10 = hsum(a10),
      s11 = hsum(a11);
    let s20 = hsum(a20),
      s21 = hsum(a21);
    for (let k = kb; k < rb; k += 4) {
      const ws0 = load<f32>(w0 + k);
      const ws1 = load<f32>(w1 + k);
      let xs = load<f32>(x0 + k);
      s00 += xs * ws0;
      s01 += xs * ws1;
      xs = load<f32>(x1 + k);
      s10 += xs * ws0;
      s11 += xs * ws1;
      xs = load<f32>(x2 + k);
      s20 += xs * ws0;
      s21 += xs * ws1;
    }
    const o0 = out + ((<usize>j) << 2);
    const o1 = o0 + ob;
    const o2 = o1 + ob;
    store<f32>(o0, s00);
    store<f32>(o0, s01, 4);
    store<f32>(o1, s10);
    store<f32>(o1, s11, 4);
    store<f32>(o2, s20);
    store<f32>(o2, s21, 4);
  }
  if (j < dOut) tailRows(out, x, w, 3, dIn, dOut, j);
}

/** Tokens per row-outer block: a multiple of 4 whose x rows take ≤ 256 KiB (L2), 4..64. */
// @ts-ignore: decorator
@inline
function tokenBlock(dIn: i32): i32 {
  return max(4, min(64, (65536 / max(dIn, 1)) & ~3));
}

/** n4 tokens (a multiple of 4) in 4-token × 2-row tiles, row pairs outermost: 8 accumulators; x
 * rows are re-read from cache, each w row from memory once per call. */
function tiles4x2(out: usize, x: usize, w: usize, n4: i32, dIn: i32, dOut: i32): void {
  const rb = (<usize>dIn) << 2;
  const ob = (<usize>dOut) << 2;
  const wEnd = w + <usize>dOut * rb;
  let touched: i32 = 0;
  // The next pair is touched in n4 / 4 parts, one before each tile: a share of 4 slices each.
  const slice = (((rb << 1) / <usize>n4 + 63) & ~(<usize>63));
  let j = 0;
  for (; j + 2 <= dOut; j += 2) {
    // Touch the next row pair's cache lines so their misses overlap this pair's tiles: past the
    // first tile the pair is read from L1 and the core would leave the memory bus idle.
    const next = w + <usize>(j + 2) * rb;
    for (let t = 0; t < n4; t += 4) {
      if (n4 > 4) touched ^= touchLines(next + <usize>t * slice, slice << 2, wEnd);
      tile4x2(out + <usize>t * ob, x + <usize>t * rb, w, rb, ob, j);
    }
  }
  store<i32>(SINK, touched);
  if (j < dOut) tailRows(out, x, w, n4, dIn, dOut, j);
}

/** Where touchLines' xor lands, so the engine keeps the loads. */
const SINK: usize = memory.data(16, 16);

/** One load per 64-byte line of [p, min(p + bytes, end)): a software prefetch. */
// @ts-ignore: decorator
@inline
function touchLines(p: usize, bytes: usize, end: usize): i32 {
  const stop = min(p + bytes, end);
  let h: i32 = 0;
  for (; p < stop; p += 64) h ^= load<i32>(p);
  return h;
}

/** Four tokens × weight rows j, j + 1. */
// @ts-ignore: decorator
@inline
function tile4x2(out: usize, x: usize, w: usize, rb: usize, ob: usize, j: i32): void {
  const kb = rb & ~(<usize>15);
  const x0 = x;
  const x1 = x0 + rb;
  const x2 = x1 + rb;
  const x3 = x2 + rb;
  {
    const w0 = w + <usize>j * rb;
    const w1 = w0 + rb;
    let a00 = f32x4.splat(0),
      a01 = f32x4.splat(0);
    let a10 = f32x4.splat(0),
      a11 = f32x4.splat(0);
    let a20 = f32x4.splat(0),
      a21 = f32x4.splat(0);
    let a30 = f32x4.splat(0),
      a31 = f32x4.splat(0);
    for (let k: usize = 0; k < kb; k += 16) {
      const v0 = v128.load(w0 + k);
      const v1 = v128.load(w1 + k);
      let xv = v128.load(x0 + k);
      a00 = madd(xv, v0, a00);
      a01 = madd(xv, v1, a01);
      xv = v128.load(x1 + k);
      a10 = madd(xv, v0, a10);
      a11 = madd(xv, v1, a11);
      xv = v128.load(x2 + k);
      a20 = madd(xv, v0, a20);
      a21 = madd(xv, v1, a21);
      xv = v128.load(x3 + k);
      a30 = madd(xv, v0, a30);
      a31 = madd(xv, v1, a31);
    }
    let s00 = hsum(a00),
      s01 = hsum(a01);
    let s10 = hsum(a10),
      s11 = hsum(a11);
    let s20 = hsum(a20),
      s21 = hsum(a21);
    let s30 = hsum(a30),
      s31 = hsum(a31);
    for (let k = kb; k < rb; k += 4) {
      const ws0 = load<f32>(w0 + k);
      const ws1 = load<f32>(w1 + k);
      let xs = load<f32>(x0 + k);
      s00 += xs * ws0;
      s01 += xs * ws1;
      xs = load<f32>(x1 + k);
      s10 += xs * ws0;
      s11 += xs * ws1;
      xs = load<f32>(x2 + k);
      s20 += xs * ws0;
      s21 += xs * ws1;
      xs = load<f32>(x3 + k);
      s30 += xs * ws0;
      s31 += xs * ws1;
    }
    const o0 = out + ((<usize>j) << 2);
    const o1 = o0 + ob;
    const o2 = o1 + ob;
    const o3 = o2 + ob;
    store<f32>(o0, s00);
    store<f32>(o0, s01, 4);
    store<f32>(o1, s10);
    store<f32>(o1, s11, 4);
    store<f32>(o2, s20);
    store<f32>(o2, s21, 4);
    store<f32>(o3, s30);
    store<f32>(o3, s31, 4);
  }
}
