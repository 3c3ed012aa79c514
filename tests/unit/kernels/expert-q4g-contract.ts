/**
 * @module expert-q4g-contract — the SwiGLU expert on 4-bit weights with per-group bf16 scales
 * (assembly/expert-q4g.ts), part of the one contract suite (every build, Node and workerd).
 *
 * Bounds: vs expertFfnQ4gRef (same quantized weights and activation bits — 16, or 8 where the
 * relaxed dot runs it — f64 sums) relative RMS
 * < 2e-3 (the kernel's f32 silu may move h across one of its own rounding steps); vs the f32
 * expert on Gaussian weights of scale 1/√d, relative RMS ≤ 15% (4-bit rounding: ≈ 1/16 of a group's
 * range per weight, through two matmuls).
 */
import { describe, expect, it } from "vitest";
import type { Kernels } from "../../../src/kernels/index";
import {
  expertQ4gBytes,
  expertQ4gScratchBytes,
  packExpertQ4g,
  quantizeExpertQ4g,
  unpackNibbles,
  packNibbles,
} from "../../../src/kernels/q4g-format";
import { expertFfnQ4gRef } from "../../../src/kernels/reference";
import { checkGroupExpert, type GroupExpertFormat, type GroupShape } from "./group-expert-runner";
import { rng } from "./helpers";

/** [n, dModel, dFf, group] */
const SHAPES: readonly GroupShape[] = [
  [1, 64, 96, 32],
  [3, 17, 63, 32],
  [4, 64, 96, 64],
  [7, 257, 33, 32],
  [64, 48, 80, 32],
  [1, 256, 2048, 64],
  [17, 96, 64, 128],
  [8, 100, 70, 32],
];

/** 4-bit experts with per-group bf16 scales, as the contract drives them. */
export const Q4G: GroupExpertFormat<ReturnType<typeof quantizeExpertQ4g>> = {
  bytes: expertQ4gBytes,
  scratchBytes: expertQ4gScratchBytes,
  pack: (dst, w1, w3, w2, d, f, g) => {
    const q = quantizeExpertQ4g(w1, w3, w2, d, f, g);
    packExpertQ4g(dst, q, d, f);
    return q;
  },
  run: (k, out, px, blob, n, d, f, g, s) => k.expertFfnQ4g(out, px, blob, n, d, f, g, s),
  reference: (k, out, x, q, n, d, f) => expertFfnQ4gRef(out, x, q.w1, q.w3, q.w2, n, d, f, k.q4ActivationBits),
};

export function expertQ4gContract(kernels: () => Kernels): void {
  describe("expertFfnQ4g (4-bit experts, per-group bf16 scales)", () => {
    it("nibble packing round-trips", () => {
      const next = rng(4242);
      const q = Int8Array.from({ length: 3 * 64 }, () => (next() % 16) - 8);
      expect(unpackNibbles(packNibbles(q, 3, 64), 3, 64)).toEqual(q);
    });
    it("uses 8-bit activations exactly when a relaxed int8 dot is on", () => {
      const k = kernels();
      expect(k.q4ActivationBits).toBe(k.q8Path === "dot_i16x8" ? 16 : 8);
    });
    const NAME = "matches its reference and the f32 bound for n=%i dModel=%i dFf=%i group=%i";
    it.each(SHAPES)(NAME, (...shape) => {
      checkGroupExpert(Q4G, kernels(), shape, 41000, { refBound: 2e-3, f32Bound: 0.15, label: "int4 group" });
    });
  });
}
