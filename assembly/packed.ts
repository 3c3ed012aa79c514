/**
 * @module packed — f32 matmul and the fused SwiGLU expert on weights packed into panels
 * (src/kernels/packing.ts writes them once, at load).
 *
 * Layout: a matrix w[rows, cols] is cut into panels of 8 rows; inside a panel the 8 rows are
 * interleaved in k-blocks of 4 columns: panel[kb][r][c] = w[8p + r][4kb + c], zero-padded to
 * 8 rows and to cols rounded up to 4 (kBlocks = ceil(cols / 4)). A token streams each panel as
 * one contiguous run of 128-byte blocks, so the hardware prefetcher sees a single stream instead
 * of 8 (row-major GEMV measured slower: README, kernel benchmark).
 *
 * Tiles keep ≤ 8 f32x4 accumulators live (V8 has ~15 usable xmm registers; more spill):
 *   1 token × 8 rows (GEMV, decode) — one x load feeds 8 weight vectors;
 *   4 tokens × 2 rows (rows r and r + 4 of a panel) — each weight vector feeds 4 tokens;
 *   3 tokens × 2 rows and 2 tokens × 4 rows for a group of 3 or 2 tokens left over.
 * The loop runs panels outermost, so a panel read from memory is reused by every token while it
 * is in L1/L2, and the weights are read once per call whatever the batch. A multi-token group
 * passes over a panel once per tile (4 or 2 times), so it walks the panel in chunks of KC k-blocks
 * whose panel and x slices stay in L1, carrying the partial lane sums in STATE between chunks:
 * each sum still runs over the k-blocks in order, so every tile gives the GEMV tile's bits.
 *
 * Where loads carry explicit bounds checks (workerd) groups of 8+ tokens take ./packed-staged instead.
 *
 * The fused gate/up panel (expertFfnPacked): rows 0–3 are w1 (gate) rows 4p..4p+3 and rows 4–7
 * the w3 (up) rows of the same outputs, so one pass yields gate and up side by side and
 * h = silu(gate)·up is formed in registers: the [n, dFf] gate and up tensors never exist.
 */
import { STAGED_STATE, STAGED_TOKENS, stagedSums, useStaged } from "./packed-staged";
import { hsum4, madd, siluMul4 } from "./simd-math";

/** Sums of the last tile: 8 f32 (1×8: rows 0–7; 4×2: row r for tokens 0–3, then row r + 4). */
const ACC: usize = memory.data(32, 16);
const KB_BYTES: usize = 128; // one k-block of a panel: 8 rows × 4 f32
/** Partial lane sums of a 2–4-token tile group: 4 tiles × 8 f32x4, carried across k-chunks. */
const STATE: usize = memory.data(512, 16);
/** k-blocks per chunk: a chunk's panel slice (16 KiB) and 4 tokens' x slices (8 KiB) stay in L1
 * while the tiles of a token group pass over them. */
const KC: i32 = 128;

/** out[n, dOut] = x[n, dIn] · wᵀ with w packed (see module doc); scratch ≥ packedScratchBytes. */
export function matmulPacked(out: usize, x: usize, wp: usize, n: i32, dIn: i32, dOut: i32, scratch: usize): void {
  const kBlocks = (dIn + 3) >> 2;
  const xs = padRows(x, n, dIn, kBlocks << 2, scratch);
  matmulPanels(out, dOut, xs, kBlocks << 2, wp, n, kBlocks, dOut);
}

/**
 * One SwiGLU expert on a packed blob: out[n, dModel] = (silu(x·w1ᵀ) ⊙ (x·w3ᵀ)) · w2ᵀ.
 * blob = [gate/up panels: 2·dFf4 rows × dModel4][w2 panels: dModel rows × dFf4], dX4 = dX rounded
 * up to 4. scratch ≥ ffnScratchBytes(0, n, dModel, dFf).
 */
