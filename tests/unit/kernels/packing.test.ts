/**
 * @module packing.test — the packed layouts (where each weight lands), int8 quantization, and the
 * relaxed-SIMD probe's verdicts (including a simulated swapped-operand dot, the V8 bug it guards
 * against) and the build fallback.
 */
import { describe, expect, it } from "vitest";
import { Kernels, relaxedDotAgrees, relaxedMaddAgrees } from "../../../src/kernels/index";
import { kernelModule, loadKernels } from "../../../src/kernels/node";
import {
  dequantizeQ8,
  expertPackedBytes,
  nearestEven,
  packExpertF32,
  packExpertQ8,
  packF32,
  packQ8,
  packedF32Bytes,
  packedQ8Bytes,
  quantizeRowsQ8,
} from "../../../src/kernels/packing";
import { randn, rng } from "./helpers";

describe("packing", () => {
  it("packF32 interleaves 8 rows in k-blocks of 4 and zero-pads rows and columns", () => {
    const [rows, cols] = [10, 6];
    const w = Float32Array.from({ length: rows * cols }, (_, i) => i + 1);
    const dst = new Float32Array(packedF32Bytes(rows, cols) / 4).fill(NaN);
    packF32(dst, w, rows, cols);
    expect(dst.length).toBe(16 * 8); // 2 panels × 2 k-blocks × 8 rows × 4
    const kb = 2;
    for (let j = 0; j < 16; j++) {
      for (let c = 0; c < 8; c++) {
        const at = (j >> 3) * kb * 32 + (c >> 2) * 32 + (j & 7) * 4 + (c & 3);
        expect(dst[at], `row ${j} col ${c}`).toBe(j < rows && c < cols ? w[j * cols + c] : 0);
      }
    }
  });

  it("packQ8 interleaves 16 columns per k-block and appends scales and row sums", () => {
    const [rows, cols] = [3, 20];
    const q = Int8Array.from({ length: rows * cols }, (_, i) => ((i * 7) % 255) - 127);
    const scales = Float32Array.of(0.5, 0.25, 2);
    const dst = new Uint8Array(packedQ8Bytes(rows, cols)).fill(0xee);
    packQ8(dst, { q, scales }, rows, cols);
    const bytes = new Int8Array(dst.buffer);
    for (let j = 0; j < 8; j++) {
      for (let c = 0; c < 32; c++) {
        expect(bytes[(c >> 4) * 128 + j * 16 + (c & 15)]).toBe(j < rows && c < cols ? q[j * cols + c] : 0);
      }
    }
    const tail = new DataView(dst.buffer, 8 * 32);
    for (let j = 0; j < 8; j++) {
      expect(tail.getFloat32(4 * j, true)).toBe(j < rows ? scales[j] : 0);
      let sum = 0;
      for (let c = 0; c < cols && j < rows; c++) sum += q[j * cols + c];
      expect(tail.getInt32(32 + 4 * j, true)).toBe(sum);
    }
  });

  it("expert blobs put gate rows 0–3 and up rows 4–7 of the same outputs in each panel", () => {
    const [dModel, dFf] = [4, 8];
    const w1 = Float32Array.from({ length: dFf * dModel }, (_, i) => 1000 + i);
    const w3 = Float32Array.from({ length: dFf * dModel }, (_, i) => 2000 + i);
    const w2 = new Float32Array(dModel * dFf);
    const dst = new Float32Array(expertPackedBytes("f32", dModel, dFf) / 4);
    packExpertF32(dst, w1, w3, w2, dModel, dFf);
    // Panel 1 covers outputs 4..7: its row 0 is w1 row 4, its row 4 is w3 row 4.
    expect(dst[32 + 0 * 4]).toBe(w1[4 * dModel]);
    expect(dst[32 + 4 * 4]).toBe(w3[4 * dModel]);
    const q = {
      w1: quantizeRowsQ8(w1, dFf, dModel),
      w3: quantizeRowsQ8(w3, dFf, dModel),
      w2: quantizeRowsQ8(w2, dModel, dFf),
    };
    const qb = new Uint8Array(expertPackedBytes("q8", dModel, dFf));
    packExpertQ8(qb, q, dModel, dFf);
    expect(new Int8Array(qb.buffer)[128 + 4 * 16]).toBe(q.w3.q[4 * dModel]);
  });

  it("int8 experts take about a quarter of the f32 bytes", () => {
    for (const [dModel, dFf] of [
      [512, 1408],
      [1024, 2816],
      [2048, 1408],
      [256, 2048],
    ]) {
      const f32 = expertPackedBytes("f32", dModel, dFf);
      expect(f32).toBe(3 * dModel * dFf * 4);
      const ratio = expertPackedBytes("q8", dModel, dFf) / f32;
      expect(ratio).toBeGreaterThan(0.25);
      expect(ratio).toBeLessThan(0.26); // + 8 bytes a row (scale, row sum)
    }
  });

  it("quantizeRowsQ8 with absmax scales is symmetric per row, within half a step, and maps a zero row to zeros", () => {
    const [rows, cols] = [17, 33];
    const w = randn(rng(4), rows * cols, 2);
    w.fill(0, 5 * cols, 6 * cols);
    const m = quantizeRowsQ8(w, rows, cols, [127]);
    const back = dequantizeQ8(m, rows, cols);
    for (let j = 0; j < rows; j++) {
      let amax = 0;
      for (let k = 0; k < cols; k++) amax = Math.max(amax, Math.abs(w[j * cols + k]));
      expect(m.scales[j]).toBeCloseTo(amax / 127, 7);
      for (let k = 0; k < cols; k++) {
        expect(Math.abs(m.q[j * cols + k])).toBeLessThanOrEqual(127);
        expect(Math.abs(back[j * cols + k] - w[j * cols + k])).toBeLessThanOrEqual(m.scales[j] / 2 + 1e-7);
      }
    }
    expect(m.scales[5]).toBe(0);
    expect(Array.from(m.q.subarray(5 * cols, 6 * cols)).every((v) => v === 0)).toBe(true);
  });

  it("nearestEven rounds halves to even like f32x4.nearest", () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, -2.6].map(nearestEven)).toEqual([0, 2, 2, -0, -2, -2, 2, -3]);
  });
});

