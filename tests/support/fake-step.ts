/**
 * @module A stand-in for a batched forward step in StepBatcher tests: every segment's next token is
 * (its last token + 1) mod FAKE_VOCAB, and its session advances by its tokens.
 */
import type { StepOutcome, StepSegment } from "../../src/serving/forward";

export const FAKE_VOCAB = 8;

export function fakeStep(segs: StepSegment[]): StepOutcome[] {
  return segs.map((g) => {
    g.session.length += g.tokens.length;
    const logits = new Float32Array(FAKE_VOCAB);
    logits[(g.tokens[g.tokens.length - 1] + 1) % FAKE_VOCAB] = 1;
    return { ok: true, logits };
  });
}