export function expertFfnPacked(
  out: usize,
  x: usize,
  blob: usize,
  n: i32,
  dModel: i32,
  dFf: i32,
  scratch: usize,
): void {
  const kb1 = (dModel + 3) >> 2;
  const dm4 = kb1 << 2;
  const df4 = ((dFf + 3) >> 2) << 2;
  const xs = padRows(x, n, dModel, dm4, scratch);
  const h = scratch + align16(<usize>n * <usize>dm4 * 4); // [n, df4]
  gateUp(h, df4, xs, dm4, blob, n, kb1, df4 >> 2);
  const w2 = blob + <usize>(2 * df4) * <usize>dm4 * 4;
  matmulPanels(out, dModel, h, df4, w2, n, df4 >> 2, dModel);
}

/** x itself when its rows are already a multiple of 4 long, else a zero-padded copy in scratch
 * (padding must be 0, not garbage: 0 · NaN would poison the sums). */
function padRows(x: usize, n: i32, d: i32, dPad: i32, scratch: usize): usize {
  if (d == dPad) return x;
  const src = <usize>d << 2;
  const dst = <usize>dPad << 2;
  for (let t = 0; t < n; t++) {
    memory.copy(scratch + <usize>t * dst, x + <usize>t * src, src);
    memory.fill(scratch + <usize>t * dst + src, 0, dst - src);
  }
  return scratch;
}

// @ts-ignore: decorator
@inline
function align16(b: usize): usize {
  return (b + 15) & ~<usize>15;
}

/** out[t, j] (row stride ldo floats) for j < dOut; x rows of ldx floats, kBlocks·4 ≤ ldx. */
function matmulPanels(out: usize, ldo: i32, x: usize, ldx: i32, wp: usize, n: i32, kBlocks: i32, dOut: i32): void {
  const panelBytes = <usize>kBlocks * KB_BYTES;
  const xRow = <usize>ldx << 2;
  const oRow = <usize>ldo << 2;
  const panels = (dOut + 7) >> 3;
  for (let p = 0; p < panels; p++) {
    const panel = wp + <usize>p * panelBytes;
    const j0 = p << 3;
    const valid = min(8, dOut - j0);
    let t = 0;
    if (ASC_FEATURE_SIMD) {
      for (; useStaged(n - t); ) {
        const m = min(STAGED_TOKENS, n - t);
        stagedSums(x + <usize>t * xRow, xRow, panel, m, kBlocks);
        for (let i = 0; i < m; i++, t++) {
          const s = STAGED_STATE + (<usize>i << 7);
          const o = out + <usize>t * oRow + (<usize>j0 << 2);
          storeRows(o, valid, 0, sums(s));
          storeRows(o, valid, 4, sums(s + 64));
        }
      }
      for (; t < n; t += 4) {
        const m = min(4, n - t);
        if (m == 1) break; // a lone token: the GEMV tile below
        panelSums(x + <usize>t * xRow, xRow, panel, m, kBlocks);
        const o = out + <usize>t * oRow + (<usize>j0 << 2);
        if (m == 2) {
          for (let h = 0; h < 2; h++) {
            const s = STATE + (<usize>h << 7);
            storeRows(o, valid, h << 2, sums(s));
            storeRows(o + oRow, valid, h << 2, sums(s + 64));
          }
          continue;
        }
        for (let r = 0; r < 4; r++) {
          const s = STATE + (<usize>r << 7);
          const ra = sums(s);
          const rb = sums(s + 64);
          if (r < valid) storeTokens(o + (<usize>r << 2), oRow, m, ra);
          if (r + 4 < valid) storeTokens(o + (<usize>(r + 4) << 2), oRow, m, rb);
        }
      }
    }
    for (; t < n; t++) {
      tile1x8(x + <usize>t * xRow, panel, kBlocks);
      const o = out + <usize>t * oRow + (<usize>j0 << 2);
      if (valid == 8) {
        memory.copy(o, ACC, 32);
      } else {
        memory.copy(o, ACC, <usize>valid << 2);
      }
    }
  }
}

/** The totals of the 4 accumulators at s (one per lane), as the GEMV tile forms its own. */
// @ts-ignore: decorator
@inline
function sums(s: usize): v128 {
  return hsum4(v128.load(s), v128.load(s, 16), v128.load(s, 32), v128.load(s, 48));
}

