/**
 * @module Group-limited expert selection (DeepSeek-V2 `group_limited_greedy`, DeepSeek-V3
 * `noaux_tc`): the experts are split into nGroup contiguous groups of equal size; each group gets
 * a score (V3: the sum of its two best selection scores; V2: its best), the topkGroup best groups
 * are kept and every expert outside them is excluded from the top-k.
 *
 * Excluded experts are set to -Infinity, as DeepSeek's own inference code does
 * (deepseek-ai/DeepSeek-V3 inference/model.py `Gate.forward`, `masked_fill_(mask, float("-inf"))`).
 * HF's modeling code fills 0.0 instead; the two agree whenever every kept score is ≥ 0, which is
 * always true for softmax and for sigmoid + bias with bias ≥ 0.
 */

/**
 * In place on one token's selection scores [nExperts]. Group ties go to the lower index, as
 * torch.topk on CPU. A group of one expert scores by that expert alone under "top2-sum".
 */
export function groupLimitInto(
  sel: Float32Array,
  nGroup: number,
  topkGroup: number,
  groupScore: "top2-sum" | "max",
): void {
  const size = sel.length / nGroup;
  const gScore = new Float64Array(nGroup);
  for (let g = 0; g < nGroup; g++) {
    let a = -Infinity; // best
    let b = -Infinity; // second best
    for (let i = g * size; i < (g + 1) * size; i++) {
      const s = sel[i];
      if (s > a) {
        b = a;
        a = s;
      } else if (s > b) b = s;
    }
    // f32 sum, as torch adds two f32 values.
    gScore[g] = groupScore === "max" || size === 1 ? a : Math.fround(a + b);
  }
  const keep = new Uint8Array(nGroup);
  for (let j = 0; j < topkGroup; j++) {
    let best = -1;
    for (let g = 0; g < nGroup; g++) if (!keep[g] && (best === -1 || gScore[g] > gScore[best])) best = g;
    keep[best] = 1;
  }
  for (let g = 0; g < nGroup; g++) if (!keep[g]) sel.fill(-Infinity, g * size, (g + 1) * size);
}
