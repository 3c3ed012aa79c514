/**
 * @module contract — the one kernel test suite, run against every build (scalar.test.ts,
 * simd.test.ts, relaxed.test.ts): each Wasm op against src/kernels/reference.ts on random shapes
 * that include sizes off the vector widths (1, 3, 17, 63, 95, 257), the packed f32 and int8 expert
 * kernels (every int8 dot path the build has) with their stated error bounds, plus the allocator's
 * contract.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { Kernels, MemoryBudgetError, WASM_MAX_BYTES, type KernelFlavor } from "../../../src/kernels/index";
import {
  attentionRef,
  expertFfnRef,
  matmulRef,
  rmsnormRef,
  ropeRef,
  siluMulRef,
  softmaxRef,
} from "../../../src/kernels/reference";
import { expectClose, GUARD, guarded, randn, rng, type KernelSource } from "./helpers";
import { denseKernelContract } from "./dense-contract";
import { expertQ8gContract } from "./expert-q8g-contract";
import { expertQ4gContract } from "./expert-q4g-contract";
import { packedKernelContract } from "./packed-contract";
import { batchRowsContract } from "./batch-rows-contract";

export { expectClose, randn, rng };

const D_INS = [1, 3, 17, 63, 64, 95, 96, 257];
const NS = [1, 2, 3, 4, 5, 7, 16];
const D_OUTS = [1, 2, 3, 5, 8, 13, 64];
/** The f32 matmul on random x[n, dIn] and W[dOut, dIn] (entries of scale `wScale`) vs matmulRef. */
function checkMatmul(k: Kernels, next: () => number, n: number, dIn: number, dOut: number, wScale: number): void {
  const x = randn(next, n * dIn);
  const w = randn(next, dOut * dIn, wScale);
  const want = new Float32Array(n * dOut);
  matmulRef(want, x, w, n, dIn, dOut);
  const px = k.allocF32(x);
  const pw = k.allocF32(w);
  const out = guarded(k, n * dOut);
  k.matmul(out.ptr, px, pw, n, dIn, dOut);
  expectClose(out.read(), want, 1e-5 * Math.sqrt(dIn), `n=${n} dIn=${dIn} dOut=${dOut}`);
  k.free(out.ptr - GUARD * 4);
  k.free(pw);
  k.free(px);
}

/** The suite for one build; `src` loads kernels in the runtime at hand (Node: src/kernels/node.ts,
 * workerd: src/kernels/workers.ts — see workerd/). */
