/**
 * @module expert-q4g-contract — the SwiGLU expert on 4-bit weights with per-group scales
 * (assembly/expert-q4g.ts), part of the one contract suite (every build, Node and workerd).
 *
 * Bounds: vs expertFfnQ4gRef (same quantized weights, 8-bit activations, exact integer row sums)
 * relative RMS
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
  q4gKernelScales,
  quantizeQ4g,
  Q4_SUB_MAX,
} from "../../../src/kernels/q4g-format";
import { bf16ToF32 } from "../../../src/kernels/dense-format";
import { expertFfnQ4gRef } from "../../../src/kernels/reference";
import { checkGroupExpert, runGroupExpert, type GroupExpertFormat, type GroupShape } from "./group-expert-runner";
import { randn, rng } from "./helpers";

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
  [2, 36, 8400, 32], // down rows longer than one 8192-input i32 chunk
  [1, 40, 8300, 96],
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
  reference: (_k, out, x, q, n, d, f) => expertFfnQ4gRef(out, x, q.w1, q.w3, q.w2, n, d, f),
};

export function expertQ4gContract(kernels: () => Kernels): void {
  describe("expertFfnQ4g (4-bit experts, per-group scales)", () => {
    it("nibble packing round-trips", () => {
      const next = rng(4242);
      const q = Int8Array.from({ length: 3 * 64 }, () => (next() % 16) - 8);
      expect(unpackNibbles(packNibbles(q, 3, 64), 3, 64)).toEqual(q);
    });
    it("uses 8-bit activations on every build and int8 path", () => {
      const k = kernels();
      expect(k.q4ActivationBits).toBe(8);
    });
    it("gives the same bits on every dot form and batch size (token rows independent)", () => {
      const k = kernels();
      const [n, d, f, g] = [9, 98, 163, 32];
      const next = rng(5150);
      const x = randn(next, n * d);
      const w = {
        w1: randn(next, f * d, 1 / Math.sqrt(d)),
        w3: randn(next, f * d, 1 / Math.sqrt(d)),
        w2: randn(next, d * f, 1 / Math.sqrt(f)),
      };
      const relaxed = k.setQ4Relaxed(true);
      try {
        const all = runGroupExpert(Q4G, k, x, w, [n, d, f, g]).y;
        for (const t of [0, 4, 8]) {
          const one = runGroupExpert(Q4G, k, x.subarray(t * d, (t + 1) * d), w, [1, d, f, g]).y;
          expect(one).toEqual(all.subarray(t * d, (t + 1) * d));
        }
        k.setQ4Relaxed(false);
        expect(runGroupExpert(Q4G, k, x, w, [n, d, f, g]).y).toEqual(all);
      } finally {
        k.setQ4Relaxed(relaxed);
      }
    });
    it("holds every scale as an integer sub-scale times one power of two per row, exactly", () => {
      const next = rng(777);
      const [rows, cols] = [6, 256];
      const w = randn(next, rows * cols, 0.05);
      for (let i = 0; i < cols; i++) w[2 * cols + i] *= i < 32 ? 40 : 1; // one loud group in a row
      const m = quantizeQ4g(w, rows, cols, 32);
      const { units, subs } = q4gKernelScales(m);
      for (let j = 0; j < rows; j++) {
        expect(Number.isInteger(Math.log2(units[j]))).toBe(true);
        for (let g = 0; g < cols / 32; g++) {
          const sub = subs[j * (cols / 32) + g];
          expect(Math.abs(sub)).toBeLessThanOrEqual(Q4_SUB_MAX);
          expect(Math.fround(sub * units[j])).toBe(bf16ToF32(m.scales[j * (cols / 32) + g]));
        }
      }
    });
    const NAME = "matches its reference and the f32 bound for n=%i dModel=%i dFf=%i group=%i";
    it.each(SHAPES)(NAME, (...shape) => {
      checkGroupExpert(Q4G, kernels(), shape, 41000, { refBound: 2e-3, f32Bound: 0.15, label: "int4 group" });
    });
  });
}
