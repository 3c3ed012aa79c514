/**
 * @module softmax — in place over each of `rows` rows of length `cols`, max-subtracted.
 *
 * exp stays scalar (Mathf.exp, < 1 ulp) in both builds: a vector polynomial exp would trade
 * accuracy for a part of the step that is small next to the matmuls. The sum is kept in f64 so
 * long rows (vocabularies, long KV caches) do not drift.
 */

export function softmax(x: usize, rows: i32, cols: i32): void {
  const rb = (<usize>cols) << 2;
  for (let r = 0; r < rows; r++) softmaxRow(x + <usize>r * rb, cols);
}

export function softmaxRow(x: usize, cols: i32): void {
  if (cols <= 0) return;
  const rb = (<usize>cols) << 2;
  const max = rowMax(x, cols);
  let sum: f64 = 0;
  for (let i: usize = 0; i < rb; i += 4) {
    const e = Mathf.exp(load<f32>(x + i) - max);
    store<f32>(x + i, e);
    sum += <f64>e;
  }
  const s = <f32>sum;
  let i: usize = 0;
  if (ASC_FEATURE_SIMD) {
    const sv = f32x4.splat(s);
    const kb = rb & ~(<usize>15);
    for (; i < kb; i += 16) v128.store(x + i, f32x4.div(v128.load(x + i), sv));
  }
  for (; i < rb; i += 4) store<f32>(x + i, load<f32>(x + i) / s);
}

function rowMax(x: usize, cols: i32): f32 {
  const rb = (<usize>cols) << 2;
  let m = load<f32>(x);
  let i: usize = 4;
  if (ASC_FEATURE_SIMD) {
    const kb = rb & ~(<usize>15);
    if (kb > 0) {
      let mv = v128.load(x);
      for (i = 16; i < kb; i += 16) mv = f32x4.max(mv, v128.load(x + i));
      m = Mathf.max(
        Mathf.max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1)),
        Mathf.max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)),
      );
      i = kb;
    }
  }
  for (; i < rb; i += 4) m = Mathf.max(m, load<f32>(x + i));
  return m;
}
