/**
 * @module rope — in-place rotary position embedding (Su et al. 2021, RoFormer).
 *
 * x [n, nHeads, headStride]: for token t and head h, rotates the rotDim values starting at
 * x[(t·nHeads + h)·headStride + rotOffset] with the angle tables cos/sin [n, rotDim/2] (row t).
 * headStride and rotOffset let one kernel serve full-head RoPE (Llama, Mixtral), partial RoPE
 * (rotDim < headDim) and DeepSeek MLA's decoupled rope slice.
 *   interleaved = false: pairs (i, i + rotDim/2), HF `rotate_half`;
 *   interleaved = true:  pairs (2i, 2i + 1), the original GPT-J/Meta layout.
 * For pair (a, b) with angle i: a' = a·cos − b·sin, b' = b·cos + a·sin. The SIMD path rounds
 * identically to the scalar one (negation is exact).
 */

export function rope(
  x: usize,
  cos: usize,
  sin: usize,
  n: i32,
  nHeads: i32,
  headStride: i32,
  rotOffset: i32,
  rotDim: i32,
  interleaved: bool,
): void {
  const half = rotDim >> 1;
  const tableRow = (<usize>half) << 2;
  for (let t = 0; t < n; t++) {
    const c = cos + <usize>t * tableRow;
    const s = sin + <usize>t * tableRow;
    for (let h = 0; h < nHeads; h++) {
      const base = x + ((<usize>(t * nHeads + h) * <usize>headStride + <usize>rotOffset) << 2);
      if (interleaved) ropeInterleaved(base, c, s, half);
      else ropeHalves(base, c, s, half);
    }
  }
}

function ropeHalves(base: usize, c: usize, s: usize, half: i32): void {
  const hb = (<usize>half) << 2;
  let i: usize = 0;
  if (ASC_FEATURE_SIMD) {
    const kb = hb & ~(<usize>15);
    for (; i < kb; i += 16) {
      const a = v128.load(base + i);
      const b = v128.load(base + hb + i);
      const cv = v128.load(c + i);
      const sv = v128.load(s + i);
      v128.store(base + i, f32x4.sub(f32x4.mul(a, cv), f32x4.mul(b, sv)));
      v128.store(base + hb + i, f32x4.add(f32x4.mul(b, cv), f32x4.mul(a, sv)));
    }
  }
  for (; i < hb; i += 4) {
    const a = load<f32>(base + i);
    const b = load<f32>(base + hb + i);
    const cs = load<f32>(c + i);
    const sn = load<f32>(s + i);
    store<f32>(base + i, a * cs - b * sn);
    store<f32>(base + hb + i, b * cs + a * sn);
  }
}

function ropeInterleaved(base: usize, c: usize, s: usize, half: i32): void {
  const hb = (<usize>half) << 2; // bytes of the angle rows; the pairs span 2·hb bytes of x
  let i: usize = 0;
  if (ASC_FEATURE_SIMD) {
    // Two pairs per vector: v = [a0 b0 a1 b1], c2 = [c0 c0 c1 c1], s2 = [-s0 s0 -s1 s1],
    // v' = v·c2 + [b0 a0 b1 a1]·s2.
    const sign = f32x4(-1, 1, -1, 1);
    const kb = hb & ~(<usize>7);
    for (; i < kb; i += 8) {
      const p = base + (i << 1);
      const v = v128.load(p);
      const cv = v128.load64_zero(c + i);
      const sv = v128.load64_zero(s + i);
      const c2 = v128.shuffle<f32>(cv, cv, 0, 0, 1, 1);
      const s2 = f32x4.mul(v128.shuffle<f32>(sv, sv, 0, 0, 1, 1), sign);
      const swapped = v128.shuffle<f32>(v, v, 1, 0, 3, 2);
      v128.store(p, f32x4.add(f32x4.mul(v, c2), f32x4.mul(swapped, s2)));
    }
  }
  for (; i < hb; i += 4) {
    const p = base + (i << 1);
    const a = load<f32>(p);
    const b = load<f32>(p, 4);
    const cs = load<f32>(c + i);
    const sn = load<f32>(s + i);
    store<f32>(p, a * cs - b * sn);
    store<f32>(p, b * cs + a * sn, 4);
  }
}
