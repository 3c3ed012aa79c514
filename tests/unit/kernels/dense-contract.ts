/**
 * @module dense-contract — the dense stage formats (assembly/dense.ts) and their streaming loader
 * (src/kernels/dense.ts), part of the one contract suite (contract.ts): every build, Node and
 * workerd.
 *
 * Stated error bounds (per output y_tj, ŵ = dequantized weights, f64 reference):
 *  - f32:  as the plain matmul, ≤ 1e-5·√dIn relative.
 *  - bf16: vs x · ŵᵀ in f64: ≤ 2⁻²³·(dIn/4 + 8)·Σ_k |ŵ_jk·x_tk| (f32 accumulation in 4 lanes).
 *  - int8: vs matmulQ8gRef (same 16-bit activations, exact integer group sums, f64 rescale):
 *    ≤ 2⁻²²·(groups + 4)·A_tj with A = s_x·Σ_g scale_g·Σ_k |q·xq|; vs x · ŵᵀ in f64 (activation
 *    rounding only): ≤ (s_x / 2)·Σ_k |ŵ_jk| + 2⁻²²·(groups + 4)·max|x_t|·Σ_k |ŵ_jk|,
 *    s_x = max|x_t| / 32767.
 * Dequantization is exact: a gathered row equals f32(scale · q) (int8) or the bf16 value widened.
 */
import { describe, expect, it } from "vitest";
import { MemoryBudgetError, WASM_MAX_BYTES, type KernelFlavor, type Kernels } from "../../../src/kernels/index";
import {
  bf16ToF32,
  dequantizeQ8g,
  denseMatrixBytes,
  f32ToBf16,
  packQ8g,
  quantizeQ8g,
  type DenseFormat,
  type DenseSourceDType,
} from "../../../src/kernels/dense-format";
import {
  denseGather,
  denseMatmul,
  DenseMatrixWriter,
  f16ToF32,
  freeDense,
  loadDenseMatrix,
  rangeChunks,
} from "../../../src/kernels/dense";
import { matmulBf16Ref, matmulQ8gRef, matmulRef } from "../../../src/kernels/reference";
import { expectClose, randn, rng } from "./helpers";

/** [n, dIn, dOut]: decode, odd token counts (3, 17) and prefill (64); dIn off every group and off
 * the 8/16-value vectors; dOut off the 4-row block. */
const SHAPES = [
  [1, 1, 1],
  [1, 17, 5],
  [3, 63, 13],
  [1, 100, 9],
  [17, 129, 7],
  [3, 257, 33],
  [64, 96, 6],
  [1, 1024, 16],
  [64, 200, 19],
] as const;
const GROUPS = [16, 32, 64, 128, 512];
const EPS = 2 ** -23;

/** Little-endian bytes of w in a checkpoint dtype (F16 via a plain conversion, exact for the test
 * values' magnitudes up to its rounding: the loader's input is these bytes, whatever they hold). */
export function encodeSource(w: Float32Array, dtype: DenseSourceDType): Uint8Array {
  if (dtype === "F32") return new Uint8Array(w.buffer.slice(w.byteOffset, w.byteOffset + w.byteLength));
  const out = new Uint16Array(w.length);
  for (let i = 0; i < w.length; i++) out[i] = dtype === "BF16" ? f32ToBf16(w[i]) : f32ToF16(w[i]);
  return new Uint8Array(out.buffer);
}

