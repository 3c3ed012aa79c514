/**
 * @module Teacher-forced logit agreement between a reference and a model under test (the accuracy
 * benches: quantized experts, quantized dense layers). Both run the same prompts; the reference
 * decodes greedily and the other is fed its tokens, so every position compares logits for the same
 * prefix: absolute and relative error over all logits, argmax agreement at every position, and
 * greedy agreement at the decoded ones.
 */
import type { Session } from "../../src/serving/forward";

/** One side of the comparison: a forward pass over a session (logits [rows, vocab]). */
export interface LogitSource {
  startSession(len: number): Session;
  endSession(s: Session): void;
  forward(s: Session, tokens: number[], allLogits: boolean): Promise<Float32Array>;
}

export interface LogitAgreement {
  maxAbs: number;
  meanAbs: number;
  /** ‖test − ref‖ / ‖ref‖ over every logit compared. */
  relRms: number;
  /** Fraction of all positions (prompt included) with equal argmax. */
  top1: number;
  /** Fraction of decoded positions where the test's argmax is the reference's greedy token. */
  greedy: number;
  decoded: number;
  positions: number;
}

export function argmax(xs: Float32Array): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

/** Runs every prompt plus `decode` greedy steps of `ref` through both sides and compares. */
export async function logitAgreement(
  ref: LogitSource,
  test: LogitSource,
  prompts: readonly number[][],
  decode: number,
  vocab: number,
): Promise<LogitAgreement> {
  // Running sums over every logit compared, and counts of positions.
  const acc = { maxAbs: 0, sumErr: 0, sumSqErr: 0, sumSq: 0, count: 0, positions: 0, top1: 0, greedy: 0, decoded: 0 };
  const compare = (a: Float32Array, b: Float32Array) => {
    for (let r = 0; r < a.length / vocab; r++) {
      const ra = a.subarray(r * vocab, (r + 1) * vocab);
      const rb = b.subarray(r * vocab, (r + 1) * vocab);
      for (let i = 0; i < vocab; i++) {
        const e = Math.abs(ra[i] - rb[i]);
        acc.maxAbs = Math.max(acc.maxAbs, e);
        acc.sumErr += e;
        acc.sumSqErr += e * e;
        acc.sumSq += ra[i] * ra[i];
      }
      acc.count += vocab;
      acc.positions++;
      if (argmax(ra) === argmax(rb)) acc.top1++;
    }
  };
  for (const prompt of prompts) {
    const sa = ref.startSession(prompt.length + decode);
    const sb = test.startSession(prompt.length + decode);
    try {
      let la = await ref.forward(sa, prompt, true);
      let lb = await test.forward(sb, prompt, true);
      compare(la, lb);
      la = la.subarray((prompt.length - 1) * vocab);
      lb = lb.subarray((prompt.length - 1) * vocab);
      for (let step = 0; step < decode; step++) {
        const token = argmax(la); // the reference's greedy choice
        if (argmax(lb) === token) acc.greedy++;
        acc.decoded++;
        if (step + 1 === decode) break;
        la = await ref.forward(sa, [token], false);
        lb = await test.forward(sb, [token], false); // teacher-forced
        compare(la, lb);
      }
    } finally {
      ref.endSession(sa);
      test.endSession(sb);
    }
  }
  return {
    maxAbs: acc.maxAbs,
    meanAbs: acc.sumErr / acc.count,
    relRms: Math.sqrt(acc.sumSqErr / Math.max(acc.sumSq, 1e-30)),
    top1: acc.top1 / acc.positions,
    greedy: acc.greedy / acc.decoded,
    decoded: acc.decoded,
    positions: acc.positions,
  };
}
