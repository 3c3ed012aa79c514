/**
 * @module silu-mul — out[i] = silu(gate[i]) · up[i], silu(z) = z / (1 + exp(−z)): the SwiGLU gate
 * (Shazeer 2020). Same formula as torch's silu so large |z| round the same way (z → −∞ gives −0).
 * Scalar in both builds for the same reason as softmax: exp dominates and stays exact.
 * out may equal gate or up.
 */

export function siluMul(out: usize, gate: usize, up: usize, len: i32): void {
  const bytes = (<usize>len) << 2;
  for (let i: usize = 0; i < bytes; i += 4) {
    const g = load<f32>(gate + i);
    store<f32>(out + i, (g / (<f32>1 + Mathf.exp(-g))) * load<f32>(up + i));
  }
}
