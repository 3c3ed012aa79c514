/**
 * @module pack-expert.test — the Wasm expert packer (packExpertF32Into) writes the same bytes as the
 * reference JS packer (packExpertF32) on every build, for ragged shapes (dFf and dModel not
 * multiples of 4 or 8, as a sliced expert's width is), whatever the scratch size, and writes
 * nothing outside its blob.
 */
import { describe, expect, it } from "vitest";
import { loadKernels } from "../../../src/kernels/node";
import { f32Rows, packExpertF32Into, packScratchMinBytes } from "../../../src/kernels/pack-expert";
import { expertPackedBytes, packExpertF32 } from "../../../src/kernels/packing";
import { sliceRange } from "../../../src/experts/slices";
import { randn, rng } from "./helpers";

const FLAVORS = ["scalar", "simd", "relaxed"] as const;

/** [dModel, dFf] */
const SHAPES: [number, number][] = [
  [1, 1],
  [5, 3],
  [6, 10],
  [13, 7],
  [16, 24],
  [17, 33],
  [64, 130],
  [256, 2048],
];

function expert(dModel: number, dFf: number, seed: number) {
  const r = rng(seed);
  const w1 = randn(r, dFf * dModel);
  const w3 = randn(r, dFf * dModel);
  const w2 = randn(r, dModel * dFf);
  // Values whose bits a float round trip could change or a sign that zero-fill would hide.
  w1[0] = -0;
  w3[w3.length - 1] = Number.POSITIVE_INFINITY;
  w2[w2.length >> 1] = -1e-40; // subnormal
  return { w1, w3, w2 };
}

/** The matrices as packExpertF32Into takes them. */
function rows(w: { w1: Float32Array; w3: Float32Array; w2: Float32Array }, dModel: number, dFf: number) {
  return { w1: f32Rows(w.w1, dModel), w3: f32Rows(w.w3, dModel), w2: f32Rows(w.w2, dFf) };
}

function reference(w: ReturnType<typeof expert>, dModel: number, dFf: number): Uint8Array {
  const bytes = expertPackedBytes("f32", dModel, dFf);
  const dst = new Float32Array(bytes / 4).fill(Number.NaN);
  packExpertF32(dst, w.w1, w.w3, w.w2, dModel, dFf);
  return new Uint8Array(dst.buffer);
}

describe.each(FLAVORS)("packExpertF32Into (%s build)", (flavor) => {
  it.each(SHAPES)("dModel %i, dFf %i: the reference packer's bytes, with any scratch size", (dModel, dFf) => {
    const k = loadKernels(flavor);
    const w = expert(dModel, dFf, dModel * 1000 + dFf);
    const want = reference(w, dModel, dFf);
    const min = packScratchMinBytes(dModel, dFf);
    for (const scratchBytes of [min, 3 * min + 4, 64 * min]) {
      const bytes = expertPackedBytes("f32", dModel, dFf);
      const blob = k.alloc(bytes);
      const guard = k.alloc(64);
      const scratch = k.alloc(scratchBytes);
      k.u8(blob, bytes).fill(0xab); // memory as a freed blob leaves it
      k.u8(guard, 64).fill(0x5c);
      packExpertF32Into(k, blob, scratch, scratchBytes, rows(w, dModel, dFf), dModel, dFf);
      expect(Buffer.from(k.u8(blob, bytes)).equals(Buffer.from(want)), `scratch ${scratchBytes} B`).toBe(true);
      expect(k.u8(guard, 64).every((b) => b === 0x5c)).toBe(true);
      k.free(scratch);
      k.free(guard);
      k.free(blob);
    }
  });

  it("each slice of a sliced expert packs as the reference packs it", () => {
    const k = loadKernels(flavor);
    const [dModel, dFf, slices] = [24, 70, 3]; // slice widths 24, 23, 23
    const full = expert(dModel, dFf, 7);
    for (let s = 0; s < slices; s++) {
      const [c0, c1] = sliceRange(dFf, slices, s);
      const width = c1 - c0;
      const w1 = full.w1.slice(c0 * dModel, c1 * dModel);
      const w3 = full.w3.slice(c0 * dModel, c1 * dModel);
      const w2 = new Float32Array(dModel * width);
      for (let r = 0; r < dModel; r++) w2.set(full.w2.subarray(r * dFf + c0, r * dFf + c1), r * width);
      const want = reference({ w1, w3, w2 }, dModel, width);
      const bytes = expertPackedBytes("f32", dModel, width);
      const blob = k.alloc(bytes);
      const scratchBytes = packScratchMinBytes(dModel, width) * 5;
      const scratch = k.alloc(scratchBytes);
      packExpertF32Into(k, blob, scratch, scratchBytes, rows({ w1, w3, w2 }, dModel, width), dModel, width);
      expect(Buffer.from(k.u8(blob, bytes)).equals(Buffer.from(want)), `slice ${s} [${c0}, ${c1})`).toBe(true);
      k.free(scratch);
      k.free(blob);
    }
  });

  it("refuses a scratch smaller than one row", () => {
    const k = loadKernels(flavor);
    const w = expert(8, 12, 1);
    const blob = k.alloc(expertPackedBytes("f32", 8, 12));
    const scratch = k.alloc(16);
    expect(() => packExpertF32Into(k, blob, scratch, 16, rows(w, 8, 12), 8, 12)).toThrow(/less than one row/);
  });
});
