/**
 * @module expert-q4g-relaxed — the SIMD 4-bit group matmul, mainly on the relaxed i8×i7 dot (relaxed
 * build, when the host's probe found a relaxed dot form that agrees with exact arithmetic:
 * setQ4DotForm); form 0, plain SIMD for the simd build, is in expert-q4g-plain.ts.
 *
 * Panels interleave their 4 rows by 4 bytes (expert-q4g.ts has the layout): one 16-byte load holds
 * 4 weights of each of the 4 rows, and its nibbles meet a splat of the same 4 activations. So the
 * relaxed i16 dot's lanes are already the 4 rows' pair sums ([2r + h] for row r), the 8 dots of a
 * 32-input block add up in i16 across rows, and ONE `i32x4.dot_i16x8_s` against the group's 4
 * sub-scales (each twice) multiplies, widens and gives lane r = row r — per 32 inputs and 4 rows
 * one multiply-add and one zero-point add instead of four of each. The dot-add form (AVX-VNNI)
 * accumulates lane r in i32 and multiplies by the sub-scales per group.
 *
 * The 4-bit weights are used as stored, unsigned nibbles u = q + 8 ∈ [0, 15] (valid 7-bit operands),
 * against 8-bit activations; Σ (u − 8)·x = Σ u·x − 8·Σ x, and the per-token −8·Σ x of each lane
 * (zero points, quantizeTokensQ4) starts each block's sum. i16 sums wrap, but a block's result is
 * |Σ q·x| ≤ 2·8·8·127 per lane, two blocks stay below 2^15, so the wrapped sums are exact.
 *
 * A row's i32 sum goes to f32 once per 8192 inputs (the i32 bound 8192·255·8·127), then
 * f32(Σ) · unit · sx: integer sums are exact, so every form, build and batch size gives the same
 * bits. Tokens run 4 at a time through a panel (the unpacked nibbles feed 4 tokens' dots), then
 * one at a time; at 1–3 tokens (decode) two panels are read side by side (gate with up, or a panel
 * with the one half a matrix on: two weight streams in flight). A token's sums are the same on
 * every path.
 */

import { block, col, Dims, dimsOf, nibHi, nibLo, scaled, subVec, zeroAdd } from "./expert-q4g-ops";
import { q4gPanelsPlain, q4gTail, storeRows } from "./expert-q4g-plain";

/** out[n, dOut] = xq · (u − 8)ᵀ, scaled per row (and out2 from w2 when w2 ≠ 0, the same shape);
 * form 0 (plain SIMD), 1 (relaxed i16x8 dot) or 2 (relaxed i32x4 dot-add); forms 1 and 2 only in
 * the relaxed build. */
export function matmulQ4gSimd(
  out: usize, out2: usize, xq: usize, sx: usize, zv: usize, w: usize, w2: usize, n: i32, dOut: i32, colsG: i32,
  group: i32, form: i32,
): void {
  if (ASC_FEATURE_RELAXED_SIMD && form == 1) q4gPanels<i16>(out, out2, xq, sx, zv, w, w2, n, dOut, colsG, group);
  else if (ASC_FEATURE_RELAXED_SIMD && form == 2) q4gPanels<i32>(out, out2, xq, sx, zv, w, w2, n, dOut, colsG, group);
  else {
    q4gPanelsPlain(out, xq, sx, w, n, dOut, colsG, group);
    if (w2 != 0) q4gPanelsPlain(out2, xq, sx, w2, n, dOut, colsG, group);
  }
  q4gTail(out, xq, sx, w, n, dOut, colsG, group);
  if (w2 != 0) q4gTail(out2, xq, sx, w2, n, dOut, colsG, group);
}

/** Panel rows of w (and of w2 into out2 when w2 ≠ 0: gate and up in one pass, two weight streams
 * read side by side and one set of activation loads). */