/** Lanes 0..m−1 of v (one output row, m tokens) to o, o + stride, … */
// @ts-ignore: decorator
@inline
function storeTokens(o: usize, stride: usize, m: i32, v: v128): void {
  store<f32>(o, f32x4.extract_lane(v, 0));
  store<f32>(o + stride, f32x4.extract_lane(v, 1));
  if (m > 2) store<f32>(o + 2 * stride, f32x4.extract_lane(v, 2));
  if (m > 3) store<f32>(o + 3 * stride, f32x4.extract_lane(v, 3));
}

/** Panel rows r0..r0+3 of one token (the lanes of v) to o[r0..], those below `valid` only. */
// @ts-ignore: decorator
@inline
function storeRows(o: usize, valid: i32, r0: i32, v: v128): void {
  if (r0 + 4 <= valid) {
    v128.store(o + (<usize>r0 << 2), v);
    return;
  }
  if (r0 < valid) store<f32>(o + (<usize>r0 << 2), f32x4.extract_lane(v, 0));
  if (r0 + 1 < valid) store<f32>(o + (<usize>(r0 + 1) << 2), f32x4.extract_lane(v, 1));
  if (r0 + 2 < valid) store<f32>(o + (<usize>(r0 + 2) << 2), f32x4.extract_lane(v, 2));
}

/** h[t, 4p + r] = silu(gate)·up over the fused gate/up panels (see module doc). */
function gateUp(h: usize, ldh: i32, x: usize, ldx: i32, w13: usize, n: i32, kBlocks: i32, panels: i32): void {
  const panelBytes = <usize>kBlocks * KB_BYTES;
  const xRow = <usize>ldx << 2;
  const hRow = <usize>ldh << 2;
  for (let p = 0; p < panels; p++) {
    const panel = w13 + <usize>p * panelBytes;
    const j0 = <usize>p << 4; // byte offset of output 4p
    let t = 0;
    if (ASC_FEATURE_SIMD) {
      for (; useStaged(n - t); ) {
        const m = min(STAGED_TOKENS, n - t);
        stagedSums(x + <usize>t * xRow, xRow, panel, m, kBlocks);
        for (let i = 0; i < m; i++, t++) {
          const s = STAGED_STATE + (<usize>i << 7);
          v128.store(h + <usize>t * hRow + j0, siluMul4(sums(s), sums(s + 64)));
        }
      }
      for (; t < n; t += 4) {
        const m = min(4, n - t);
        if (m == 1) break;
        panelSums(x + <usize>t * xRow, xRow, panel, m, kBlocks);
        const ht = h + <usize>t * hRow + j0;
        if (m == 2) {
          // STATE tile 0 holds the gate rows of tokens 0 and 1, tile 1 their up rows.
          const s = STATE;
          const g0 = sums(s);
          const g1 = sums(s + 64);
          const u0 = sums(s + 128);
          const u1 = sums(s + 192);
          v128.store(ht, siluMul4(g0, u0));
          v128.store(ht + hRow, siluMul4(g1, u1));
          continue;
        }
        for (let r = 0; r < 4; r++) {
          const s = STATE + (<usize>r << 7);
          const gate = sums(s);
          const up = sums(s + 64);
          storeTokens(ht + (<usize>r << 2), hRow, m, siluMul4(gate, up));
        }
      }
      for (; t < n; t++) {
        tile1x8(x + <usize>t * xRow, panel, kBlocks);
        v128.store(h + <usize>t * hRow + j0, siluMul4(v128.load(ACC), v128.load(ACC, 16)));
      }
    } else {
      for (; t < n; t++) {
        tile1x8(x + <usize>t * xRow, panel, kBlocks);
        const o = h + <usize>t * hRow + j0;
        for (let r: usize = 0; r < 16; r += 4) {
          const g = load<f32>(ACC + r);
          store<f32>(o + r, (g / (<f32>1 + Mathf.exp(-g))) * load<f32>(ACC + r, 16));
        }
      }
    }
  }
}