describe("relaxed SIMD probe", () => {
  const exactDot = (a: Int8Array, b: Int8Array, c: Int32Array) =>
    Int32Array.from(
      c,
      (v, l) =>
        v +
        a[4 * l] * b[4 * l] +
        a[4 * l + 1] * b[4 * l + 1] +
        a[4 * l + 2] * b[4 * l + 2] +
        a[4 * l + 3] * b[4 * l + 3],
    );

  it("accepts an exact dot and rejects one that reads the signed operand as unsigned", () => {
    expect(relaxedDotAgrees(exactDot)).toBe(true);
    const swapped = (a: Int8Array, b: Int8Array, c: Int32Array) =>
      exactDot(
        Int8Array.from(a, (v) => v & 0x7f),
        b,
        c,
      ); // wrong for a < 0
    expect(relaxedDotAgrees(swapped)).toBe(false);
    expect(relaxedDotAgrees((a, b, c) => exactDot(a, b, c).map((v, l) => (l === 3 ? v + 1 : v)))).toBe(false);
  });

  it("accepts fused or twice-rounded multiply-add and rejects a wrong one", () => {
    expect(relaxedMaddAgrees((a, b, c) => Float32Array.from(a, (v, l) => v * b[l] + c[l]))).toBe(true);
    expect(relaxedMaddAgrees((a, b, c) => Float32Array.from(a, (v, l) => Math.fround(v * b[l]) + c[l]))).toBe(true);
    expect(relaxedMaddAgrees((a, b, c) => Float32Array.from(a, (v, l) => v * b[l] - c[l]))).toBe(false);
  });

  it("picks relaxed when it works here, and falls back to simd when relaxed cannot be had", () => {
    let relaxedWorks = true;
    try {
      kernelModule("relaxed");
    } catch {
      relaxedWorks = false;
    }
    expect(loadKernels("best").flavor).toBe(relaxedWorks ? "relaxed" : "simd");
    const k = Kernels.pick({
      relaxed: () => {
        throw new WebAssembly.CompileError("no relaxed SIMD");
      },
      simd: () => kernelModule("simd"),
    });
    expect(k.flavor).toBe("simd");
    expect(k.q8Path).toBe("dot_i16x8");
    expect(k.setQ8Path("relaxed_dot")).toBe("dot_i16x8"); // not available in the simd build
  });

  it("a relaxed instance reports which int8 path its probe allowed", () => {
    let k: Kernels;
    try {
      k = loadKernels("relaxed");
    } catch {
      return; // no relaxed SIMD in this runtime: covered by the fallback test
    }
    expect(k.q8Paths[0]).toBe("dot_i16x8");
    expect(k.q8Paths).toContain(k.q8Path);
    expect(k.setQ8Path("dot_i16x8")).toBe("dot_i16x8");
    for (const p of ["relaxed_dot", "relaxed_dot_i16", "relaxed_dot_7bit", "relaxed_dot_i16_7bit"] as const) {
      const got = k.setQ8Path(p);
      if (k.q8Paths.includes(p)) expect(got).toBe(p);
      else expect(k.q8Paths).toContain(got); // the other form at the same precision, or dot_i16x8
    }
  });
});
