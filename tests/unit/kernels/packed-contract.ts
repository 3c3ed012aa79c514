/**
 * @module packed-contract — the packed f32 and int8 expert kernels, part of the one contract suite
 * (contract.ts) and so run against every build; the int8 cases run once per dot path the build
 * has (dot_i16x8 everywhere; in the relaxed build both relaxed dot forms where their probe passed).
 *
 * int8 error bounds (stated in the README and checked here):
 *  - integer part exact: matmulQ8 equals matmulQ8Ref (same quantization, exact integer dot, the
 *    same f32 rescale) to f32 rounding;
 *  - per output, vs the f32 matmul: |ŷ − y| ≤ (s_j / 2)·‖x̂‖₁ + (s_x / 2)·‖w_j‖₁, with s_j = max|w_j| / 127
 *    the weight row scale and s_x = max|x| / Q the token's (Q = 2047 on dot_i16x8 (12-bit), 8191 on
 *    the relaxed dots (14-bit, two digits), 63 on the relaxed _7bit dots);
 *  - expert FFN, vs f32 on uniform random weights of scale 1/√d (dModel·dFf ≥ 1024): relative RMS
 *    error ≤ 2% (12- and 14-bit activations: the weights' own rounding) and ≤ 6% (7-bit). Uniform
 *    weights are the hard case for max-scaled rows; see README for model-level numbers.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { q8ActivationBits, type Kernels, type KernelFlavor, type Q8Path } from "../../../src/kernels/index";
import {
  expertPackedBytes,
  packExpertF32,
  packExpertQ8,
  packF32,
  packQ8,
  packedF32Bytes,
  packedQ8Bytes,
  quantizeRowsQ8,
  type Q8Expert,
} from "../../../src/kernels/packing";
import { expertFfnQ8Ref, expertFfnRef, matmulQ8Ref, matmulRef } from "../../../src/kernels/reference";
import { expectClose, GUARD, guarded, randn, rng } from "./helpers";

/** [n, dIn, dOut]: decode (n = 1), the 4-token tile and its leftovers, rows off the 8-row panel and
 * columns off the 4/16-column k-block. */
const MATMUL_SHAPES = [
  [1, 1, 1],
  [1, 3, 5],
  [1, 16, 8],
  [1, 17, 9],
  [2, 31, 15],
  [3, 64, 24],
  [4, 33, 7],
  [5, 95, 17],
  [8, 128, 64],
  [9, 257, 33],
  [64, 96, 40],
] as const;
/** [n, dModel, dFf] */
const FFN_SHAPES = [
  [1, 3, 5],
  [1, 64, 96],
  [2, 17, 63],
  [3, 95, 16],
  [4, 64, 96],
  [5, 63, 257],
  [7, 257, 33],
  [16, 96, 64],
  [64, 48, 80],
  [1, 256, 2048],
] as const;

const RMS_BOUND_12 = 0.02;
const RMS_BOUND_7 = 0.06;

/** Relative RMS error ‖got − want‖ / ‖want‖. */
function relRms(got: Float32Array, want: Float32Array): number {
  let e = 0;
  let w = 0;
  for (let i = 0; i < want.length; i++) {
    e += (got[i] - want[i]) ** 2;
    w += want[i] ** 2;
  }
  return Math.sqrt(e / Math.max(w, 1e-30));
}

