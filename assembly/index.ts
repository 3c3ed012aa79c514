/**
 * @module index — the Wasm module's exports. All three builds (scalar, SIMD, relaxed SIMD) compile
 * this file and export the same names; src/kernels/index.ts is the typed face.
 */
export { matmul } from "./matmul";
export { rmsnorm } from "./rmsnorm";
export { rope } from "./rope";
export { softmax } from "./softmax";
export { siluMul } from "./silu-mul";
export { expertFfn } from "./expert-ffn";
export { attention } from "./attention";
export { matmulPacked, expertFfnPacked } from "./packed";
export { setPackedStaged } from "./packed-staged";
export { matmulQ8, expertFfnQ8, setQ8Relaxed, probeRelaxed, q8TilePeak } from "./q8";
export { streamRead, simdPeak, int8Peak } from "./stream";
export { matmulQ8g, gatherQ8g } from "./dense";
export { matmulBf16, gatherBf16 } from "./bf16";
export { argmaxRows } from "./argmax";
export { expertFfnQ8g } from "./expert-q8g";
export { expertFfnQ4g, q4ActivationBits, setQ4DotForm } from "./expert-q4g";
export { packRowsF32 } from "./pack-f32";

/** First byte after static data; the TS allocator hands out memory from here up. */
export function heapBase(): usize {
  return __heap_base;
}

/** 1 in the SIMD builds, 0 in the scalar one, so the host can check it loaded what it asked for. */
export function simd(): i32 {
  return ASC_FEATURE_SIMD ? 1 : 0;
}

/** 1 in the relaxed-SIMD build (f32x4.relaxed_madd, i32x4.relaxed_dot_i8x16_i7x16_add_s). */
export function relaxed(): i32 {
  return ASC_FEATURE_RELAXED_SIMD ? 1 : 0;
}

/**
 * Scratch bytes a packed kernel needs for n tokens: kind 0 = expertFfnPacked(dModel = a, dFf = b),
 * 1 = expertFfnQ8(a, b), 2 = matmulQ8(dIn = a, dOut = b), 3 = matmulPacked(dIn = a, dOut = b).
 * One formula for every build (quantized rows are counted at 2 bytes a value, the plain path's).
 */
export function scratchBytes(kind: i32, n: i32, a: i32, b: i32): usize {
  const N = <usize>n;
  const tokenScales = (N * 4 + 15) & ~<usize>15;
  const a4 = <usize>((a + 3) & ~3);
  const b4 = <usize>((b + 3) & ~3);
  const a16 = <usize>((a + 15) & ~15);
  const b16 = <usize>((b + 15) & ~15);
  if (kind == 0) return N * a4 * 4 + 16 + N * b4 * 4;
  if (kind == 1) return 2 * tokenScales + N * a16 * 2 + N * b16 * 4 + N * b16 * 2;
  if (kind == 2) return tokenScales + N * a16 * 2;
  return N * a4 * 4;
}
