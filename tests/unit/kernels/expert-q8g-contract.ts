/**
 * @module expert-q8g-contract — the SwiGLU expert on int8 weights with per-group scales
 * (assembly/expert-q8g.ts), part of the one contract suite (every build, Node and workerd).
 *
 * Bounds: vs expertFfnQ8gRef (same quantized weights and 16-bit activations, f64 sums) relative RMS
 * < 2e-3 (the kernel's f32 silu may move h across one of its own rounding steps); vs the f32
 * expert on uniform random weights of scale 1/√d, relative RMS ≤ 2% (the weights' rounding).
 */
import { describe, expect, it } from "vitest";
import type { Kernels } from "../../../src/kernels/index";
import { expertQ8gBytes, expertQ8gScratchBytes, packExpertQ8g } from "../../../src/kernels/dense-format";
import { expertFfnQ8gRef, expertFfnRef } from "../../../src/kernels/reference";
import { GUARD, guarded, randn, rng } from "./helpers";

/** [n, dModel, dFf, group] */
const SHAPES = [
  [1, 64, 96, 32],
  [3, 17, 63, 16],
  [4, 64, 96, 64],
  [7, 257, 33, 32],
  [64, 48, 80, 16],
  [1, 256, 2048, 64],
  [17, 96, 64, 128],
] as const;

/** ‖got − want‖ / ‖want‖ */
export function relRms(got: Float32Array, want: Float32Array): number {
  let e = 0;
  let w = 0;
  for (let i = 0; i < want.length; i++) {
    e += (got[i] - want[i]) ** 2;
    w += want[i] ** 2;
  }
  return Math.sqrt(e / Math.max(w, 1e-30));
}

/** Runs expertFfnQ8g on f32 weights (packed here); returns the output and the quantized matrices. */
export function runExpertQ8g(
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
  const bytes = expertQ8gBytes(dModel, dFf, group);
  const blob = k.alloc(bytes);
  const q = packExpertQ8g(k.u8(blob, bytes), w1, w3, w2, dModel, dFf, group);
  const px = k.allocF32(x);
  const scratch = guarded(k, expertQ8gScratchBytes(n, dModel, dFf, group) / 4);
  const out = guarded(k, n * dModel);
  k.expertFfnQ8g(out.ptr, px, blob, n, dModel, dFf, group, scratch.ptr);
  scratch.read();
  const y = out.read();
  for (const p of [out.ptr - GUARD * 4, scratch.ptr - GUARD * 4, px, blob]) k.free(p);
  return { y, q };
}

export function expertQ8gContract(kernels: () => Kernels): void {
  describe("expertFfnQ8g (int8 experts, per-group scales)", () => {
    const NAME = "matches its reference and the f32 bound for n=%i dModel=%i dFf=%i group=%i";
    it.each(SHAPES)(NAME, (n, dModel, dFf, group) => {
      const k = kernels();
      const next = rng(31000 + n * 1000 + dModel + dFf + group);
      const x = randn(next, n * dModel);
      const w1 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
      const w3 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
      const w2 = randn(next, dModel * dFf, 1 / Math.sqrt(dFf));
      const { y, q } = runExpertQ8g(k, x, w1, w3, w2, n, dModel, dFf, group);
      const want = new Float32Array(n * dModel);
      expertFfnQ8gRef(want, x, q.w1, q.w3, q.w2, n, dModel, dFf);
      expect(relRms(y, want), "vs int8 group reference").toBeLessThan(2e-3);
      const f32 = new Float32Array(n * dModel);
      expertFfnRef(f32, x, w1, w3, w2, n, dModel, dFf, new Float32Array(2 * n * dFf));
      if (dModel * dFf >= 1024) expect(relRms(y, f32), "vs f32").toBeLessThan(0.02);
    });
  });
}