/**
 * The lane sums of m = 2..4 tokens (rows xRow bytes apart) against one panel, into STATE, KC
 * k-blocks at a time. m = 4 or 3: tile r (r = 0..3) holds rows r and r + 4, 4 f32x4 each (token
 * slots; token 3's stay 0 when m = 3); m = 2: tile h (0, 1) holds rows 4h..4h + 3 of token 0, then
 * of token 1. Each tile pass reloads its accumulators from STATE, so a lane's chain runs over the
 * k-blocks in order whatever the chunking: the sums are those of the GEMV tile, bit for bit.
 */
function panelSums(x: usize, xRow: usize, panel: usize, m: i32, kBlocks: i32): void {
  memory.fill(STATE, 0, 512);
  const tiles = m == 2 ? 2 : 4;
  for (let k0 = 0; k0 < kBlocks; k0 += KC) {
    const kc = min(KC, kBlocks - k0);
    const xk = x + (<usize>k0 << 4);
    const pk = panel + <usize>k0 * KB_BYTES;
    for (let r = 0; r < tiles; r++) {
      const s = STATE + (<usize>r << 7);
      if (m == 4) tile4x2(xk, xRow, pk, r, kc, s);
      else if (m == 3) tile3x2(xk, xRow, pk, r, kc, s);
      else tile2x4(xk, xRow, pk, r, kc, s);
    }
  }
}

/** ACC[r] = Σ_k panel row r · x, r = 0..7: the GEMV tile. */
function tile1x8(x: usize, panel: usize, kBlocks: i32): void {
  if (!ASC_FEATURE_SIMD) {
    tile1x8Scalar(x, panel, kBlocks);
    return;
  }
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  let a4 = f32x4.splat(0), a5 = f32x4.splat(0), a6 = f32x4.splat(0), a7 = f32x4.splat(0);
  let w = panel;
  const end = x + (<usize>kBlocks << 4);
  for (let xp = x; xp < end; xp += 16) {
    const xv = v128.load(xp);
    a0 = madd(v128.load(w), xv, a0);
    a1 = madd(v128.load(w, 16), xv, a1);
    a2 = madd(v128.load(w, 32), xv, a2);
    a3 = madd(v128.load(w, 48), xv, a3);
    a4 = madd(v128.load(w, 64), xv, a4);
    a5 = madd(v128.load(w, 80), xv, a5);
    a6 = madd(v128.load(w, 96), xv, a6);
    a7 = madd(v128.load(w, 112), xv, a7);
    w += KB_BYTES;
  }
  v128.store(ACC, hsum4(a0, a1, a2, a3));
  v128.store(ACC, hsum4(a4, a5, a6, a7), 16);
}

/** Rows r and r + 4 for 4 tokens over kc k-blocks, continuing the partial sums at s. */
function tile4x2(x: usize, xRow: usize, panel: usize, r: i32, kc: i32, s: usize): void {
  let a0 = v128.load(s), a1 = v128.load(s, 16), a2 = v128.load(s, 32), a3 = v128.load(s, 48);
  let b0 = v128.load(s, 64), b1 = v128.load(s, 80), b2 = v128.load(s, 96), b3 = v128.load(s, 112);
  let w = panel + (<usize>r << 4);
  const x1 = xRow;
  const x2 = 2 * xRow;
  const x3 = 3 * xRow;
  const end = x + (<usize>kc << 4);
  for (let xp = x; xp < end; xp += 16) {
    const wa = v128.load(w);
    const wb = v128.load(w, 64);
    let xv = v128.load(xp);
    a0 = madd(wa, xv, a0);
    b0 = madd(wb, xv, b0);
    xv = v128.load(xp + x1);
    a1 = madd(wa, xv, a1);
    b1 = madd(wb, xv, b1);
    xv = v128.load(xp + x2);
    a2 = madd(wa, xv, a2);
    b2 = madd(wb, xv, b2);
    xv = v128.load(xp + x3);
    a3 = madd(wa, xv, a3);
    b3 = madd(wb, xv, b3);
    w += KB_BYTES;
  }
  v128.store(s, a0);
  v128.store(s, a1, 16);
  v128.store(s, a2, 32);
  v128.store(s, a3, 48);
  v128.store(s, b0, 64);
  v128.store(s, b1, 80);
  v128.store(s, b2, 96);
  v128.store(s, b3, 112);
}