function q4gPanels<F>(
  out: usize, out2: usize, xq: usize, sx: usize, zv: usize, w: usize, w2: usize, n: i32, dOut: i32, colsG: i32,
  group: i32,
): void {
  const d = dimsOf<F>(changetype<Dims>(memory.data(offsetof<Dims>(), 16)), dOut, colsG, group);
  const units = <usize>dOut * d.wRow;
  const subs = units + (<usize>dOut << 2);
  if (n < 4) {
    // Decode (1–3 tokens): four weight streams side by side — gate and up, each in two halves, or
    // the four quarters of the panels of one matrix — so more weight reads are in flight at once.
    const panels = dOut >> 2;
    const span = w2 != 0 ? <usize>(panels >> 1) << 2 : <usize>(panels >> 2) << 2; // rows per stream
    for (let j: usize = 0; j < span; j += 4) {
      for (let i: usize = 0; i < 4; i++) {
        const two = w2 != 0;
        const m = two && (i & 1) != 0 ? w2 : w;
        const r = j + (two ? (i >> 1) : i) * span;
        setStream(i, m, two && (i & 1) != 0 ? out2 : out, r, units, subs, d);
      }
      for (let t = 0; t < n; t++) one4<F>(d, xq, sx, zv, t);
    }
    // The panels after the streams' spans, one (or gate with up) at a time.
    for (let j = <i32>(w2 != 0 ? 2 * span : 4 * span); j + 4 <= dOut; j += 4) {
      const wOff = <usize>j * d.wRow;
      const sOff = subs + <usize>j * d.sRow;
      const uOff = units + (<usize>j << 2);
      for (let t = 0; t < n; t++) {
        if (w2 != 0) {
          one2<F>(d, out, out2, xq, sx, zv, w + wOff, w2 + wOff, w + sOff, w2 + sOff, w + uOff, w2 + uOff, t, j);
        } else one<F>(d, out, xq, sx, zv, w + wOff, w + sOff, v128.load(w + uOff), t, j);
      }
    }
    return;
  }
  for (let j = 0; j + 4 <= dOut; j += 4) {
    const wOff = <usize>j * d.wRow;
    const sOff = subs + <usize>j * d.sRow;
    const uOff = units + (<usize>j << 2);
    let t = 0;
    for (; t + 4 <= n; t += 4) {
      tile4<F>(d, out, xq, sx, zv, w + wOff, w + sOff, v128.load(w + uOff), t, j);
      if (w2 != 0) tile4<F>(d, out2, xq, sx, zv, w2 + wOff, w2 + sOff, v128.load(w2 + uOff), t, j);
    }
    for (; t < n; t++) {
      if (w2 != 0) {
        one2<F>(d, out, out2, xq, sx, zv, w + wOff, w2 + wOff, w + sOff, w2 + sOff, w + uOff, w2 + uOff, t, j);
      }
      else one<F>(d, out, xq, sx, zv, w + wOff, w + sOff, v128.load(w + uOff), t, j);
    }
  }
}

/** The 4 streams of one4: per stream its panel's nibbles, subs, units and output (row-offset) base. */
const STREAMS = memory.data(64);

// @ts-ignore: decorator
@inline
function setStream(i: usize, m: usize, out: usize, row: usize, units: usize, subs: usize, d: Dims): void {
  const p = STREAMS + (i << 4);
  store<usize>(p, m + row * d.wRow);
  store<usize>(p, m + subs + row * d.sRow, 4);
  store<usize>(p, m + units + (row << 2), 8);
  store<usize>(p, out + (row << 2), 12);
}