/** f32 → f16 bits, truncating (the test only needs some valid f16 bit patterns). */
function f32ToF16(v: number): number {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = ((u >>> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return sign;
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | ((u >>> 13) & 0x3ff);
}

/** Splits bytes into chunks of the given sizes, cycling through them. */
function* chunked(bytes: Uint8Array, sizes: readonly number[]): Generator<Uint8Array> {
  let i = 0;
  for (let at = 0; at < bytes.length; i++) {
    const len = Math.min(sizes[i % sizes.length], bytes.length - at);
    yield bytes.slice(at, at + len);
    at += len;
  }
}

function dequantized(w: Float32Array, rows: number, cols: number, format: DenseFormat, group: number): Float32Array {
  if (format === "f32") return w;
  if (format === "bf16") return w.map((v) => bf16ToF32(f32ToBf16(v)));
  return dequantizeQ8g(quantizeQ8g(w, rows, cols, group));
}

/** Load w [rows, cols] from its F32 bytes in one chunk. */
function load(k: Kernels, w: Float32Array, rows: number, cols: number, format: DenseFormat, group?: number) {
  return loadDenseMatrix(k, [encodeSource(w, "F32")], { rows, cols, source: "F32", format, group });
}

export function denseKernelContract(
  flavor: KernelFlavor,
  kernels: () => Kernels,
  fresh: (maxBytes: number) => Kernels,
): void {
  describe("dense stage matrices (int8 groups, bf16, f32)", () => {
    const BOUND_F32_BF16 = "bf16 and f32 match the f64 reference within the stated bound for n=%i dIn=%i dOut=%i";
    it.each(SHAPES)(BOUND_F32_BF16, async (n, dIn, dOut) => {
      const k = kernels();
      const next = rng(21000 + n * 1000 + dIn + dOut);
      const x = randn(next, n * dIn, 2);
      const w = randn(next, dOut * dIn, 1 / Math.sqrt(dIn));
      for (const format of ["f32", "bf16"] as const) {
        const m = await load(k, w, dOut, dIn, format);
        const got = denseMatmul(k, m, x, n);
        freeDense(k, m);
        const wq = dequantized(w, dOut, dIn, format, 0);
        const want = new Float32Array(n * dOut);
        if (format === "f32") {
          matmulRef(want, x, w, n, dIn, dOut);
          expectClose(got, want, 1e-5 * Math.sqrt(dIn), `f32 n=${n} dIn=${dIn} dOut=${dOut}`);
          continue;
        }
        matmulBf16Ref(want, x, Uint16Array.from(w, f32ToBf16), n, dIn, dOut);
        for (let t = 0; t < n; t++) {
          for (let j = 0; j < dOut; j++) {
            let mag = 0;
            for (let i = 0; i < dIn; i++) mag += Math.abs(wq[j * dIn + i] * x[t * dIn + i]);
            const err = Math.abs(got[t * dOut + j] - want[t * dOut + j]);
            expect(err, `bf16 t=${t} j=${j}`).toBeLessThanOrEqual(EPS * (dIn / 4 + 8) * mag + 1e-30);
          }
        }
      }
    });

    const BOUND_INT8 = "int8 matches its reference and the stated bound vs f64 for n=%i dIn=%i dOut=%i";
    it.each(SHAPES)(BOUND_INT8, async (n, dIn, dOut) => {
      const k = kernels();
      const next = rng(22000 + n * 1000 + dIn + dOut);
      const x = randn(next, n * dIn, 3);
      const w = randn(next, dOut * dIn, 1 / Math.sqrt(dIn));
      for (const group of GROUPS) {
        const m = await load(k, w, dOut, dIn, "int8", group);
        const got = denseMatmul(k, m, x, n);
        freeDense(k, m);
        const q = quantizeQ8g(w, dOut, dIn, group);
        const groups = q.scales.length / dOut;
        const want = new Float32Array(n * dOut);
        const mag = matmulQ8gRef(want, x, q, n, dIn, dOut);
        const wq = dequantizeQ8g(q);
        const exact = new Float32Array(n * dOut);
        matmulRef(exact, x, wq, n, dIn, dOut);
        for (let t = 0; t < n; t++) {
          let xMax = 0;
          for (let i = 0; i < dIn; i++) xMax = Math.max(xMax, Math.abs(x[t * dIn + i]));
          const sx = xMax / 32767;
          for (let j = 0; j < dOut; j++) {
            const at = `group=${group} t=${t} j=${j}`;
            const y = got[t * dOut + j];
            const round = 2 * EPS * (groups + 4);
            const vsRef = Math.abs(y - want[t * dOut + j]);
            expect(vsRef, `vs int8 ref ${at}`).toBeLessThanOrEqual(round * mag[t * dOut + j] + 1e-30);
            let w1 = 0;
            for (let i = 0; i < dIn; i++) w1 += Math.abs(wq[j * dIn + i]);
            const bound = (sx / 2) * w1 + round * xMax * w1;
            expect(Math.abs(y - exact[t * dOut + j]), `vs f64 ${at}`).toBeLessThanOrEqual(bound + 1e-30);
          }
        }
      }
    });

    it("gathers rows exactly as dequantized (int8 f32(scale·q), bf16 widened, f32 as is)", async () => {
      const k = kernels();
      const [rows, cols] = [13, 75];
      const w = randn(rng(23), rows * cols, 0.7);
      const ids = [0, 12, 5, 5, 7];
      for (const [format, group] of [
        ["int8", 32],
        ["int8", 64],
        ["bf16", 0],
        ["f32", 0],
      ] as const) {
        const m = await load(k, w, rows, cols, format, group || undefined);
        const got = denseGather(k, m, ids);
        freeDense(k, m);
        const wq = dequantized(w, rows, cols, format, group);
        const want = new Float32Array(ids.length * cols);
        ids.forEach((id, c) => want.set(wq.subarray(id * cols, (id + 1) * cols), c * cols));
        expect(Array.from(got), `${format} ${group}`).toEqual(Array.from(want));
      }
      const m = await loadDenseMatrix(k, [encodeSource(w, "F32")], { rows, cols, source: "F32", format: "bf16" });
      expect(() => denseGather(k, m, [rows])).toThrow(RangeError);
      freeDense(k, m);
    });

    it("int8 gives exact zeros for a zero token; bf16 never reads x past dIn", async () => {
      const k = kernels();
      const [rows, cols] = [9, 21];
      const w = randn(rng(24), rows * cols);
      const m8 = await load(k, w, rows, cols, "int8", 16);
      const y = denseMatmul(k, m8, new Float32Array(2 * cols).fill(5, cols), 2);
      expect(Array.from(y.subarray(0, rows)).every((v) => v === 0)).toBe(true);
      expect(Array.from(y.subarray(rows)).every((v) => Number.isFinite(v) && v !== 0)).toBe(true);
      freeDense(k, m8);
      const mb = await loadDenseMatrix(k, [encodeSource(w, "F32")], { rows, cols, source: "F32", format: "bf16" });
      const px = k.alloc((cols + 8) * 4);
      k.f32(px, cols + 8).fill(NaN);
      const x = randn(rng(25), cols);
      k.f32(px, cols).set(x);
      const out = k.alloc(rows * 4);
      k.matmulDense(mb, out, px, 1, 0);
      const want = new Float32Array(rows);
      matmulBf16Ref(want, x, Uint16Array.from(w, f32ToBf16), 1, cols, rows);
      expectClose(k.f32(out, rows).slice(), want, 1e-5, "bf16 tail");
      for (const p of [out, px]) k.free(p);
      freeDense(k, mb);
    });

    const STREAMS = "streams %s chunks of odd sizes into the same bytes as a one-shot load";
    it.each(["F32", "BF16", "F16"] as const)(STREAMS, async (source) => {
      const k = kernels();
      const [rows, cols] = [11, 150];
      const w = randn(rng(26), rows * cols, 0.3);
      const bytes = encodeSource(w, source);
      for (const [format, group] of [
        ["int8", 64],
        ["int8", 32],
        ["bf16", 0],
        ["f32", 0],
      ] as const) {
        const opts = { rows, cols, source, format, group: group || undefined };
        const one = await loadDenseMatrix(k, [bytes], opts);
        const oneBytes = k.u8(one.ptr, one.bytes).slice();
        freeDense(k, one);
        for (const sizes of [[1], [3, 5, 7], [4093], [2, 601, 1, 1, 299]]) {
          const before = k.bytesInUse;
          const w2 = new DenseMatrixWriter(k, opts);
          expect(k.bytesInUse - before).toBe(denseMatrixBytes(rows, cols, format, group || undefined));
          expect(w2.jsScratchBytes).toBe(4 * cols + 4);
          for (const c of chunked(bytes, sizes)) w2.push(c);
          const m = w2.finish();
          expect(m.bytes).toBe(k.bytesInUse - before);
          expect(k.u8(m.ptr, m.bytes).slice(), `${format} ${group} chunks ${sizes.join(",")}`).toEqual(oneBytes);
          freeDense(k, m);
        }
        // One-shot conversion of the decoded values gives the same bytes.
        const decoded = new Float32Array(rows * cols);
        const view = new DataView(bytes.buffer);
        for (let i = 0; i < decoded.length; i++) {
          if (source === "F32") decoded[i] = view.getFloat32(4 * i, true);
          else if (source === "BF16") decoded[i] = bf16ToF32(view.getUint16(2 * i, true));
          else decoded[i] = f16ToF32(view.getUint16(2 * i, true));
        }
        if (format === "int8") {
          const want = new Uint8Array(denseMatrixBytes(rows, cols, "int8", group));
          packQ8g(want, quantizeQ8g(decoded, rows, cols, group));
          expect(oneBytes).toEqual(want);
        } else if (format === "f32") {
          expect(new Float32Array(oneBytes.buffer, 0, rows * cols)).toEqual(decoded);
        } else if (source === "BF16") {
          // bf16 source → bf16 format: bit for bit (in the kernel's slot order).
          const mb = await loadDenseMatrix(k, [bytes], opts);
          const got = denseGather(k, mb, [0]);
          freeDense(k, mb);
          expect(Uint16Array.from(got, f32ToBf16)).toEqual(new Uint16Array(bytes.buffer, 0, cols));
        }
      }
    });

    it("loads from ranged reads of a file (rangeChunks), one read in flight, none past the tensor", async () => {
      const k = kernels();
      const [rows, cols] = [7, 90];
      const w = randn(rng(30), rows * cols);
      const tensor = encodeSource(w, "BF16");
      const file = new Uint8Array(100 + tensor.length + 50);
      file.set(tensor, 100);
      const reads: [number, number][] = [];
      const reader = {
        read: async (offset: number, length: number) => {
          reads.push([offset, length]);
          return file.slice(offset, offset + length);
        },
      };
      const opts = { rows, cols, source: "BF16", format: "int8", group: 32 } as const;
      const m = await loadDenseMatrix(k, rangeChunks(reader, 100, tensor.length, 333), opts);
      const one = await loadDenseMatrix(k, [tensor], opts);
      expect(k.u8(m.ptr, m.bytes).slice()).toEqual(k.u8(one.ptr, one.bytes).slice());
      expect(reads[0]).toEqual([100, 333]);
      expect(reads.reduce((a, [, len]) => a + len, 0)).toBe(tensor.length);
      expect(Math.max(...reads.map(([o, len]) => o + len))).toBe(100 + tensor.length);
      freeDense(k, m);
      freeDense(k, one);
    });

    it("decodes f16 and rounds bf16 exactly", () => {
      const f16 = [
        [0x3c00, 1],
        [0xc000, -2],
        [0x0001, 2 ** -24],
        [0x03ff, 1023 * 2 ** -24],
        [0x7bff, 65504],
        [0x7c00, Infinity],
      ];
      for (const [bits, v] of f16) expect(f16ToF32(bits)).toBe(v);
      expect(f16ToF32(0x7e00)).toBeNaN();
      // 1 + 2⁻⁸ is halfway between two bf16 values: ties to even (down); a hair above rounds up.
      expect(f32ToBf16(1 + 2 ** -8)).toBe(0x3f80);
      expect(f32ToBf16(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
      expect(f32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82);
      expect(Number.isNaN(bf16ToF32(f32ToBf16(NaN)))).toBe(true);
    });

    it("rejects too many or too few bytes and frees the matrix", async () => {
      const k = kernels();
      const before = k.bytesInUse;
      const bytes = encodeSource(randn(rng(27), 4 * 10), "F32");
      const opts = { rows: 4, cols: 10, source: "F32", format: "int8", group: 16 } as const;
      const extra = new Uint8Array(bytes.length + 1);
      extra.set(bytes);
      await expect(loadDenseMatrix(k, chunked(extra, [7]), opts)).rejects.toThrow(RangeError);
      const short = [bytes.subarray(0, bytes.length - 2)];
      await expect(loadDenseMatrix(k, short, opts)).rejects.toThrow(/only 158 were pushed/);
      expect(k.bytesInUse).toBe(before);
      expect(() => new DenseMatrixWriter(k, { ...opts, group: 24 })).toThrow(/group/);
      expect(() => new DenseMatrixWriter(k, { ...opts, rows: 0 })).toThrow(/rows/);
    });

    it("a matrix past the budget is a catchable MemoryBudgetError before any byte is read", async () => {
      const small = fresh(4 * 1024 * 1024);
      let read = 0;
      async function* source(): AsyncGenerator<Uint8Array> {
        read++;
        yield new Uint8Array(16);
      }
      const opts = { rows: 2048, cols: 2048, source: "BF16", format: "bf16" } as const;
      await expect(loadDenseMatrix(small, source(), opts)).rejects.toThrow(MemoryBudgetError);
      expect(read).toBe(0);
      expect(small.bytesInUse).toBe(0);
      const big = { rows: 16384, cols: 8192, source: "F32", format: "int8" } as const;
      expect(denseMatrixBytes(big.rows, big.cols, "int8")).toBeGreaterThan(WASM_MAX_BYTES);
      expect(() => new DenseMatrixWriter(kernels(), big)).toThrow(MemoryBudgetError);
      // Still usable after the refusal.
      const w = randn(rng(28), 64 * 32);
      const m = await load(small, w, 64, 32, "int8");
      expect(denseMatmul(small, m, randn(rng(29), 32), 1).every(Number.isFinite)).toBe(true);
      expect(flavor).toBe(small.flavor);
    });
  });
}
