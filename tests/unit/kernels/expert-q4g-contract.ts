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
import { expertFfnQ4gRef, expertFfnRef } from "../../../src/kernels/reference";
import { relRms } from "./expert-q8g-contract";
import { GUARD, guarded, randn, rng } from "./helpers";

/** [n, dModel, dFf, group] */
const SHAPES = [
  [1, 64, 96, 32],
  [3, 17, 63, 32],
  [4, 64, 96, 64],
  [7, 257, 33, 32],
  [64, 48, 80, 32],
  [1, 256, 2048, 64],
  [17, 96, 64, 128],
  [8, 100, 70, 32],
] as const;

/** Runs expertFfnQ4g on f32 weights (quantized and packed here); returns the output and the matrices. */
export function runExpertQ4g(
  k: Kernels,
  x: Float32Array,
  w1: Float32Array,
  w3: Float32Array,
  w2: Float32Array,
  n: number,
  dModel: number,
  dFf: number,
  group: number,
) {
  const bytes = expertQ4gBytes(dModel, dFf, group);
  const blob = k.alloc(bytes);
  const q = quantizeExpertQ4g(w1, w3, w2, dModel, dFf, group);
  packExpertQ4g(k.u8(blob, bytes), q, dModel, dFf);
  const px = k.allocF32(x);
  const scratch = guarded(k, expertQ4gScratchBytes(n, dModel, dFf, group) / 4);
  const out = guarded(k, n * dModel);
  k.expertFfnQ4g(out.ptr, px, blob, n, dModel, dFf, group, scratch.ptr);
  scratch.read();
  const y = out.read();
  for (const p of [out.ptr - GUARD * 4, scratch.ptr - GUARD * 4, px, blob]) k.free(p);
  return { y, q };
}

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
    it.each(SHAPES)(NAME, (n, dModel, dFf, group) => {
      const k = kernels();
      const next = rng(41000 + n * 1000 + dModel + dFf + group);
      const x = randn(next, n * dModel);
      const w1 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
      const w3 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
      const w2 = randn(next, dModel * dFf, 1 / Math.sqrt(dFf));
      const { y, q } = runExpertQ4g(k, x, w1, w3, w2, n, dModel, dFf, group);
      const want = new Float32Array(n * dModel);
      expertFfnQ4gRef(want, x, q.w1, q.w3, q.w2, n, dModel, dFf, k.q4ActivationBits);
      expect(relRms(y, want), "vs int4 group reference").toBeLessThan(2e-3);
      const f32 = new Float32Array(n * dModel);
      expertFfnRef(f32, x, w1, w3, w2, n, dModel, dFf, new Float32Array(2 * n * dFf));
      if (dModel * dFf >= 1024) expect(relRms(y, f32), "vs f32").toBeLessThan(0.15);
    });
  });
}