/** Token t through the 4 panels set in STREAMS (setStream): 4 weight streams side by side. */
function one4<F>(d: Dims, xq: usize, sx: usize, zv: usize, t: i32): void {
  const group = d.group;
  const groups = d.groups;
  const chunkGroups = d.chunkGroups;
  const run = <usize>d.run;
  const xt = xq + <usize>t * d.xRow;
  const zt = zv + <usize>t * d.zRow;
  const w0 = load<usize>(STREAMS), w1 = load<usize>(STREAMS, 16);
  const w2 = load<usize>(STREAMS, 32), w3 = load<usize>(STREAMS, 48);
  const s0 = load<usize>(STREAMS, 4), s1 = load<usize>(STREAMS, 20);
  const s2 = load<usize>(STREAMS, 36), s3 = load<usize>(STREAMS, 52);
  let f0 = f32x4.splat(0), f1 = f32x4.splat(0), f2 = f32x4.splat(0), f3 = f32x4.splat(0);
  for (let g0 = 0; g0 < groups; g0 += chunkGroups) {
    let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
    const g1 = min(groups, g0 + chunkGroups);
    if (group == 32) {
      // One block per group (the default): no run loop.
      for (let g = g0; g < g1; g++) {
        const k = <usize>g << 5;
        const z = v128.load32_splat(zt + (k >> 3));
        const sg = <usize>g << 3;
        a0 = scaled<F>(a0, block<F>(w0 + (k << 1), xt + k, z), subVec<F>(s0 + sg));
        a1 = scaled<F>(a1, block<F>(w1 + (k << 1), xt + k, z), subVec<F>(s1 + sg));
        a2 = scaled<F>(a2, block<F>(w2 + (k << 1), xt + k, z), subVec<F>(s2 + sg));
        a3 = scaled<F>(a3, block<F>(w3 + (k << 1), xt + k, z), subVec<F>(s3 + sg));
      }
    } else for (let g = g0; g < g1; g++) {
      const kEnd = <usize>((g + 1) * group);
      for (let k = <usize>(g * group); k < kEnd; ) {
        const runEnd = min(kEnd, k + (run << 5));
        const z = v128.load32_splat(zt + (k >> 3));
        let p0 = block<F>(w0 + (k << 1), xt + k, z);
        let p1 = block<F>(w1 + (k << 1), xt + k, z);
        let p2 = block<F>(w2 + (k << 1), xt + k, z);
        let p3 = block<F>(w3 + (k << 1), xt + k, z);
        for (k += 32; k < runEnd; k += 32) {
          p0 = block<F>(w0 + (k << 1), xt + k, zeroAdd<F>(p0, zt + (k >> 3)));
          p1 = block<F>(w1 + (k << 1), xt + k, zeroAdd<F>(p1, zt + (k >> 3)));
          p2 = block<F>(w2 + (k << 1), xt + k, zeroAdd<F>(p2, zt + (k >> 3)));
          p3 = block<F>(w3 + (k << 1), xt + k, zeroAdd<F>(p3, zt + (k >> 3)));
        }
        const sg = <usize>g << 3;
        a0 = scaled<F>(a0, p0, subVec<F>(s0 + sg));
        a1 = scaled<F>(a1, p1, subVec<F>(s1 + sg));
        a2 = scaled<F>(a2, p2, subVec<F>(s2 + sg));
        a3 = scaled<F>(a3, p3, subVec<F>(s3 + sg));
      }
    }
    f0 = f32x4.add(f0, f32x4.convert_i32x4_s(a0));
    f1 = f32x4.add(f1, f32x4.convert_i32x4_s(a1));
    f2 = f32x4.add(f2, f32x4.convert_i32x4_s(a2));
    f3 = f32x4.add(f3, f32x4.convert_i32x4_s(a3));
  }
  const oRow = d.oRow;
  storeRows(load<usize>(STREAMS, 12), f0, v128.load(load<usize>(STREAMS, 8)), sx, t, oRow, 0);
  storeRows(load<usize>(STREAMS, 28), f1, v128.load(load<usize>(STREAMS, 24)), sx, t, oRow, 0);
  storeRows(load<usize>(STREAMS, 44), f2, v128.load(load<usize>(STREAMS, 40)), sx, t, oRow, 0);
  storeRows(load<usize>(STREAMS, 60), f3, v128.load(load<usize>(STREAMS, 56)), sx, t, oRow, 0);
}

/** Tokens t..t+3 through one panel (w0 its nibbles, s0 its subs, u4 its units): each column's
 * nibbles unpacked once, then dotted with each token's activations. */
