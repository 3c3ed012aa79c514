/**
 * @module matmul-rows.test — the f32 head matmul computes each token row the same, bit for bit,
 * whatever the number of tokens in the call and the row's place in it (the 4-token tile, the 1-, 2-
 * and 3-token remainders), for any output count: the rows left over after the row blocks are summed
 * as the blocks sum theirs (assembly/matmul.ts rowDot) — which lets the batched output head
 * (src/serving/head-batcher.ts) merge requests' rows for any vocabulary (granite's 49155 included).
 */
import { describe, expect, it } from "vitest";
import { loadKernels } from "../../../src/kernels/node";

const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

describe.each(["scalar", "simd", "relaxed"] as const)("matmul rows on the %s kernels", (flavor) => {
  it.each([
    [256, 4000],
    [60, 1000],
    [33, 1000],
    [7, 8],
    [33, 1003],
    [61, 27],
  ])("are bit-identical alone and at any place in a batch (dIn %i, dOut %i)", (dIn, dOut) => {
    const k = loadKernels(flavor, { maxBytes: 64 << 20 });
    const w = k.alloc(dIn * dOut * 4);
    k.f32(w, dIn * dOut).set(Float32Array.from({ length: dIn * dOut }, (_, i) => Math.sin(i * 0.731) * 0.3));
    const n = 11;
    const xs = Float32Array.from({ length: n * dIn }, (_, i) => Math.cos(i * 0.37) * (1 + (i % 3)));
    const x = k.alloc(n * dIn * 4);
    const out = k.alloc(n * dOut * 4);
    const alone: Float32Array[] = [];
    for (let t = 0; t < n; t++) {
      k.f32(x, dIn).set(xs.subarray(t * dIn, (t + 1) * dIn));
      k.matmul(out, x, w, 1, dIn, dOut);
      alone.push(k.f32(out, dOut).slice());
    }
    for (let m = 2; m <= n; m++) {
      k.f32(x, m * dIn).set(xs.subarray(0, m * dIn));
      k.matmul(out, x, w, m, dIn, dOut);
      const y = k.f32(out, m * dOut);
      for (let t = 0; t < m; t++) expect(bits(y.subarray(t * dOut, (t + 1) * dOut))).toEqual(bits(alone[t]));
    }
  });

  // The batched head's row counts (issue 11: 8–64 concurrent streams) and past the 64-token block
  // the SIMD build splits x into (assembly/matmul.ts tokenBlock), with an odd token after the tiles.
  it("are bit-identical alone and in 8-, 16-, 17-, 64-, 65- and 70-row calls (dIn 256, dOut 1003)", () => {
    const [dIn, dOut, n] = [256, 1003, 70];
    const k = loadKernels(flavor, { maxBytes: 64 << 20 });
    const w = k.alloc(dIn * dOut * 4);
    k.f32(w, dIn * dOut).set(Float32Array.from({ length: dIn * dOut }, (_, i) => Math.sin(i * 0.517) * 0.2));
    const xs = Float32Array.from({ length: n * dIn }, (_, i) => Math.cos(i * 0.29) * (1 + (i % 5)));
    const x = k.alloc(n * dIn * 4);
    const out = k.alloc(n * dOut * 4);
    const alone: number[][] = [];
    for (let t = 0; t < n; t++) {
      k.f32(x, dIn).set(xs.subarray(t * dIn, (t + 1) * dIn));
      k.matmul(out, x, w, 1, dIn, dOut);
      alone.push(bits(k.f32(out, dOut)));
    }
    k.f32(x, n * dIn).set(xs);
    for (const m of [8, 16, 17, 64, 65, 70]) {
      k.matmul(out, x, w, m, dIn, dOut);
      const y = k.f32(out, m * dOut);
      for (let t = 0; t < m; t++) expect(bits(y.subarray(t * dOut, (t + 1) * dOut))).toEqual(alone[t]);
    }
  });
});
