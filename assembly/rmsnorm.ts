/**
 * @module rmsnorm — out[n, d] = x · rsqrt(mean(x²) + eps) · w, per row (Zhang & Sennrich 2019).
 *
 * Same order of operations as HF LlamaRMSNorm: normalise first, then scale by the weight, so the
 * result rounds like the PyTorch reference. out may equal x (the sum is taken before any write).
 */

export function rmsnorm(out: usize, x: usize, w: usize, n: i32, d: i32, eps: f32): void {
  const rb = (<usize>d) << 2;
  for (let t = 0; t < n; t++) {
    const xt = x + <usize>t * rb;
    const ot = out + <usize>t * rb;
    const s: f32 = 1.0 / Mathf.sqrt(sumSquares(xt, d) / <f32>d + eps);
    let i: usize = 0;
    if (ASC_FEATURE_SIMD) {
      const sv = f32x4.splat(s);
      const kb = rb & ~(<usize>15);
      for (; i < kb; i += 16) {
        v128.store(ot + i, f32x4.mul(f32x4.mul(v128.load(xt + i), sv), v128.load(w + i)));
      }
    }
    for (; i < rb; i += 4) store<f32>(ot + i, load<f32>(xt + i) * s * load<f32>(w + i));
  }
}

function sumSquares(x: usize, d: i32): f32 {
  const rb = (<usize>d) << 2;
  let i: usize = 0;
  let s: f32 = 0;
  if (ASC_FEATURE_SIMD) {
    const kb = rb & ~(<usize>15);
    let acc = f32x4.splat(0);
    for (; i < kb; i += 16) {
      const v = v128.load(x + i);
      acc = f32x4.add(acc, f32x4.mul(v, v));
    }
    s =
      f32x4.extract_lane(acc, 0) +
      f32x4.extract_lane(acc, 1) +
      (f32x4.extract_lane(acc, 2) + f32x4.extract_lane(acc, 3));
  }
  for (; i < rb; i += 4) {
    const v = load<f32>(x + i);
    s += v * v;
  }
  return s;
}