/** tile4x2 for 3 tokens (6 accumulators; token slot 3 untouched). */
function tile3x2(x: usize, xRow: usize, panel: usize, r: i32, kc: i32, s: usize): void {
  let a0 = v128.load(s), a1 = v128.load(s, 16), a2 = v128.load(s, 32);
  let b0 = v128.load(s, 64), b1 = v128.load(s, 80), b2 = v128.load(s, 96);
  let w = panel + (<usize>r << 4);
  const x1 = xRow;
  const x2 = 2 * xRow;
  const end = x + (<usize>kc << 4);
  for (let xp = x; xp < end; xp += 16) {
    const wa = v128.load(w);
    const wb = v128.load(w, 64);
    let xv = v128.load(xp);
    a0 = madd(wa, xv, a0);
    b0 = madd(wb, xv, b0);
    xv = v128.load(xp + x1);
    a1 = madd(wa, xv, a1);
    b1 = madd(wb, xv, b1);
    xv = v128.load(xp + x2);
    a2 = madd(wa, xv, a2);
    b2 = madd(wb, xv, b2);
    w += KB_BYTES;
  }
  v128.store(s, a0);
  v128.store(s, a1, 16);
  v128.store(s, a2, 32);
  v128.store(s, b0, 64);
  v128.store(s, b1, 80);
  v128.store(s, b2, 96);
}

/** Rows 4h..4h + 3 for 2 tokens over kc k-blocks (8 accumulators: each x load feeds 4 rows). */
function tile2x4(x: usize, xRow: usize, panel: usize, h: i32, kc: i32, s: usize): void {
  let a0 = v128.load(s), a1 = v128.load(s, 16), a2 = v128.load(s, 32), a3 = v128.load(s, 48);
  let b0 = v128.load(s, 64), b1 = v128.load(s, 80), b2 = v128.load(s, 96), b3 = v128.load(s, 112);
  let w = panel + (<usize>h << 6);
  const end = x + (<usize>kc << 4);
  for (let xp = x; xp < end; xp += 16) {
    const u = v128.load(xp);
    const v = v128.load(xp + xRow);
    let wv = v128.load(w);
    a0 = madd(wv, u, a0);
    b0 = madd(wv, v, b0);
    wv = v128.load(w, 16);
    a1 = madd(wv, u, a1);
    b1 = madd(wv, v, b1);
    wv = v128.load(w, 32);
    a2 = madd(wv, u, a2);
    b2 = madd(wv, v, b2);
    wv = v128.load(w, 48);
    a3 = madd(wv, u, a3);
    b3 = madd(wv, v, b3);
    w += KB_BYTES;
  }
  v128.store(s, a0);
  v128.store(s, a1, 16);
  v128.store(s, a2, 32);
  v128.store(s, a3, 48);
  v128.store(s, b0, 64);
  v128.store(s, b1, 80);
  v128.store(s, b2, 96);
  v128.store(s, b3, 112);
}

function tile1x8Scalar(x: usize, panel: usize, kBlocks: i32): void {
  for (let r: usize = 0; r < 8; r++) {
    let s0: f32 = 0, s1: f32 = 0, s2: f32 = 0, s3: f32 = 0;
    let w = panel + (r << 4);
    const end = x + (<usize>kBlocks << 4);
    for (let xp = x; xp < end; xp += 16) {
      s0 += load<f32>(w) * load<f32>(xp);
      s1 += load<f32>(w, 4) * load<f32>(xp, 4);
      s2 += load<f32>(w, 8) * load<f32>(xp, 8);
      s3 += load<f32>(w, 12) * load<f32>(xp, 12);
      w += KB_BYTES;
    }
    store<f32>(ACC + (r << 2), (s0 + s1) + (s2 + s3));
  }
}