/** `q8Paths`: the int8 paths the build can take here (relaxed forms only where their probe passed). */
export function packedKernelContract(flavor: KernelFlavor, kernels: () => Kernels, q8Paths: Q8Path[]): void {
  describe("matmulPacked (f32 panels)", () => {
    it.each(MATMUL_SHAPES)("matches the reference for n=%i dIn=%i dOut=%i", (n, dIn, dOut) => {
      const k = kernels();
      const next = rng(11000 + n * 100 + dIn + dOut);
      const x = randn(next, n * dIn);
      const w = randn(next, dOut * dIn);
      const want = new Float32Array(n * dOut);
      matmulRef(want, x, w, n, dIn, dOut);
      const pw = k.alloc(packedF32Bytes(dOut, dIn));
      packF32(k.f32(pw, packedF32Bytes(dOut, dIn) / 4), w, dOut, dIn);
      const px = k.allocF32(x);
      const scratch = guarded(k, k.scratchBytes("matmulPacked", n, dIn, dOut) / 4);
      const out = guarded(k, n * dOut);
      k.matmulPacked(out.ptr, px, pw, n, dIn, dOut, scratch.ptr);
      scratch.read();
      expectClose(out.read(), want, 1e-5 * Math.sqrt(dIn), `n=${n} dIn=${dIn} dOut=${dOut}`);
      for (const p of [out.ptr - GUARD * 4, scratch.ptr - GUARD * 4, px, pw]) k.free(p);
    });
  });

  describe("expertFfnPacked (fused gate/up panels)", () => {
    it.each(FFN_SHAPES)("matches the reference for n=%i dModel=%i dFf=%i", (n, dModel, dFf) => {
      const k = kernels();
      const next = rng(12000 + n * 1000 + dModel + dFf);
      const x = randn(next, n * dModel);
      const w1 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
      const w3 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
      const w2 = randn(next, dModel * dFf, 1 / Math.sqrt(dFf));
      const want = new Float32Array(n * dModel);
      expertFfnRef(want, x, w1, w3, w2, n, dModel, dFf, new Float32Array(2 * n * dFf));
      const bytes = expertPackedBytes("f32", dModel, dFf);
      const blob = k.alloc(bytes);
      packExpertF32(k.f32(blob, bytes / 4), w1, w3, w2, dModel, dFf);
      const px = k.allocF32(x);
      const scratch = guarded(k, k.scratchBytes("ffnF32", n, dModel, dFf) / 4);
      const out = guarded(k, n * dModel);
      k.expertFfnPacked(out.ptr, px, blob, n, dModel, dFf, scratch.ptr);
      scratch.read();
      expectClose(out.read(), want, 1e-5 * Math.sqrt(dModel + dFf), `n=${n} dModel=${dModel} dFf=${dFf}`);
      for (const p of [out.ptr - GUARD * 4, scratch.ptr - GUARD * 4, px, blob]) k.free(p);
    });

    it("never reads x past dModel (NaN after the row does not leak into the result)", () => {
      const k = kernels();
      const [n, dModel, dFf] = [2, 5, 6];
      const next = rng(5);
      const x = randn(next, n * dModel);
      const [w1, w3, w2] = [randn(next, dFf * dModel), randn(next, dFf * dModel), randn(next, dModel * dFf)];
      const bytes = expertPackedBytes("f32", dModel, dFf);
      const blob = k.alloc(bytes);
      packExpertF32(k.f32(blob, bytes / 4), w1, w3, w2, dModel, dFf);
      const px = k.alloc((n * dModel + 8) * 4);
      k.f32(px, n * dModel + 8).fill(NaN);
      k.f32(px, n * dModel).set(x);
      const out = k.alloc(n * dModel * 4);
      const scratch = k.alloc(k.scratchBytes("ffnF32", n, dModel, dFf));
      k.expertFfnPacked(out, px, blob, n, dModel, dFf, scratch);
      const want = new Float32Array(n * dModel);
      expertFfnRef(want, x, w1, w3, w2, n, dModel, dFf, new Float32Array(2 * n * dFf));
      expectClose(k.f32(out, n * dModel).slice(), want, 1e-5, "padded tail");
      for (const p of [scratch, out, px, blob]) k.free(p);
    });
  });

  const paths: Q8Path[] =
    flavor === "relaxed"
      ? ["dot_i16x8", "relaxed_dot", "relaxed_dot_i16", "relaxed_dot_7bit", "relaxed_dot_i16_7bit"]
      : ["dot_i16x8"];
  for (const path of paths) {
    // A relaxed form that failed its probe here is never used: said so as a skip.
    describe.skipIf(!q8Paths.includes(path))(`int8 kernels (${path})`, () => {
      let k: Kernels;
      let before: Q8Path;
      beforeAll(() => {
        k = kernels();
        before = k.q8Path;
        expect(k.setQ8Path(path)).toBe(path);
      });
      afterAll(() => {
        k.setQ8Path(before);
      });
      const bits = q8ActivationBits(path);
      const qmax = 2 ** (bits - 1) - 1;

      it.each(MATMUL_SHAPES)("matmulQ8 equals the int8 reference for n=%i dIn=%i dOut=%i", (n, dIn, dOut) => {
        const next = rng(13000 + n * 100 + dIn + dOut);
        const x = randn(next, n * dIn, 3);
        const w = randn(next, dOut * dIn);
        const q = quantizeRowsQ8(w, dOut, dIn);
        const bytes = packedQ8Bytes(dOut, dIn);
        const pw = k.alloc(bytes);
        packQ8(k.u8(pw, bytes), q, dOut, dIn);
        const px = k.allocF32(x);
        const scratch = guarded(k, k.scratchBytes("matmulQ8", n, dIn, dOut) / 4);
        const out = guarded(k, n * dOut);
        k.matmulQ8(out.ptr, px, pw, n, dIn, dOut, scratch.ptr);
        scratch.read();
        const got = out.read();
        const want = new Float32Array(n * dOut);
        matmulQ8Ref(want, x, q, n, dIn, dOut, bits);
        expectClose(got, want, 1e-6, `n=${n} dIn=${dIn} dOut=${dOut}`);
        // The stated bound against the exact f32 product.
        const exact = new Float32Array(n * dOut);
        matmulRef(exact, x, w, n, dIn, dOut);
        for (let t = 0; t < n; t++) {
          let xMax = 0;
          let x1 = 0;
          for (let i = 0; i < dIn; i++) {
            xMax = Math.max(xMax, Math.abs(x[t * dIn + i]));
            x1 += Math.abs(x[t * dIn + i]);
          }
          const sx = xMax / qmax;
          for (let j = 0; j < dOut; j++) {
            let w1 = 0;
            for (let i = 0; i < dIn; i++) w1 += Math.abs(w[j * dIn + i]);
            const sj = q.scales[j];
            const bound = (sj / 2) * (x1 + (dIn * sx) / 2) + (sx / 2) * w1;
            const err = Math.abs(got[t * dOut + j] - exact[t * dOut + j]);
            expect(err, `t=${t} j=${j}`).toBeLessThanOrEqual(
              bound * (1 + 1e-5) + 1e-6 * (1 + Math.abs(exact[t * dOut + j])),
            );
          }
        }
        for (const p of [out.ptr - GUARD * 4, scratch.ptr - GUARD * 4, px, pw]) k.free(p);
      });

      it.each(FFN_SHAPES)(
        "expertFfnQ8 matches the int8 reference and stays within the RMS bound for n=%i dModel=%i dFf=%i",
        (n, dModel, dFf) => {
          const next = rng(14000 + n * 1000 + dModel + dFf);
          const x = randn(next, n * dModel);
          const w1 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
          const w3 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
          const w2 = randn(next, dModel * dFf, 1 / Math.sqrt(dFf));
          const q: Q8Expert = {
            w1: quantizeRowsQ8(w1, dFf, dModel),
            w3: quantizeRowsQ8(w3, dFf, dModel),
            w2: quantizeRowsQ8(w2, dModel, dFf),
          };
          const bytes = expertPackedBytes("q8", dModel, dFf);
          const blob = k.alloc(bytes);
          packExpertQ8(k.u8(blob, bytes), q, dModel, dFf);
          const px = k.allocF32(x);
          const scratch = guarded(k, k.scratchBytes("ffnQ8", n, dModel, dFf) / 4);
          const out = guarded(k, n * dModel);
          k.expertFfnQ8(out.ptr, px, blob, n, dModel, dFf, scratch.ptr);
          scratch.read();
          const got = out.read();
          const want = new Float32Array(n * dModel);
          expertFfnQ8Ref(want, x, q.w1, q.w3, q.w2, n, dModel, dFf, bits);
          // Same integers; the kernel's vector exp (≤ 2 ulp) may move h across a rounding boundary of
          // its own int8 quantization: one step of h's scale, spread over dFf.
          expect(relRms(got, want), "vs int8 reference").toBeLessThan(2e-3);
          const f32 = new Float32Array(n * dModel);
          expertFfnRef(f32, x, w1, w3, w2, n, dModel, dFf, new Float32Array(2 * n * dFf));
          if (dModel * dFf >= 1024)
            expect(relRms(got, f32), "vs f32").toBeLessThan(bits === 7 ? RMS_BOUND_7 : RMS_BOUND_12);
          for (const p of [out.ptr - GUARD * 4, scratch.ptr - GUARD * 4, px, blob]) k.free(p);
        },
      );

      it("gives exact zeros for a zero token and scales with a large one", () => {
        const [dModel, dFf] = [40, 24];
        const next = rng(3);
        const [w1, w3, w2] = [randn(next, dFf * dModel), randn(next, dFf * dModel), randn(next, dModel * dFf)];
        const q: Q8Expert = {
          w1: quantizeRowsQ8(w1, dFf, dModel),
          w3: quantizeRowsQ8(w3, dFf, dModel),
          w2: quantizeRowsQ8(w2, dModel, dFf),
        };
        const bytes = expertPackedBytes("q8", dModel, dFf);
        const blob = k.alloc(bytes);
        packExpertQ8(k.u8(blob, bytes), q, dModel, dFf);
        const x = new Float32Array(2 * dModel);
        x.fill(1e4, dModel);
        const px = k.allocF32(x);
        const out = k.alloc(2 * dModel * 4);
        const scratch = k.alloc(k.scratchBytes("ffnQ8", 2, dModel, dFf));
        k.expertFfnQ8(out, px, blob, 2, dModel, dFf, scratch);
        const y = k.f32(out, 2 * dModel);
        expect(Array.from(y.subarray(0, dModel)).every((v) => v === 0)).toBe(true);
        expect(Array.from(y.subarray(dModel)).every((v) => Number.isFinite(v))).toBe(true);
        for (const p of [scratch, out, px, blob]) k.free(p);
      });
    });
  }
}