export function kernelContract(flavor: KernelFlavor, src: KernelSource): void {
  const loadKernels = (f: KernelFlavor, opts?: { maxBytes?: number }) => src.load(f, opts);
  const kernelModule = (f: KernelFlavor) => src.module(f);
  describe(`kernels: ${flavor} build`, () => {
    let k: Kernels;
    beforeAll(() => {
      k = loadKernels(flavor);
    });

    const q8Paths = src.supports(flavor) ? src.load(flavor).q8Paths : [];
    packedKernelContract(flavor, () => k, q8Paths);
    batchRowsContract(() => k, q8Paths);
    denseKernelContract(
      flavor,
      () => k,
      (maxBytes) => loadKernels(flavor, { maxBytes }),
    );
    expertQ8gContract(() => k);
    expertQ4gContract(() => k);

    it("reports its flavor and budget", () => {
      expect(k.flavor).toBe(flavor);
      expect(k.maxBytes).toBe(WASM_MAX_BYTES);
      expect(WASM_MAX_BYTES).toBe(1664 * 65536);
    });

    describe("matmul", () => {
      it.each(D_INS)("matches the reference for dIn = %i over n × dOut", (dIn) => {
        const next = rng(1000 + dIn);
        for (const n of NS) {
          for (const dOut of D_OUTS) {
            checkMatmul(k, next, n, dIn, dOut, 1);
          }
        }
      });

      it("handles decode-sized shapes (n = 1, 33, 64; dIn 256, 1000; dOut 2048)", () => {
        const next = rng(7);
        for (const [n, dIn, dOut] of [
          [1, 256, 2048],
          [33, 256, 130],
          [64, 1000, 67],
        ] as const) {
          checkMatmul(k, next, n, dIn, dOut, 1 / Math.sqrt(dIn));
        }
      });
    });

    describe("rmsnorm", () => {
      it.each(D_INS)("matches the reference for d = %i", (d) => {
        const next = rng(2000 + d);
        for (const n of [1, 2, 5]) {
          for (const eps of [1e-5, 1e-6]) {
            const x = randn(next, n * d, 3);
            const w = randn(next, d);
            const want = new Float32Array(n * d);
            rmsnormRef(want, x, w, n, d, eps);
            const px = k.allocF32(x);
            const pw = k.allocF32(w);
            const out = guarded(k, n * d);
            k.rmsnorm(out.ptr, px, pw, n, d, eps);
            expectClose(out.read(), want, 1e-5 * Math.sqrt(d), `n=${n} d=${d} eps=${eps}`);
            // In place (out = x), as the forward pass uses it.
            k.rmsnorm(px, px, pw, n, d, eps);
            expectClose(k.f32(px, n * d).slice(), want, 1e-5 * Math.sqrt(d), `in place n=${n} d=${d}`);
            k.free(out.ptr - GUARD * 4);
            k.free(pw);
            k.free(px);
          }
        }
      });
    });

    describe("rope", () => {
      // [nHeads, headStride, rotOffset, rotDim]: full head, partial (rotDim < headDim), an offset
      // slice (DeepSeek MLA's rope part), and half-widths that are not multiples of 4 or 2.
      const LAYOUTS = [
        [1, 2, 0, 2],
        [2, 6, 0, 6],
        [3, 10, 0, 10],
        [4, 64, 0, 64],
        [2, 64, 0, 32],
        [3, 96, 64, 32],
        [2, 40, 5, 34],
        [5, 17, 3, 14],
        [8, 128, 0, 128],
      ] as const;
      for (const interleaved of [false, true]) {
        it.each(LAYOUTS)(
          `matches the reference (interleaved=${interleaved}) for nHeads=%i headStride=%i rotOffset=%i rotDim=%i`,
          (nHeads, headStride, rotOffset, rotDim) => {
            const next = rng(3000 + headStride * 7 + rotDim + (interleaved ? 1 : 0));
            const half = rotDim / 2;
            for (const n of [1, 2, 5]) {
              const x = randn(next, n * nHeads * headStride);
              // Real angle tables: position (startPos 11 + t) × inverse frequency, theta 10000.
              const cos = new Float32Array(n * half);
              const sin = new Float32Array(n * half);
              for (let t = 0; t < n; t++) {
                for (let i = 0; i < half; i++) {
                  const angle = (11 + t) / 10000 ** ((2 * i) / rotDim);
                  cos[t * half + i] = Math.cos(angle);
                  sin[t * half + i] = Math.sin(angle);
                }
              }
              const want = x.slice();
              ropeRef(want, cos, sin, n, nHeads, headStride, rotOffset, rotDim, interleaved);
              const buf = guarded(k, x.length);
              k.f32(buf.ptr, x.length).set(x);
              const pc = k.allocF32(cos);
              const ps = k.allocF32(sin);
              k.rope(buf.ptr, pc, ps, n, nHeads, headStride, rotOffset, rotDim, interleaved);
              const got = buf.read();
              expectClose(got, want, 1e-6, `n=${n}`);
              // Values outside the rotated slice are untouched, bit for bit.
              for (let r = 0; r < n * nHeads; r++) {
                for (let i = 0; i < headStride; i++) {
                  if (i >= rotOffset && i < rotOffset + rotDim) continue;
                  expect(got[r * headStride + i]).toBe(x[r * headStride + i]);
                }
              }
              k.free(ps);
              k.free(pc);
              k.free(buf.ptr - GUARD * 4);
            }
          },
        );
      }
    });

    describe("softmax", () => {
      it.each([...D_INS, 1000, 32000])("matches the reference for cols = %i", (cols) => {
        const next = rng(4000 + cols);
        for (const rows of [1, 3]) {
          for (const scale of [1, 20, 100]) {
            const x = randn(next, rows * cols, scale);
            const want = x.slice();
            softmaxRef(want, rows, cols);
            const buf = guarded(k, x.length);
            k.f32(buf.ptr, x.length).set(x);
            k.softmax(buf.ptr, rows, cols);
            const got = buf.read();
            expectClose(got, want, 1e-5, `rows=${rows} cols=${cols} scale=${scale}`);
            for (let r = 0; r < rows; r++) {
              let sum = 0;
              for (let i = 0; i < cols; i++) sum += got[r * cols + i];
              expect(sum).toBeCloseTo(1, 5);
            }
            k.free(buf.ptr - GUARD * 4);
          }
        }
      });

      it("finds the row max at every position (a missed max overflows exp)", () => {
        const cols = 37;
        const p = k.alloc(cols * 4);
        for (let at = 0; at < cols; at++) {
          const x = new Float32Array(cols).map((_, i) => 10 - i * 0.25);
          x[at] = 200; // exp(200 − anything below 111) is +Inf in f32: a missed max gives NaN
          const want = x.slice();
          softmaxRef(want, 1, cols);
          k.f32(p, cols).set(x);
          k.softmax(p, 1, cols);
          expectClose(k.f32(p, cols).slice(), want, 1e-5, `max at ${at}`);
        }
        k.free(p);
      });

      it("stays finite for logits far beyond exp's range (max subtraction)", () => {
        const p = k.allocF32(new Float32Array([1000, 999, -1000, 1000]));
        k.softmax(p, 1, 4);
        const got = k.f32(p, 4).slice();
        const e = Math.exp(-1);
        expectClose(got, new Float32Array([1 / (2 + e), e / (2 + e), 0, 1 / (2 + e)]), 1e-6, "extreme logits");
        k.free(p);
      });
    });

    describe("siluMul", () => {
      it.each([...D_INS, 2048])("matches the reference for len = %i", (len) => {
        const next = rng(5000 + len);
        const gate = randn(next, len, 12);
        gate[0] = -100; // exp(100) overflows f32: silu must still give −0, not NaN
        const up = randn(next, len);
        const want = new Float32Array(len);
        siluMulRef(want, gate, up, len);
        const pg = k.allocF32(gate);
        const pu = k.allocF32(up);
        const out = guarded(k, len);
        k.siluMul(out.ptr, pg, pu, len);
        expectClose(out.read(), want, 1e-6, `len=${len}`);
        k.siluMul(pg, pg, pu, len); // in place over gate
        expectClose(k.f32(pg, len).slice(), want, 1e-6, `in place len=${len}`);
        k.free(out.ptr - GUARD * 4);
        k.free(pu);
        k.free(pg);
      });
    });

    describe("expertFfn", () => {
      const SHAPES = [
        [1, 3, 5],
        [1, 64, 128],
        [2, 17, 63],
        [3, 95, 16],
        [4, 64, 96],
        [5, 63, 257],
        [16, 96, 64],
        [7, 257, 33],
      ] as const;
      it.each(SHAPES)("matches the reference for n=%i dModel=%i dFf=%i", (n, dModel, dFf) => {
        const next = rng(6000 + n * 1000 + dModel + dFf);
        const x = randn(next, n * dModel);
        const w1 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
        const w3 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
        const w2 = randn(next, dModel * dFf, 1 / Math.sqrt(dFf));
        const want = new Float32Array(n * dModel);
        expertFfnRef(want, x, w1, w3, w2, n, dModel, dFf, new Float32Array(2 * n * dFf));
        const px = k.allocF32(x);
        const p1 = k.allocF32(w1);
        const p3 = k.allocF32(w3);
        const p2 = k.allocF32(w2);
        const scratch = guarded(k, 2 * n * dFf);
        const out = guarded(k, n * dModel);
        k.expertFfn(out.ptr, px, p1, p3, p2, n, dModel, dFf, scratch.ptr);
        scratch.read(); // checks the scratch guards: it must stay within 2·n·dFf floats
        expectClose(out.read(), want, 1e-5 * Math.sqrt(dModel + dFf), `n=${n} dModel=${dModel} dFf=${dFf}`);
        for (const p of [out.ptr - GUARD * 4, scratch.ptr - GUARD * 4, p2, p3, p1, px]) k.free(p);
      });
    });

    describe("attention", () => {
      // [nHeads, nKvHeads, headDim, vHeadDim]: MHA, GQA (2 and 8 query heads per kv head), MQA,
      // head sizes off the vector width, and vHeadDim ≠ headDim (MLA).
      const HEADS = [
        [4, 4, 16, 16],
        [4, 2, 17, 17],
        [8, 1, 64, 64],
        [6, 2, 8, 12],
        [3, 3, 5, 3],
        [16, 2, 128, 128],
        [2, 1, 63, 95],
      ] as const;
      // [nQ, startPos]: decode after a prefix, prefill, chunked prefill after a prefix.
      const STEPS = [
        [1, 0],
        [1, 7],
        [3, 0],
        [5, 4],
        [16, 0],
        [2, 40],
      ] as const;
      it.each(HEADS)(
        "matches the reference for nHeads=%i nKvHeads=%i headDim=%i vHeadDim=%i",
        (nHeads, nKvHeads, headDim, vHeadDim) => {
          const next = rng(7000 + nHeads * 100 + headDim + vHeadDim);
          for (const [nQ, startPos] of STEPS) {
            const kvLen = startPos + nQ;
            const q = randn(next, nQ * nHeads * headDim, 2);
            const kk = randn(next, kvLen * nKvHeads * headDim, 2);
            const v = randn(next, kvLen * nKvHeads * vHeadDim);
            const scale = 1 / Math.sqrt(headDim);
            const want = new Float32Array(nQ * nHeads * vHeadDim);
            attentionRef(
              want,
              q,
              kk,
              v,
              nQ,
              startPos,
              nHeads,
              nKvHeads,
              headDim,
              vHeadDim,
              scale,
              new Float32Array(kvLen),
            );
            const pq = k.allocF32(q);
            const pk = k.allocF32(kk);
            const pv = k.allocF32(v);
            const scratch = guarded(k, kvLen);
            const out = guarded(k, want.length);
            k.attention(out.ptr, pq, pk, pv, nQ, startPos, nHeads, nKvHeads, headDim, vHeadDim, scale, scratch.ptr);
            scratch.read();
            expectClose(out.read(), want, 1e-5 * Math.sqrt(headDim), `nQ=${nQ} startPos=${startPos}`);
            for (const p of [out.ptr - GUARD * 4, scratch.ptr - GUARD * 4, pv, pk, pq]) k.free(p);
          }
        },
      );

      it("is causal: a query never sees later kv positions", () => {
        const [nHeads, nKvHeads, headDim, nQ, startPos] = [2, 1, 8, 3, 2];
        const kvLen = startPos + nQ;
        const next = rng(77);
        const pq = k.allocF32(randn(next, nQ * nHeads * headDim));
        const pk = k.allocF32(randn(next, kvLen * nKvHeads * headDim));
        const pv = k.allocF32(randn(next, kvLen * nKvHeads * headDim));
        const scratch = k.alloc(kvLen * 4);
        const out = k.alloc(nQ * nHeads * headDim * 4);
        const run = () => {
          k.attention(out, pq, pk, pv, nQ, startPos, nHeads, nKvHeads, headDim, headDim, 0.5, scratch);
          return k.f32(out, nQ * nHeads * headDim).slice();
        };
        const before = run();
        // Scribble over the last position's k and v: only the last query may change.
        k.f32(pk + (kvLen - 1) * nKvHeads * headDim * 4, headDim).fill(9);
        k.f32(pv + (kvLen - 1) * nKvHeads * headDim * 4, headDim).fill(9);
        const after = run();
        const perQuery = nHeads * headDim;
        expect(after.subarray(0, (nQ - 1) * perQuery)).toEqual(before.subarray(0, (nQ - 1) * perQuery));
        expect(after.subarray((nQ - 1) * perQuery)).not.toEqual(before.subarray((nQ - 1) * perQuery));
        for (const p of [out, scratch, pv, pk, pq]) k.free(p);
      });
    });

    describe("allocator", () => {
      it("returns distinct, 16-byte-aligned, non-zero pointers and counts bytes in use", () => {
        const a = loadKernels(flavor);
        expect(a.bytesInUse).toBe(0);
        const sizes = [0, 1, 4, 15, 16, 17, 100, 4096];
        const ptrs = sizes.map((s) => a.alloc(s));
        for (const p of ptrs) {
          expect(p).toBeGreaterThan(0);
          expect(p % 16).toBe(0);
        }
        const sorted = ptrs.map((p, i) => [p, Math.max(16, sizes[i])] as const).sort((x, y) => x[0] - y[0]);
        for (let i = 1; i < sorted.length; i++)
          expect(sorted[i][0]).toBeGreaterThanOrEqual(sorted[i - 1][0] + sorted[i - 1][1]);
        expect(a.bytesInUse).toBe(sizes.reduce((s, x) => s + x, 0));
        for (const p of ptrs) a.free(p);
        expect(a.bytesInUse).toBe(0);
      });

      it("reuses a freed block for an allocation that fits (first fit)", () => {
        const a = loadKernels(flavor);
        const p1 = a.alloc(1024);
        const p2 = a.alloc(1024);
        a.alloc(16); // keeps p2 off the top
        a.free(p1);
        expect(a.alloc(512)).toBe(p1); // first fit splits the block
        expect(a.alloc(512)).toBe(p1 + 512);
        a.free(p2);
        expect(a.alloc(1024)).toBe(p2);
      });

      it("coalesces neighbouring free blocks in any order", () => {
        const a = loadKernels(flavor);
        const [p1, p2, p3] = [a.alloc(256), a.alloc(256), a.alloc(256)];
        const fence = a.alloc(16);
        a.free(p1);
        a.free(p3);
        a.free(p2); // joins both neighbours
        expect(a.alloc(768)).toBe(p1);
        a.free(p1);
        a.free(fence); // the top block swallows everything below it
        expect(a.bytesInUse).toBe(0);
        expect(a.alloc(1024)).toBe(p1);
      });

      it("rejects freeing an unknown or already freed pointer", () => {
        const a = loadKernels(flavor);
        const p = a.alloc(64);
        expect(() => a.free(p + 16)).toThrow(/not a live allocation/);
        a.free(p);
        expect(() => a.free(p)).toThrow(/not a live allocation/);
        expect(() => a.alloc(-1)).toThrow(RangeError);
        expect(() => a.alloc(1.5)).toThrow(RangeError);
      });

      it("grows the memory and keeps data; fresh views after growth read the same bytes", () => {
        const a = loadKernels(flavor);
        const before = a.memoryBytes;
        const small = a.allocF32(new Float32Array([1, 2, 3, 4.5]));
        const oldView = a.f32(small, 4);
        const big = a.alloc(before * 4);
        expect(a.memoryBytes).toBeGreaterThanOrEqual(big + before * 4);
        expect(oldView.length).toBe(0); // growth detached it, as documented
        expect(Array.from(a.f32(small, 4))).toEqual([1, 2, 3, 4.5]);
        a.f32(big, before).fill(7);
        expect(a.f32(big + (before - 1) * 4, 1)[0]).toBe(7);
      });

      it("survives a random alloc/free workload without overlaps or lost data", () => {
        const a = loadKernels(flavor);
        const bottom = a.alloc(16);
        a.free(bottom);
        const next = rng(99);
        const live = new Map<number, { len: number; tag: number }>();
        for (let step = 0; step < 2000; step++) {
          if (live.size > 0 && next() < 0.45) {
            const keys = [...live.keys()];
            const p = keys[Math.floor(next() * keys.length)];
            const { len, tag } = live.get(p)!;
            expect(
              a.f32(p, len).every((v) => v === tag),
              `allocation at ${p} was overwritten`,
            ).toBe(true);
            a.free(p);
            live.delete(p);
          } else {
            const len = 1 + Math.floor(next() * next() * 5000);
            const p = a.alloc(len * 4);
            const tag = step + 0.5;
            a.f32(p, len).fill(tag);
            live.set(p, { len, tag });
          }
        }
        const spans = [...live.entries()].map(([p, { len }]) => [p, p + len * 4]).sort((x, y) => x[0] - y[0]);
        for (let i = 1; i < spans.length; i++) expect(spans[i][0]).toBeGreaterThanOrEqual(spans[i - 1][1]);
        for (const [p, { len, tag }] of live) expect(a.f32(p, len).every((v) => v === tag)).toBe(true);
        expect(a.bytesInUse).toBe([...live.values()].reduce((s, { len }) => s + len * 4, 0));
        for (const p of live.keys()) a.free(p);
        expect(a.bytesInUse).toBe(0);
        expect(a.alloc(16)).toBe(bottom); // everything coalesced back into the top
      });

      it("throws MemoryBudgetError past a software cap and stays usable", () => {
        const a = loadKernels(flavor, { maxBytes: 1 << 20 });
        const p = a.alloc(512 * 1024);
        let err: unknown;
        try {
          a.alloc(600 * 1024);
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(MemoryBudgetError);
        const msg = (err as Error).message;
        expect(msg).toContain(String(600 * 1024)); // requested
        expect(msg).toContain(String(512 * 1024)); // in use
        expect(msg).toContain(String(1 << 20)); // limit
        expect(a.bytesInUse).toBe(512 * 1024);
        expect(a.memoryBytes).toBeLessThanOrEqual(1 << 20);
        a.free(p);
        expect(a.alloc(600 * 1024)).toBe(p);
      });

      it("is built with a 104 MiB maximum memory, so even raw grows stop at WASM_MAX_BYTES", () => {
        const { memory } = new WebAssembly.Instance(kernelModule(flavor), {}).exports as { memory: WebAssembly.Memory };
        const pages = memory.buffer.byteLength / 65536;
        expect(() => memory.grow(WASM_MAX_BYTES / 65536 - pages + 1)).toThrow(RangeError);
      });

      it("holds the 104 MiB cap by default: 100 MiB fits, 8 MiB more does not", () => {
        const a = loadKernels(flavor);
        expect(() => a.alloc(WASM_MAX_BYTES)).toThrow(MemoryBudgetError);
        const p = a.alloc(100 * 1024 * 1024);
        expect(a.memoryBytes).toBeLessThanOrEqual(WASM_MAX_BYTES);
        expect(() => a.alloc(8 * 1024 * 1024)).toThrow(MemoryBudgetError);
        a.free(p);
        expect(a.alloc(8 * 1024 * 1024)).toBe(p);
      });

      it("refuses a maxBytes above WASM_MAX_BYTES and a module of the other flavor", () => {
        expect(() => loadKernels(flavor, { maxBytes: WASM_MAX_BYTES + 65536 })).toThrow(RangeError);
        const other: KernelFlavor = flavor === "scalar" ? "simd" : "scalar";
        expect(() => Kernels.instantiate(kernelModule(other), flavor)).toThrow(/build/);
      });
    });
  });
}
