/**
 * @module expert-ffn — one SwiGLU expert: out[n, dModel] = (silu(x·w1ᵀ) ⊙ (x·w3ᵀ)) · w2ᵀ.
 *
 * x [n, dModel]; w1, w3 [dFf, dModel]; w2 [dModel, dFf]; scratch ≥ 2·n·dFf f32s.
 * Three matmuls and one gate; the point of a single export is one Wasm call per expert batch.
 */
import { matmul } from "./matmul";
import { siluMul } from "./silu-mul";

export function expertFfn(
  out: usize,
  x: usize,
  w1: usize,
  w3: usize,
  w2: usize,
  n: i32,
  dModel: i32,
  dFf: i32,
  scratch: usize,
): void {
  const gate = scratch; // [n, dFf]
  const up = scratch + ((<usize>n * <usize>dFf) << 2); // [n, dFf]
  matmul(gate, x, w1, n, dModel, dFf);
  matmul(up, x, w3, n, dModel, dFf);
  siluMul(gate, gate, up, n * dFf);
  matmul(out, gate, w2, n, dFf, dModel);
}
