/**
 * @module expert-q8g — one SwiGLU expert on int8 weights with per-group scales (the dense format
 * of assembly/dense.ts, issue 14 item 2), beside the per-row-scale packed expert of q8.ts.
 *
 * Blob: [w1 (gate) dFf × dModel][w3 (up) dFf × dModel][w2 (down) dModel × dFf], each an int8 group
 * matrix (q rows × colsG, then f32 scales rows × colsG/group) whose size is a multiple of 16.
 * x is quantized once (16-bit per token) for gate and up; h = silu(gate)·up is quantized again for
 * down. scratch ≥ expertQ8gScratchBytes (src/kernels/dense-format.ts): h and u [n, dFf] f32, then
 * token scales and i16 activations for the wider of dModel and dFf.
 */
import { matmulQ8gQuantized, quantizeTokens } from "./dense";
import { siluMul } from "./silu-mul";

// @ts-ignore: decorator
@inline
function align16(b: usize): usize {
  return (b + 15) & ~<usize>15;
}

function q8gBytes(rows: i32, cols: i32, group: i32): usize {
  const colsG = <usize>(((cols + group - 1) / group) * group);
  return align16(<usize>rows * colsG + <usize>rows * (colsG / <usize>group) * 4);
}

export function expertFfnQ8g(
  out: usize, x: usize, blob: usize, n: i32, dModel: i32, dFf: i32, group: i32, scratch: usize,
): void {
  const dmG = ((dModel + group - 1) / group) * group;
  const dfG = ((dFf + group - 1) / group) * group;
  const hBytes = align16(<usize>n * <usize>dFf * 4);
  const h = scratch;
  const u = h + hBytes;
  const sx = u + hBytes;
  const xq = sx + align16(<usize>n << 2);
  const w1 = blob;
  const w3 = w1 + q8gBytes(dFf, dModel, group);
  const w2 = w3 + q8gBytes(dFf, dModel, group);
  quantizeTokens(xq, sx, x, n, dModel, dmG);
  matmulQ8gQuantized(h, xq, sx, w1, n, dFf, dmG, group);
  matmulQ8gQuantized(u, xq, sx, w3, n, dFf, dmG, group);
  siluMul(h, h, u, n * dFf);
  quantizeTokens(xq, sx, h, n, dFf, dfG);
  matmulQ8gQuantized(out, xq, sx, w2, n, dModel, dfG, group);
}
