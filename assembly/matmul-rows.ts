/**
 * @module matmul-rows — the row-at-a-time parts of ./matmul: rowDot, the per-row summation order
 * every SIMD tile follows (and the rows left over after its row blocks use), and the scalar build.
 */
import { madd } from "./simd-math";
import { hsum } from "./vec";

/**
 * One row · one token summed exactly as every tile sums each of its rows — SIMD: one f32x4 chain
 * over the 4-column blocks, hsum, then the < 4 leftover columns in order; scalar: one chain in
 * order — so a row left over after the row blocks gets the bits it would get inside a block, and
 * every output is independent of dOut's remainder, of the token count and of the row's place.
 */
export function rowDot(x: usize, w: usize, rb: usize): f32 {
  let k: usize = 0;
  let s: f32 = 0;
  if (ASC_FEATURE_SIMD) {
    const kb = rb & ~(<usize>15);
    let a = f32x4.splat(0);
    for (; k < kb; k += 16) a = madd(v128.load(x + k), v128.load(w + k), a);
    s = hsum(a);
  }
  for (; k < rb; k += 4) s += load<f32>(x + k) * load<f32>(w + k);
  return s;
}

/** The scalar build of matmul: the SIMD build's idea with f32 registers — 4 tokens share each
 * weight load; a lone token walks 4 rows at once so the four accumulator chains overlap. */
export function matmulScalar(out: usize, x: usize, w: usize, n: i32, dIn: i32, dOut: i32): void {
  const rb = (<usize>dIn) << 2;
  const ob = (<usize>dOut) << 2;
  let t = 0;
  for (; t + 4 <= n; t += 4) {
    const x0 = x + <usize>t * rb;
    const x1 = x0 + rb;
    const x2 = x1 + rb;
    const x3 = x2 + rb;
    const o0 = out + <usize>t * ob;
    for (let j = 0; j < dOut; j++) {
      const wj = w + <usize>j * rb;
      let s0: f32 = 0,
        s1: f32 = 0,
        s2: f32 = 0,
        s3: f32 = 0;
      for (let k: usize = 0; k < rb; k += 4) {
        const ws = load<f32>(wj + k);
        s0 += load<f32>(x0 + k) * ws;
        s1 += load<f32>(x1 + k) * ws;
        s2 += load<f32>(x2 + k) * ws;
        s3 += load<f32>(x3 + k) * ws;
      }
      const o = o0 + ((<usize>j) << 2);
      store<f32>(o, s0);
      store<f32>(o + ob, s1);
      store<f32>(o + 2 * ob, s2);
      store<f32>(o + 3 * ob, s3);
    }
  }
  for (; t < n; t++) {
    const xt = x + <usize>t * rb;
    const ot = out + <usize>t * ob;
    let j = 0;
    for (; j + 4 <= dOut; j += 4) {
      const w0 = w + <usize>j * rb;
      const w1 = w0 + rb;
      const w2 = w1 + rb;
      const w3 = w2 + rb;
      let s0: f32 = 0,
        s1: f32 = 0,
        s2: f32 = 0,
        s3: f32 = 0;
      for (let k: usize = 0; k < rb; k += 4) {
        const xs = load<f32>(xt + k);
        s0 += xs * load<f32>(w0 + k);
        s1 += xs * load<f32>(w1 + k);
        s2 += xs * load<f32>(w2 + k);
        s3 += xs * load<f32>(w3 + k);
      }
      const o = ot + ((<usize>j) << 2);
      store<f32>(o, s0);
      store<f32>(o, s1, 4);
      store<f32>(o, s2, 8);
      store<f32>(o, s3, 12);
    }
    for (; j < dOut; j++) store<f32>(ot + ((<usize>j) << 2), rowDot(xt, w + <usize>j * rb, rb));
  }
}
