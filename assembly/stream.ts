/**
 * @module stream — a streaming read of `bytes` bytes from ptr: the memory roofline the expert
 * kernels are measured against (scripts/bench-kernels.ts runs it over a buffer larger than the
 * caches). Four independent accumulators, 64 bytes a step; the xor folds keep the loads alive.
 * bytes must be a multiple of 64.
 */
import { madd } from "./simd-math";

export function streamRead(ptr: usize, bytes: usize): i32 {
  const end = ptr + bytes;
  if (ASC_FEATURE_SIMD) {
    let a = i32x4.splat(0), b = i32x4.splat(0), c = i32x4.splat(0), d = i32x4.splat(0);
    for (let p = ptr; p < end; p += 64) {
      a = v128.xor(a, v128.load(p));
      b = v128.xor(b, v128.load(p, 16));
      c = v128.xor(c, v128.load(p, 32));
      d = v128.xor(d, v128.load(p, 48));
    }
    return i32x4.extract_lane(v128.xor(v128.xor(a, b), v128.xor(c, d)), 0);
  }
  let s: u64 = 0;
  for (let p = ptr; p < end; p += 8) s ^= load<u64>(p);
  return <i32>s;
}

/**
 * The 128-bit SIMD compute ceiling: `iters` steps of 8 independent f32x4 multiply-adds (madd: one
 * FMA in the relaxed build where the CPU has it, mul + add otherwise) on registers only, 64 FLOPs
 * a step; 8 chains hide the FMA latency. bench:kernels divides 64·iters by the time. Returns a
 * lane so the work is kept.
 */
export function simdPeak(iters: i32, seed: f32): f32 {
  if (!ASC_FEATURE_SIMD) return 0;
  const m = f32x4.splat(0.999);
  const c = f32x4.splat(seed);
  let a0 = f32x4.splat(1), a1 = f32x4.splat(2), a2 = f32x4.splat(3), a3 = f32x4.splat(4);
  let a4 = f32x4.splat(5), a5 = f32x4.splat(6), a6 = f32x4.splat(7), a7 = f32x4.splat(8);
  for (let i = 0; i < iters; i++) {
    a0 = madd(a0, m, c);
    a1 = madd(a1, m, c);
    a2 = madd(a2, m, c);
    a3 = madd(a3, m, c);
    a4 = madd(a4, m, c);
    a5 = madd(a5, m, c);
    a6 = madd(a6, m, c);
    a7 = madd(a7, m, c);
  }
  const s = f32x4.add(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)), f32x4.add(f32x4.add(a4, a5), f32x4.add(a6, a7)));
  return f32x4.extract_lane(s, 0);
}

/**
 * The int8 dot ceiling: `iters` steps of 8 independent dot chains in one instruction form — 0:
 * i32x4.dot_i16x8_s + add (8 multiply-adds a dot, 64 a step); 1: the relaxed i8×i7 dot as i16x8 dot
 * + extadd + add, 2: as one i32x4 dot-add (16 multiply-adds a dot, 128 a step; relaxed build only,
 * else returns 0 at once). The 8 weight vectors are loaded from w (128 bytes, in L1) every step and
 * the activations stay in a register: register-resident constants would need 17 live vectors (V8
 * spills past about 15) and one shared weight vector would let V8 compute a plain dot once for all
 * chains. Returns a lane so the work is kept.
 */
export function int8Peak(form: i32, iters: i32, w: usize): i32 {
  if (!ASC_FEATURE_SIMD) return 0;
  const x = v128.load(w, 128);
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
  let a4 = i32x4.splat(0), a5 = i32x4.splat(0), a6 = i32x4.splat(0), a7 = i32x4.splat(0);
  if (form == 0) {
    for (let i = 0; i < iters; i++) {
      a0 = i32x4.add(a0, i32x4.dot_i16x8_s(v128.load(w), x));
      a1 = i32x4.add(a1, i32x4.dot_i16x8_s(v128.load(w, 16), x));
      a2 = i32x4.add(a2, i32x4.dot_i16x8_s(v128.load(w, 32), x));
      a3 = i32x4.add(a3, i32x4.dot_i16x8_s(v128.load(w, 48), x));
      a4 = i32x4.add(a4, i32x4.dot_i16x8_s(v128.load(w, 64), x));
      a5 = i32x4.add(a5, i32x4.dot_i16x8_s(v128.load(w, 80), x));
      a6 = i32x4.add(a6, i32x4.dot_i16x8_s(v128.load(w, 96), x));
      a7 = i32x4.add(a7, i32x4.dot_i16x8_s(v128.load(w, 112), x));
    }
  } else if (ASC_FEATURE_RELAXED_SIMD && form == 1) {
    for (let i = 0; i < iters; i++) {
      a0 = i32x4.add(a0, i32x4.extadd_pairwise_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(w), x)));
      a1 = i32x4.add(a1, i32x4.extadd_pairwise_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(w, 16), x)));
      a2 = i32x4.add(a2, i32x4.extadd_pairwise_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(w, 32), x)));
      a3 = i32x4.add(a3, i32x4.extadd_pairwise_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(w, 48), x)));
      a4 = i32x4.add(a4, i32x4.extadd_pairwise_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(w, 64), x)));
      a5 = i32x4.add(a5, i32x4.extadd_pairwise_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(w, 80), x)));
      a6 = i32x4.add(a6, i32x4.extadd_pairwise_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(w, 96), x)));
      a7 = i32x4.add(a7, i32x4.extadd_pairwise_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(w, 112), x)));
    }
  } else if (ASC_FEATURE_RELAXED_SIMD && form == 2) {
    for (let i = 0; i < iters; i++) {
      a0 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(w), x, a0);
      a1 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(w, 16), x, a1);
      a2 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(w, 32), x, a2);
      a3 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(w, 48), x, a3);
      a4 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(w, 64), x, a4);
      a5 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(w, 80), x, a5);
      a6 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(w, 96), x, a6);
      a7 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(w, 112), x, a7);
    }
  } else return 0;
  const s = i32x4.add(i32x4.add(i32x4.add(a0, a1), i32x4.add(a2, a3)), i32x4.add(i32x4.add(a4, a5), i32x4.add(a6, a7)));
  return i32x4.extract_lane(s, 0);
}
