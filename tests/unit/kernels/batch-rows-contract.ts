/**
 * @module batch-rows-contract — batch independence, bit for bit, for every kernel a batched host
 * feeds: a token's output row from a call of n tokens equals the same token run alone (n = 1),
 * whatever n and its place in the call, on the tiles each path has (f32 head matmul's row-outer
 * token blocks, the bf16 head kernel and the int8-group stage matrices — 4-token tiles, one-token
 * blocks, leftover rows — ragged row counts included; the packed f32 4-, 3- and 2-token tiles across
 * k-chunks and the staged path (workerd's default), the same bits from both; the int8 4-token tiles
 * on every dot path the build has, hi/lo digits included; the int4 4-token tiles on every dot form
 * the build has, and the same bits across forms). Part of the one contract suite (contract.ts: every
 * build, Node and workerd). Also the greedy head scan (argmaxRows) against the JS scan it replaces.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DenseMatrixWriter, denseScratchBytes } from "../../../src/kernels/dense";
import type { Kernels, Q4DotForm, Q8Path } from "../../../src/kernels/index";
import {
  expertPackedBytes,
  packExpertF32,
  packExpertQ8,
  packF32,
  packQ8,
  packedF32Bytes,
  packedQ8Bytes,
  quantizeRowsQ8,
} from "../../../src/kernels/packing";
import {
  expertQ4gBytes,
  expertQ4gScratchBytes,
  packExpertQ4g,
  quantizeExpertQ4g,
} from "../../../src/kernels/q4g-format";
import { argmaxRowsRef } from "../../../src/kernels/reference";
import { randn, rng } from "./helpers";

const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

/** One kernel call on n rows of `width` inputs giving n rows of `outWidth`; the harness owns x/out. */
type RowKernel = (k: Kernels, out: number, x: number, n: number) => void;

/** Runs `run` on each token alone, then on every batch size in `sizes` (the first m tokens), and
 * requires every row of every batch to equal its lone row bit for bit. */
function expectRowsIndependent(
  k: Kernels,
  width: number,
  outWidth: number,
  sizes: readonly number[],
  run: RowKernel,
  seed: number,
): void {
  const nMax = Math.max(...sizes);
  const xs = randn(rng(seed), nMax * width, 2);
  const x = k.alloc(nMax * width * 4);
  const out = k.alloc(nMax * outWidth * 4);
  try {
    const alone: Float32Array[] = [];
    for (let t = 0; t < nMax; t++) {
      k.f32(x, width).set(xs.subarray(t * width, (t + 1) * width));
      run(k, out, x, 1);
      alone.push(k.f32(out, outWidth).slice());
    }
    for (const m of sizes) {
      k.f32(x, m * width).set(xs.subarray(0, m * width));
      run(k, out, x, m);
      const y = k.f32(out, m * outWidth);
      for (let t = 0; t < m; t++) {
        expect(bits(y.subarray(t * outWidth, (t + 1) * outWidth)), `n=${m} token ${t}`).toEqual(bits(alone[t]));
      }
    }
  } finally {
    k.free(out);
    k.free(x);
  }
}

/** Batch sizes covering every tile and remainder of the token loops, and a crossing of 64. */
const SIZES = [2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 67] as const;
/** The packed f32 kernels also: staged groups of 8–32 tokens, a second group, and ragged ones past 32. */
const PACKED_SIZES = [...SIZES, 24, 33, 40] as const;

/** An expert's whole FFN (dModel → dModel) and its first matmul (dModel → dFf), each row by row. */
function expectExpertRowsIndependent(
  k: Kernels,
  dModel: number,
  dFf: number,
  ffn: RowKernel,
  matmul: RowKernel,
  seed: number,
  sizes: readonly number[] = SIZES,
): void {
  expectRowsIndependent(k, dModel, dModel, sizes, ffn, seed);
  expectRowsIndependent(k, dModel, dFf, sizes, matmul, seed + 1);
}

