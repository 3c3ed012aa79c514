/**
 * @module ceiling-probes.test — the compute-ceiling probes bench:kernels times (assembly/stream.ts
 * int8Peak, assembly/q8.ts q8TilePeak) do the integer work they are credited with: their returned
 * sums equal the same dot products computed in JS, on every dot form the build has.
 */
import { describe, expect, it } from "vitest";
import { loadKernels } from "../../../src/kernels/node";
import { nodeKernels } from "./node-source";

/** Bytes the probes read, 7-bit-safe (the relaxed dot's second operand is taken unsigned 7-bit). */
function fill(a: Uint8Array, mul: number, add: number): void {
  for (let i = 0; i < a.length; i++) a[i] = (i * mul + add) & 0x3f;
}

describe("int8 ceiling probes", () => {
  const flavors = (["simd", "relaxed"] as const).filter((f) => nodeKernels.supports(f));

  it.each(flavors)("int8Peak sums 8 chains of exact dots (%s build)", (flavor) => {
    const k = loadKernels(flavor);
    const w = k.alloc(144);
    const bytes = k.u8(w, 144);
    fill(bytes, 29, 7);
    const i16 = new Int16Array(bytes.buffer, bytes.byteOffset, 72);
    const iters = 5;
    // Lane 0 of Σ over the 8 chains: form 0 pairs i16 lanes 0–1, the i8 forms bytes 0–3 of each vector.
    let plain = 0;
    let i8 = 0;
    for (let c = 0; c < 8; c++) {
      for (let j = 0; j < 2; j++) plain += i16[c * 8 + j] * i16[64 + j];
      for (let j = 0; j < 4; j++) i8 += bytes[c * 16 + j] * bytes[128 + j];
    }
    // i32 lanes wrap (the i16 operands here are up to 2^14): compare modulo 2^32.
    expect(k.int8Peak(0, iters, w)).toBe((iters * plain) | 0);
    if (k.relaxedDotAvailable) {
      expect(k.int8Peak(1, iters, w)).toBe(iters * i8);
      expect(k.int8Peak(2, iters, w)).toBe(iters * i8);
    } else expect(k.int8Peak(2, iters, w)).toBe(0);
  });

  it.each(flavors)("q8TilePeak runs the batch tile: token 0 · row 0 on every int8 path (%s build)", (flavor) => {
    const k = loadKernels(flavor);
    const kBlocks = 4;
    const xqRow = 32 * kBlocks;
    const xq = k.alloc(4 * xqRow);
    const panel = k.alloc(128 * kBlocks);
    const p = k.u8(panel, 128 * kBlocks);
    fill(p, 37, 11);
    const x = k.u8(xq, 4 * xqRow);
    fill(x, 13, 5);
    const xi16 = new Int16Array(x.buffer, x.byteOffset, 2 * xqRow);
    // Row 0's weights are bytes 0–15 of each 128-byte k-block; token 0's activations start at xq:
    // i16 on the plain path, bytes on the relaxed ones (the hi digits in hi/lo mode).
    let plain = 0;
    let bytesSum = 0;
    for (let kb = 0; kb < kBlocks; kb++) {
      for (let c = 0; c < 16; c++) {
        plain += p[kb * 128 + c] * xi16[kb * 16 + c];
        bytesSum += p[kb * 128 + c] * x[kb * 16 + c];
      }
    }
    for (const path of k.q8Paths) {
      k.setQ8Path(path);
      expect(k.q8TilePeak(xq, xqRow, panel, kBlocks, 3), path).toBe(
        (3 * (path === "dot_i16x8" ? plain : bytesSum)) | 0,
      );
    }
  });
});
