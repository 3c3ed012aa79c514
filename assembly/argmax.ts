/**
 * @module argmax — per token the largest of `rows` logits and its index: a greedy head shard's
 * answer computed where the logits already are, so only 2 numbers a token cross back to JS.
 *
 * Exactly the scan HeadStore used in JS (and sampling.ts's argmax): each logit is first divided
 * by `scale` the way `Float32Array[i] /= scale` does it — in f64, rounded once to f32 (so a scale
 * that is no f32 value gives the same bits as in JS) — then `v[j] > v[best]` replaces, so ties go
 * to the lowest index and a NaN never wins, except a NaN at index 0, which nothing replaces. The
 * SIMD builds scan four interleaved lanes (each keeps its own first maximum) and merge them, lower
 * index on equal values — the same answer as the in-order scan.
 */

/** maxOut[t] (f32) and idxOut[t] (i32) for t < n over y[n, rows] ÷ scale (scale 1: as stored). */
export function argmaxRows(maxOut: usize, idxOut: usize, y: usize, n: i32, rows: i32, scale: f64): void {
  const rowBytes = <usize>rows << 2;
  for (let t = 0; t < n; t++) {
    const row = y + <usize>t * rowBytes;
    let best = -1;
    if (ASC_FEATURE_SIMD && rows >= 8) best = argmaxLanes(row, rows, scale);
    if (best < 0) best = argmaxScan(row, rows, scale);
    store<f32>(maxOut + (<usize>t << 2), scaled(load<f32>(row + (<usize>best << 2)), scale));
    store<i32>(idxOut + (<usize>t << 2), best);
  }
}

// @ts-ignore: decorator
@inline
function scaled(v: f32, scale: f64): f32 {
  return scale == 1 ? v : <f32>(<f64>v / scale);
}

/** The reference scan, in order. rows ≥ 1. */
function argmaxScan(row: usize, rows: i32, scale: f64): i32 {
  let best = 0;
  let bv = scaled(load<f32>(row), scale);
  for (let j = 1; j < rows; j++) {
    const v = scaled(load<f32>(row + (<usize>j << 2)), scale);
    if (v > bv) {
      bv = v;
      best = j;
    }
  }
  return best;
}

/** Four values from p, each ÷ scale in f64 and rounded to f32 (as JS does). */
// @ts-ignore: decorator
@inline
function load4(p: usize, scale: f64, s2: v128): v128 {
  const v = v128.load(p);
  if (scale == 1) return v;
  const lo = f64x2.div(f64x2.promote_low_f32x4(v), s2);
  const hi = f64x2.div(f64x2.promote_low_f32x4(v128.shuffle<f32>(v, v, 2, 3, 0, 1)), s2);
  return v128.shuffle<f32>(f32x4.demote_f64x2_zero(lo), f32x4.demote_f64x2_zero(hi), 0, 1, 4, 5);
}

/** The lane scan; -1 when one of the first four values is NaN (a lane starting there would stay
 * on it; the in-order scan keeps index 0 or skips it): the caller rescans in order. A later NaN is
 * never > anything, in lanes as in the scan. rows ≥ 8. */
function argmaxLanes(row: usize, rows: i32, scale: f64): i32 {
  const s2 = f64x2.splat(scale);
  let bv = load4(row, scale, s2);
  if (v128.any_true(f32x4.ne(bv, bv))) return -1;
  let bi = i32x4(0, 1, 2, 3);
  let idx = i32x4(4, 5, 6, 7);
  const four = i32x4.splat(4);
  let j = 4;
  for (; j + 4 <= rows; j += 4) {
    const v4 = load4(row + (<usize>j << 2), scale, s2);
    const gt = f32x4.gt(v4, bv);
    bv = v128.bitselect(v4, bv, gt);
    bi = v128.bitselect(idx, bi, gt);
    idx = i32x4.add(idx, four);
  }
  // Merge the lanes: the larger value, the lower index on equal ones (−0 equals +0, as in the scan).
  let best = i32x4.extract_lane(bi, 0);
  let m = f32x4.extract_lane(bv, 0);
  let v = f32x4.extract_lane(bv, 1);
  let i = i32x4.extract_lane(bi, 1);
  if (v > m || (v == m && i < best)) {
    m = v;
    best = i;
  }
  v = f32x4.extract_lane(bv, 2);
  i = i32x4.extract_lane(bi, 2);
  if (v > m || (v == m && i < best)) {
    m = v;
    best = i;
  }
  v = f32x4.extract_lane(bv, 3);
  i = i32x4.extract_lane(bi, 3);
  if (v > m || (v == m && i < best)) {
    m = v;
    best = i;
  }
  for (; j < rows; j++) {
    v = scaled(load<f32>(row + (<usize>j << 2)), scale);
    if (v > m) {
      m = v;
      best = j;
    }
  }
  return best;
}