function tile4<F>(
  d: Dims, out: usize, xq: usize, sx: usize, zv: usize, w0: usize, s0: usize, u4: v128, t: i32, j: i32,
): void {
  const xRow = d.xRow;
  const zRow = d.zRow;
  const group = d.group;
  const groups = d.groups;
  const chunkGroups = d.chunkGroups;
  const run = <usize>d.run;
  const x0 = xq + <usize>t * xRow;
  const z0 = zv + <usize>t * zRow;
  let f0 = f32x4.splat(0), f1 = f32x4.splat(0), f2 = f32x4.splat(0), f3 = f32x4.splat(0);
  for (let g0 = 0; g0 < groups; g0 += chunkGroups) {
    let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
    const g1 = min(groups, g0 + chunkGroups);
    if (group == 32) {
      // One block per group (the default): no run loop.
      for (let g = g0; g < g1; g++) {
        const k = <usize>g << 5;
        let p0 = v128.load32_splat(z0 + (k >> 3));
        let p1 = v128.load32_splat(z0 + zRow + (k >> 3));
        let p2 = v128.load32_splat(z0 + 2 * zRow + (k >> 3));
        let p3 = v128.load32_splat(z0 + 3 * zRow + (k >> 3));
        const wk = w0 + (k << 1);
        const xk = x0 + k;
        for (let c: usize = 0; c < 16; c += 4) {
          const v = v128.load(wk + (c << 2));
          const lo = nibLo(v);
          const hi = nibHi(v);
          p0 = col<F>(lo, hi, xk + c, p0);
          p1 = col<F>(lo, hi, xk + xRow + c, p1);
          p2 = col<F>(lo, hi, xk + 2 * xRow + c, p2);
          p3 = col<F>(lo, hi, xk + 3 * xRow + c, p3);
        }
        const sv = subVec<F>(s0 + (<usize>g << 3));
        a0 = scaled<F>(a0, p0, sv);
        a1 = scaled<F>(a1, p1, sv);
        a2 = scaled<F>(a2, p2, sv);
        a3 = scaled<F>(a3, p3, sv);
      }
    } else for (let g = g0; g < g1; g++) {
      const sv = subVec<F>(s0 + (<usize>g << 3));
      const kEnd = <usize>((g + 1) * group);
      for (let k = <usize>(g * group); k < kEnd; ) {
        const runEnd = min(kEnd, k + (run << 5));
        let p0 = v128.load32_splat(z0 + (k >> 3));
        let p1 = v128.load32_splat(z0 + zRow + (k >> 3));
        let p2 = v128.load32_splat(z0 + 2 * zRow + (k >> 3));
        let p3 = v128.load32_splat(z0 + 3 * zRow + (k >> 3));
        for (;;) {
          const wk = w0 + (k << 1);
          const xk = x0 + k;
          for (let c: usize = 0; c < 16; c += 4) {
            const v = v128.load(wk + (c << 2));
            const lo = nibLo(v);
            const hi = nibHi(v);
            p0 = col<F>(lo, hi, xk + c, p0);
            p1 = col<F>(lo, hi, xk + xRow + c, p1);
            p2 = col<F>(lo, hi, xk + 2 * xRow + c, p2);
            p3 = col<F>(lo, hi, xk + 3 * xRow + c, p3);
          }
          k += 32;
          if (k >= runEnd) break;
          p0 = zeroAdd<F>(p0, z0 + (k >> 3));
          p1 = zeroAdd<F>(p1, z0 + zRow + (k >> 3));
          p2 = zeroAdd<F>(p2, z0 + 2 * zRow + (k >> 3));
          p3 = zeroAdd<F>(p3, z0 + 3 * zRow + (k >> 3));
        }
        a0 = scaled<F>(a0, p0, sv);
        a1 = scaled<F>(a1, p1, sv);
        a2 = scaled<F>(a2, p2, sv);
        a3 = scaled<F>(a3, p3, sv);
      }
    }
    f0 = f32x4.add(f0, f32x4.convert_i32x4_s(a0));
    f1 = f32x4.add(f1, f32x4.convert_i32x4_s(a1));
    f2 = f32x4.add(f2, f32x4.convert_i32x4_s(a2));
    f3 = f32x4.add(f3, f32x4.convert_i32x4_s(a3));
  }
  storeRows(out, f0, u4, sx, t, d.oRow, j);
  storeRows(out, f1, u4, sx, t + 1, d.oRow, j);
  storeRows(out, f2, u4, sx, t + 2, d.oRow, j);
  storeRows(out, f3, u4, sx, t + 3, d.oRow, j);
}

