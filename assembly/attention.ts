/**
 * @module attention — causal multi-head attention with grouped-query KV heads over a KV cache.
 *
 * q [nQ, nHeads, headDim]; k [kvLen, nKvHeads, headDim]; v [kvLen, nKvHeads, vHeadDim];
 * kvLen = startPos + nQ; out [nQ, nHeads, vHeadDim]; scratch ≥ kvLen f32s (one score row).
 * Query i sits at absolute position startPos + i and sees kv positions 0..startPos + i.
 * Query head h reads kv head h / (nHeads / nKvHeads), as HF `repeat_kv` lays them out.
 * vHeadDim may differ from headDim (DeepSeek MLA).
 */
import { axpy, dot, zero } from "./vec";
import { softmaxRow } from "./softmax";

export function attention(
  out: usize,
  q: usize,
  k: usize,
  v: usize,
  nQ: i32,
  startPos: i32,
  nHeads: i32,
  nKvHeads: i32,
  headDim: i32,
  vHeadDim: i32,
  scale: f32,
  scratch: usize,
): void {
  const group = nHeads / nKvHeads;
  const kPos = (<usize>nKvHeads * <usize>headDim) << 2; // bytes per kv position in k
  const vPos = (<usize>nKvHeads * <usize>vHeadDim) << 2; // bytes per kv position in v
  for (let i = 0; i < nQ; i++) {
    const len = startPos + i + 1;
    for (let h = 0; h < nHeads; h++) {
      const kvh = <usize>(h / group);
      const qh = q + ((<usize>(i * nHeads + h) * <usize>headDim) << 2);
      const kh = k + ((kvh * <usize>headDim) << 2);
      const vh = v + ((kvh * <usize>vHeadDim) << 2);
      for (let t = 0; t < len; t++) {
        store<f32>(scratch + ((<usize>t) << 2), dot(qh, kh + <usize>t * kPos, headDim) * scale);
      }
      softmaxRow(scratch, len);
      const oh = out + ((<usize>(i * nHeads + h) * <usize>vHeadDim) << 2);
      zero(oh, vHeadDim);
      for (let t = 0; t < len; t++) {
        axpy(oh, load<f32>(scratch + ((<usize>t) << 2)), vh + <usize>t * vPos, vHeadDim);
      }
    }
  }
}