/** argmaxRowsRef on one row: the in-order scan HeadStore ran in JS before argmaxRows. */
function scanRef(y: Float32Array, rows: number, scale: number): { max: number; idx: number } {
  const max = new Float32Array(1);
  const idx = new Int32Array(1);
  argmaxRowsRef(max, idx, y, 1, rows, scale);
  return { max: max[0], idx: idx[0] };
}

export function batchRowsContract(kernels: () => Kernels, q8Paths: Q8Path[]): void {
  describe("rows independent of the batch (bit for bit)", () => {
    it.each([
      [64, 24],
      [4100, 12],
      [61, 27],
      [33, 1003],
      [7, 2],
    ])("matmul (f32 head; row-outer token blocks; ragged rows) dIn=%i dOut=%i", (dIn, dOut) => {
      const k = kernels();
      const w = k.allocF32(randn(rng(dIn + dOut), dIn * dOut));
      const sizes = dIn > 1000 ? [4, 8, 13, 16, 29] : SIZES;
      expectRowsIndependent(k, dIn, dOut, sizes, (kk, out, x, n) => kk.matmul(out, x, w, n, dIn, dOut), 7);
      k.free(w);
    });

    it.each([
      [64, 24],
      [61, 27],
      [33, 1003],
      [8, 2],
    ])("matmulDense bf16 (head rows; ragged rows) dIn=%i dOut=%i", (dIn, dOut) => {
      const k = kernels();
      const w = randn(rng(dIn * 7 + dOut), dIn * dOut);
      const writer = new DenseMatrixWriter(k, { rows: dOut, cols: dIn, source: "F32", format: "bf16" });
      writer.push(new Uint8Array(w.buffer));
      const m = writer.finish();
      expectRowsIndependent(k, dIn, dOut, SIZES, (kk, out, x, n) => kk.matmulDense(m, out, x, n, 0), 9);
      k.free(m.ptr);
    });

    it.each([
      [64, 24, 32],
      [200, 27, 64],
      [40, 9, 16],
      [130, 1003, 128],
    ])("matmulDense int8-group (stage matrices; ragged rows) dIn=%i dOut=%i group=%i", (dIn, dOut, group) => {
      const k = kernels();
      const w = randn(rng(dIn * 11 + dOut), dIn * dOut);
      const writer = new DenseMatrixWriter(k, { rows: dOut, cols: dIn, source: "F32", format: "int8", group });
      writer.push(new Uint8Array(w.buffer));
      const m = writer.finish();
      const scratch = k.alloc(denseScratchBytes(m, Math.max(...SIZES)));
      expectRowsIndependent(k, dIn, dOut, SIZES, (kk, out, x, n) => kk.matmulDense(m, out, x, n, scratch), 15);
      k.free(scratch);
      k.free(m.ptr);
    });

    // 1100 and 601 inputs run past a k-chunk of the packed tiles (assembly/packed.ts KC), ragged;
    // 128 and 256 inputs are exactly 32 and 64 k-blocks (the staged path's steps with no tail), and
    // 36 / 1030 outputs leave 4 and 6 rows in the last panel.
    it.each([
      [40, 24],
      [96, 200],
      [40, 1100],
      [601, 20],
      [128, 36],
      [256, 1030],
    ])("matmulPacked and expertFfnPacked (f32 panels) %i×%i", (dModel, dFf) => {
      const k = kernels();
      const next = rng(dModel * 3 + dFf);
      const [w1, w3, w2] = [randn(next, dFf * dModel, 0.2), randn(next, dFf * dModel, 0.2), randn(next, dModel * dFf)];
      const bytes = expertPackedBytes("f32", dModel, dFf);
      const blob = k.alloc(bytes);
      packExpertF32(k.f32(blob, bytes / 4), w1, w3, w2, dModel, dFf);
      const pw = k.alloc(packedF32Bytes(dFf, dModel));
      packF32(k.f32(pw, packedF32Bytes(dFf, dModel) / 4), w1, dFf, dModel);
      const most = Math.max(...PACKED_SIZES);
      const scratch = k.alloc(
        Math.max(k.scratchBytes("ffnF32", most, dModel, dFf), k.scratchBytes("matmulPacked", most, dModel, dFf)),
      );
      // Both multi-token paths (the scalar build has only the tiles), and the same bits from both.
      const paths = k.flavor === "scalar" ? (["tiles"] as const) : (["tiles", "staged"] as const);
      const initial = k.packedF32Path;
      const outputs: number[][] = [];
      try {
        for (const path of paths) {
          expect(k.setPackedF32Path(path)).toBe(path);
          expectExpertRowsIndependent(
            k,
            dModel,
            dFf,
            (kk, out, x, n) => kk.expertFfnPacked(out, x, blob, n, dModel, dFf, scratch),
            (kk, out, x, n) => kk.matmulPacked(out, x, pw, n, dModel, dFf, scratch),
            11,
            PACKED_SIZES,
          );
          const n = 67;
          const x = k.allocF32(randn(rng(5), n * dModel, 2));
          // The FFN writes [n, dModel], the matmul [n, dFf]: room for the wider.
          const out = k.alloc(n * Math.max(dModel, dFf) * 4);
          k.expertFfnPacked(out, x, blob, n, dModel, dFf, scratch);
          const ffn = bits(k.f32(out, n * dModel));
          k.matmulPacked(out, x, pw, n, dModel, dFf, scratch);
          outputs.push([...ffn, ...bits(k.f32(out, n * dFf))]);
          k.free(out);
          k.free(x);
        }
      } finally {
        // The suite shares one Kernels: a failing pass must not leave the next tests on the other path.
        k.setPackedF32Path(initial);
      }
      for (const o of outputs.slice(1)) expect(o, "staged vs tiles").toEqual(outputs[0]);
      for (const p of [scratch, pw, blob]) k.free(p);
    });

    it.each([
      [44, 24, 32],
      [96, 202, 64],
      [33, 70, 32],
    ])("expertFfnQ4g (int4 4-token tiles, every dot form, same bits across forms) %i×%i group %i", (d, f, g) => {
      const k = kernels();
      const next = rng(d * 11 + f + g);
      const [w1, w3, w2] = [randn(next, f * d, 0.2), randn(next, f * d, 0.2), randn(next, d * f, 0.1)];
      const bytes = expertQ4gBytes(d, f, g);
      const blob = k.alloc(bytes);
      packExpertQ4g(k.u8(blob, bytes), quantizeExpertQ4g(w1, w3, w2, d, f, g), d, f);
      const scratch = k.alloc(expertQ4gScratchBytes(67, d, f, g));
      const ffn: RowKernel = (kk, out, x, n) => kk.expertFfnQ4g(out, x, blob, n, d, f, g, scratch);
      const before = k.q4DotForm;
      const outputs: Uint32Array[] = [];
      try {
        for (const form of ["simd", "i16", "dot-add"] as const) {
          const on = form !== "simd" && k.setQ4Relaxed(true, form as Q4DotForm) && k.q4DotForm === form;
          if (form !== "simd" && !on) continue; // this build or runtime has no such form
          if (form === "simd") k.setQ4Relaxed(false);
          expectRowsIndependent(k, d, d, SIZES, ffn, 17);
          const x = k.allocF32(randn(rng(19), 67 * d, 2));
          const out = k.alloc(67 * d * 4);
          ffn(k, out, x, 67);
          outputs.push(new Uint32Array(k.f32(out, 67 * d).slice().buffer));
          k.free(out);
          k.free(x);
        }
      } finally {
        if (before !== "simd") k.setQ4Relaxed(true, before);
        else k.setQ4Relaxed(false);
      }
      for (const o of outputs.slice(1)) expect(Array.from(o)).toEqual(Array.from(outputs[0]));
      k.free(scratch);
      k.free(blob);
    });

    for (const path of q8Paths) {
      describe(`int8 (${path})`, () => {
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
        it.each([
          [40, 24],
          [96, 200],
        ])("matmulQ8 and expertFfnQ8 %i×%i", (dModel, dFf) => {
          const next = rng(dModel * 5 + dFf);
          const [w1, w3, w2] = [
            randn(next, dFf * dModel, 0.2),
            randn(next, dFf * dModel, 0.2),
            randn(next, dModel * dFf),
          ];
          const q = {
            w1: quantizeRowsQ8(w1, dFf, dModel),
            w3: quantizeRowsQ8(w3, dFf, dModel),
            w2: quantizeRowsQ8(w2, dModel, dFf),
          };
          const bytes = expertPackedBytes("q8", dModel, dFf);
          const blob = k.alloc(bytes);
          packExpertQ8(k.u8(blob, bytes), q, dModel, dFf);
          const pw = k.alloc(packedQ8Bytes(dFf, dModel));
          packQ8(k.u8(pw, packedQ8Bytes(dFf, dModel)), q.w1, dFf, dModel);
          const scratch = k.alloc(
            Math.max(k.scratchBytes("ffnQ8", 67, dModel, dFf), k.scratchBytes("matmulQ8", 67, dModel, dFf)),
          );
          expectExpertRowsIndependent(
            k,
            dModel,
            dFf,
            (kk, out, x, n) => kk.expertFfnQ8(out, x, blob, n, dModel, dFf, scratch),
            (kk, out, x, n) => kk.matmulQ8(out, x, pw, n, dModel, dFf, scratch),
            13,
          );
          for (const p of [scratch, pw, blob]) k.free(p);
        });
      });
    }
  });

  describe("argmaxRows (greedy head scan in Wasm)", () => {
    const cases: [string, number[]][] = [
      ["ties go to the first", [1, 3, 3, 0, 3, -1, 2, 3, 3, 1]],
      ["-0 before +0", [-0, 0, -0, 0, 0, 0, -0, 0, 0]],
      ["NaN first is kept", [Number.NaN, 5, 6, 7, 8, 9, 10, 11, 12]],
      ["NaN in the first four is skipped", [1, Number.NaN, 0, 2, 1, 1, 1, 1, 1]],
      ["NaN later is skipped", [1, 0, 0, 0, 0, Number.NaN, 0, 0, 2, Number.NaN]],
      ["-Infinity everywhere", Array(11).fill(Number.NEGATIVE_INFINITY)],
      ["one row", [4]],
      ["three", [1, 5, 2]],
    ];
    it.each([1, 0.1, 8, 1 / 3])("matches the in-order scan on edge cases (scale %f)", (scale) => {
      const k = kernels();
      for (const [what, values] of cases) {
        const y = k.allocF32(Float32Array.from(values));
        const o = k.alloc(8);
        k.argmaxRows(o, o + 4, y, 1, values.length, scale);
        const want = scanRef(Float32Array.from(values), values.length, scale);
        expect(new Int32Array(k.u8(o + 4, 4).slice().buffer)[0], what).toBe(want.idx);
        expect(bits(k.f32(o, 1).slice()), what).toEqual(bits(Float32Array.of(want.max)));
        k.free(o);
        k.free(y);
      }
    });

    it.each([
      [5, 7, 1],
      [3, 1000, 1],
      [4, 4099, 1 / 3],
      [2, 64, 0.1],
    ])("matches the in-order scan on random rows (n=%i rows=%i scale %f)", (n, rows, scale) => {
      const k = kernels();
      const next = rng(rows + n);
      // Few distinct values (ties) and some huge ones (the f64 division rounds them to Infinity).
      const ys = Float32Array.from({ length: n * rows }, () =>
        next() < 0.01 ? 3e38 * (next() < 0.5 ? -1 : 1) : Math.round(next() * 50) / 8,
      );
      const y = k.allocF32(ys);
      const o = k.alloc(8 * n);
      k.argmaxRows(o, o + 4 * n, y, n, rows, scale);
      const idx = new Int32Array(k.u8(o + 4 * n, 4 * n).slice().buffer);
      const max = k.f32(o, n).slice();
      for (let t = 0; t < n; t++) {
        const want = scanRef(ys.subarray(t * rows, (t + 1) * rows), rows, scale);
        expect(idx[t], `t=${t}`).toBe(want.idx);
        expect(bits(max.subarray(t, t + 1)), `t=${t}`).toEqual(bits(Float32Array.of(want.max)));
      }
      k.free(o);
      k.free(y);
    });
  });
}
