/**
 * @module softmax → top-k (→ renormalise): the router of Mixtral, Qwen-MoE, OLMoE, Granite-MoE.
 * Softmax over all experts first, then top-k, then optional renormalisation — HF's order. With
 * renormalisation this equals Mistral's reference (top-k over logits, softmax over the k) and
 * Granite's (top-k over logits, softmax over the k). Also the scoring and selection steps the
 * other router kinds share (`route` in router.ts composes them).
 */

/** out[e] = softmax(z)[e], max-subtracted, each probability rounded to f32 as torch computes it. */
export function softmaxInto(out: Float32Array, z: Float32Array): void {
  let max = -Infinity;
  for (let e = 0; e < z.length; e++) max = Math.max(max, z[e]);
  let sum = 0;
  for (let e = 0; e < z.length; e++) {
    out[e] = Math.exp(z[e] - max);
    sum += out[e];
  }
  for (let e = 0; e < z.length; e++) out[e] /= sum;
}

/** out[e] = sigmoid(z[e]) (DeepSeek-V3 scores). */
export function sigmoidInto(out: Float32Array, z: Float32Array): void {
  for (let e = 0; e < z.length; e++) out[e] = 1 / (1 + Math.exp(-z[e]));
}

/**
 * Writes the k largest of `scores` (descending; ties → lower index first, as torch.topk on CPU)
 * into ids/weights at `at`. Selection by repeated scan: k is small (≤ 8), experts ≤ a few hundred.
 * -Infinity entries (masked experts) are only taken when fewer than k others remain.
 */
export function topKInto(scores: Float32Array, k: number, ids: Int32Array, weights: Float32Array, at: number): void {
  for (let j = 0; j < k; j++) {
    let best = -1;
    let bestScore = -Infinity;
    for (let e = 0; e < scores.length; e++) {
      const s = scores[e];
      if (s > bestScore || (best === -1 && s === bestScore)) {
        let taken = false;
        for (let i = 0; i < j; i++) if (ids[at + i] === e) taken = true;
        if (!taken) {
          best = e;
          bestScore = s;
        }
      }
    }
    ids[at + j] = best;
    weights[at + j] = bestScore;
  }
}
