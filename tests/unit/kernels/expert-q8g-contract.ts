/**
 * @module expert-q8g-contract — the SwiGLU expert on int8 weights with per-group scales
 * (assembly/expert-q8g.ts), part of the one contract suite (every build, Node and workerd).
 *
 * Bounds: vs expertFfnQ8gRef (same quantized weights and 16-bit activations, f64 sums) relative RMS
 * < 2e-3 (the kernel's f32 silu may move h across one of its own rounding steps); vs the f32
 * expert on Gaussian weights of scale 1/√d, relative RMS ≤ 2% (the weights' rounding).
 */
import { describe, it } from "vitest";
import type { Kernels } from "../../../src/kernels/index";
import { expertQ8gBytes, expertQ8gScratchBytes, packExpertQ8g } from "../../../src/kernels/dense-format";
import { expertFfnQ8gRef } from "../../../src/kernels/reference";
import { checkGroupExpert, type GroupExpertFormat, type GroupShape } from "./group-expert-runner";

/** [n, dModel, dFf, group] */
const SHAPES: readonly GroupShape[] = [
  [1, 64, 96, 32],
  [3, 17, 63, 16],
  [4, 64, 96, 64],
  [7, 257, 33, 32],
  [64, 48, 80, 16],
  [1, 256, 2048, 64],
  [17, 96, 64, 128],
];

/** int8 experts with per-group scales, as the contract drives them. */
export const Q8G: GroupExpertFormat<ReturnType<typeof packExpertQ8g>> = {
  bytes: expertQ8gBytes,
  scratchBytes: expertQ8gScratchBytes,
  pack: packExpertQ8g,
  run: (k, out, px, blob, n, d, f, g, s) => k.expertFfnQ8g(out, px, blob, n, d, f, g, s),
  reference: (_k, out, x, q, n, d, f) => expertFfnQ8gRef(out, x, q.w1, q.w3, q.w2, n, d, f),
};

export function expertQ8gContract(kernels: () => Kernels): void {
  describe("expertFfnQ8g (int8 experts, per-group scales)", () => {
    const NAME = "matches its reference and the f32 bound for n=%i dModel=%i dFf=%i group=%i";
    it.each(SHAPES)(NAME, (...shape) => {
      checkGroupExpert(Q8G, kernels(), shape, 31000, { refBound: 2e-3, f32Bound: 0.02, label: "int8 group" });
    });
  });
}