/** Token t through one panel. */
function one<F>(
  d: Dims, out: usize, xq: usize, sx: usize, zv: usize, w0: usize, s0: usize, u4: v128, t: i32, j: i32,
): void {
  const group = d.group;
  const groups = d.groups;
  const chunkGroups = d.chunkGroups;
  const run = <usize>d.run;
  const xt = xq + <usize>t * d.xRow;
  const zt = zv + <usize>t * d.zRow;
  let f = f32x4.splat(0);
  for (let g0 = 0; g0 < groups; g0 += chunkGroups) {
    let a = i32x4.splat(0);
    const g1 = min(groups, g0 + chunkGroups);
    for (let g = g0; g < g1; g++) {
      const sv = subVec<F>(s0 + (<usize>g << 3));
      const kEnd = <usize>((g + 1) * group);
      for (let k = <usize>(g * group); k < kEnd; ) {
        const runEnd = min(kEnd, k + (run << 5));
        let p = block<F>(w0 + (k << 1), xt + k, v128.load32_splat(zt + (k >> 3)));
        for (k += 32; k < runEnd; k += 32) p = block<F>(w0 + (k << 1), xt + k, zeroAdd<F>(p, zt + (k >> 3)));
        a = scaled<F>(a, p, sv);
      }
    }
    f = f32x4.add(f, f32x4.convert_i32x4_s(a));
  }
  storeRows(out, f, u4, sx, t, d.oRow, j);
}

/** Token t through the same panel of two matrices (gate and up). */
function one2<F>(
  d: Dims, out: usize, out2: usize, xq: usize, sx: usize, zv: usize, w0: usize, v0: usize, s0: usize, r0: usize,
  uo: usize, uo2: usize, t: i32, j: i32,
): void {
  const group = d.group;
  const groups = d.groups;
  const chunkGroups = d.chunkGroups;
  const run = <usize>d.run;
  const xt = xq + <usize>t * d.xRow;
  const zt = zv + <usize>t * d.zRow;
  let f = f32x4.splat(0), e = f32x4.splat(0);
  for (let g0 = 0; g0 < groups; g0 += chunkGroups) {
    let a = i32x4.splat(0), b = i32x4.splat(0);
    const g1 = min(groups, g0 + chunkGroups);
    for (let g = g0; g < g1; g++) {
      const kEnd = <usize>((g + 1) * group);
      for (let k = <usize>(g * group); k < kEnd; ) {
        const runEnd = min(kEnd, k + (run << 5));
        const z = v128.load32_splat(zt + (k >> 3));
        let p = block<F>(w0 + (k << 1), xt + k, z);
        let q = block<F>(v0 + (k << 1), xt + k, z);
        for (k += 32; k < runEnd; k += 32) {
          p = block<F>(w0 + (k << 1), xt + k, zeroAdd<F>(p, zt + (k >> 3)));
          q = block<F>(v0 + (k << 1), xt + k, zeroAdd<F>(q, zt + (k >> 3)));
        }
        a = scaled<F>(a, p, subVec<F>(s0 + (<usize>g << 3)));
        b = scaled<F>(b, q, subVec<F>(r0 + (<usize>g << 3)));
      }
    }
    f = f32x4.add(f, f32x4.convert_i32x4_s(a));
    e = f32x4.add(e, f32x4.convert_i32x4_s(b));
  }
  storeRows(out, f, v128.load(uo), sx, t, d.oRow, j);
  storeRows(out2, e, v128.load(uo2), sx, t, d.oRow, j);
}
