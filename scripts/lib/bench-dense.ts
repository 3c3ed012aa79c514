/**
 * @module bench-dense — the dense stage-weight cases of bench:kernels (src/kernels/dense.ts): one
 * y = x · Wᵀ per call on stage shapes (attention projections, dense MLPs, a head slice), in every
 * format a StageHost can hold, beside the f32 `matmul` and the experts' per-row int8 (`matmulQ8`)
 * in the same run; and the accuracy of each format (relative matmul error vs f64 on the f32
 * weights) on random weights of granite-3.1-1b-a400m shapes and on the fixtures' dense weights.
 * Used by scripts/bench-kernels.ts in Node and, through bench-workerd-worker.ts, in workerd.
 */
import { WASM_MAX_BYTES, type Kernels } from "../../src/kernels/index";
import { DenseMatrixWriter } from "../../src/kernels/dense";
import { denseScratchBytes, type DenseFormat, type DenseMatrix } from "../../src/kernels/dense-format";
import { packedQ8Bytes, packQ8, quantizeRowsQ8 } from "../../src/kernels/packing";
import { matmulRef } from "../../src/kernels/reference";

export interface DenseImpl {
  impl: string;
  label: string;
  /** Dense format, or "q8-row" for the expert int8 kernel (packed, one scale per row). */
  format: DenseFormat | "q8-row";
  group?: number;
  /** A head shard's greedy answer after the matmul (scale HEAD_BENCH_SCALE): the scan in Wasm
   * (Kernels.argmaxRows) or the JS scan HeadStore ran before it. Speed rows only. */
  greedy?: "wasm" | "js";
}

/** logits_scaling of the greedy rows (granite's): both scans divide by it. */
const HEAD_BENCH_SCALE = 8;

export const DENSE_IMPLS: readonly DenseImpl[] = [
  { impl: "dense-f32", label: "f32 matmul (row-major)", format: "f32" },
  { impl: "dense-bf16", label: "bf16 (widened in-kernel)", format: "bf16" },
  { impl: "dense-int8-g32", label: "int8, scale per 32 inputs", format: "int8", group: 32 },
  { impl: "dense-int8-g64", label: "int8, scale per 64 inputs", format: "int8", group: 64 },
  { impl: "dense-int8-g128", label: "int8, scale per 128 inputs", format: "int8", group: 128 },
  { impl: "q8-row-packed", label: "expert int8 (per-row scale, packed)", format: "q8-row" },
  { impl: "dense-f32-greedy", label: "f32 head greedy (matmul + argmaxRows)", format: "f32", greedy: "wasm" },
  { impl: "dense-f32-greedy-js", label: "f32 head greedy (matmul + JS scan)", format: "f32", greedy: "js" },
  { impl: "dense-bf16-greedy", label: "bf16 head greedy (matmul + argmaxRows)", format: "bf16", greedy: "wasm" },
];

/** W[rows, cols]: rows = outputs, cols = inputs. */
export interface DenseShape {
  rows: number;
  cols: number;
}

export const denseShapeName = (s: DenseShape): string => `${s.rows}x${s.cols}`;

/** Seeded standard normal values (Box–Muller on a xorshift): weights look like trained ones more
 * than uniform values do (most small, a few large), which is what per-group scales are about. */
export function gaussian(len: number, scale: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const u = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) + 0.5) / 4294967296;
  };
  const a = new Float32Array(len);
  for (let i = 0; i < len; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u()));
    const t = 2 * Math.PI * u();
    a[i] = r * Math.cos(t) * scale;
    if (i + 1 < len) a[i + 1] = r * Math.sin(t) * scale;
  }
  return a;
}

/** Loads w [rows, cols] (f32) into `k` in a format through the streaming writer (64 KiB chunks). */
export function loadFormat(
  k: Kernels,
  w: Float32Array,
  shape: DenseShape,
  format: DenseFormat,
  group?: number,
): DenseMatrix {
  const writer = new DenseMatrixWriter(k, { rows: shape.rows, cols: shape.cols, source: "F32", format, group });
  const bytes = new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
  for (let at = 0; at < bytes.length; at += 65536) writer.push(bytes.subarray(at, Math.min(bytes.length, at + 65536)));
  return writer.finish();
}

export interface DenseCase {
  copies: number;
  /** Bytes of one copy of the weights. */
  bytes: number;
  call(i: number, n: number): void;
  output(n: number): Float32Array;
}

/**
 * `copies` copies of one matrix in `impl`'s format, spread over as many Kernels instances as
 * needed; call(i, n) runs copy i mod copies on the first n of maxN fixed tokens.
 */
export function setupDenseCase(
  impl: DenseImpl,
  shape: DenseShape,
  copies: number,
  maxN: number,
  newKernels: () => Kernels,
): DenseCase {
  const { rows, cols } = shape;
  const w = gaussian(rows * cols, 1 / Math.sqrt(cols), 7);
  interface Slot {
    k: Kernels;
    m: DenseMatrix;
    x: number;
    out: number;
    scratch: number;
  }
  const slots: Slot[] = [];
  while (slots.length < copies) {
    const k = newKernels();
    const x = k.alloc(maxN * cols * 4);
    const xs = k.f32(x, maxN * cols);
    for (let i = 0; i < xs.length; i++) xs[i] = Math.sin(i * 0.61) * 1.5;
    const out = k.alloc(maxN * rows * 4);
    let first: DenseMatrix;
    let scratchBytes: number;
    if (impl.format === "q8-row") {
      const bytes = packedQ8Bytes(rows, cols);
      const ptr = k.alloc(bytes);
      packQ8(k.u8(ptr, bytes), quantizeRowsQ8(w, rows, cols), rows, cols);
      first = { ptr, rows, cols, format: "int8", group: 0, bytes };
      scratchBytes = k.scratchBytes("matmulQ8", maxN, cols, rows);
    } else {
      first = loadFormat(k, w, shape, impl.format, impl.group);
      scratchBytes = denseScratchBytes(first, maxN);
    }
    const scratch = k.alloc(Math.max(16, scratchBytes));
    slots.push({ k, m: first, x, out, scratch });
    const room = Math.floor((WASM_MAX_BYTES - k.memoryBytes - (1 << 20)) / (first.bytes + 64));
    for (let c = 0; c < room && slots.length < copies; c++) {
      const ptr = k.alloc(first.bytes);
      k.u8(ptr, first.bytes).set(k.u8(first.ptr, first.bytes));
      slots.push({ k, m: { ...first, ptr }, x, out, scratch });
    }
  }
  const matmul =
    impl.format === "q8-row"
      ? (s: Slot, n: number) => s.k.matmulQ8(s.out, s.x, s.m.ptr, n, cols, rows, s.scratch)
      : (s: Slot, n: number) => s.k.matmulDense(s.m, s.out, s.x, n, s.scratch);
  const call = impl.greedy ? greedyAfter(matmul, impl.greedy, rows, maxN) : matmul;
  return {
    copies,
    bytes: slots[0].m.bytes,
    call: (i, n) => call(slots[i % copies], n),
    output(n) {
      call(slots[0], n);
      return slots[0].k.f32(slots[0].out, n * rows).slice();
    },
  };
}

/** `matmul`, then per token the largest logit ÷ HEAD_BENCH_SCALE and its index (into a buffer of
 * 8·maxN bytes per Kernels instance): in Wasm, or as HeadStore's JS scan did (÷ in place, scan). */
function greedyAfter<S extends { k: Kernels; out: number }>(
  matmul: (s: S, n: number) => void,
  how: "wasm" | "js",
  rows: number,
  maxN: number,
): (s: S, n: number) => void {
  const picks = new Map<Kernels, number>();
  return (s, n) => {
    matmul(s, n);
    if (how === "wasm") {
      let p = picks.get(s.k);
      if (p === undefined) picks.set(s.k, (p = s.k.alloc(8 * maxN)));
      s.k.argmaxRows(p, p + 4 * n, s.out, n, rows, HEAD_BENCH_SCALE);
      return;
    }
    const view = s.k.f32(s.out, n * rows);
    for (let i = 0; i < view.length; i++) view[i] /= HEAD_BENCH_SCALE;
    let sum = 0;
    for (let t = 0; t < n; t++) {
      const o = t * rows;
      let best = 0;
      for (let j = 1; j < rows; j++) if (view[o + j] > view[o + best]) best = j;
      sum += best;
    }
    if (sum < 0) throw new Error("unreachable");
  };
}

/** ‖got − want‖ / ‖want‖. */
export function relRms(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let e = 0;
  let s = 0;
  for (let i = 0; i < want.length; i++) {
    e += (got[i] - want[i]) ** 2;
    s += want[i] ** 2;
  }
  return Math.sqrt(e / Math.max(s, 1e-30));
}

/** Relative RMS error of y = x · Wᵀ in one format vs f64 on the f32 weights, n tokens of x. */
export function formatError(
  k: Kernels,
  impl: DenseImpl,
  w: Float32Array,
  shape: DenseShape,
  x: Float32Array,
  n: number,
): number {
  const { rows, cols } = shape;
  const want = new Float32Array(n * rows);
  matmulRef(want, x, w, n, cols, rows);
  const px = k.allocF32(x);
  const out = k.alloc(n * rows * 4);
  let got: Float32Array;
  if (impl.format === "q8-row") {
    const bytes = packedQ8Bytes(rows, cols);
    const ptr = k.alloc(bytes);
    packQ8(k.u8(ptr, bytes), quantizeRowsQ8(w, rows, cols), rows, cols);
    const scratch = k.alloc(k.scratchBytes("matmulQ8", n, cols, rows));
    k.matmulQ8(out, px, ptr, n, cols, rows, scratch);
    got = k.f32(out, n * rows).slice();
    k.free(scratch);
    k.free(ptr);
  } else {
    const m = loadFormat(k, w, shape, impl.format, impl.group);
    const scratch = k.alloc(Math.max(16, denseScratchBytes(m, n)));
    k.matmulDense(m, out, px, n, scratch);
    got = k.f32(out, n * rows).slice();
    k.free(scratch);
    k.free(m.ptr);
  }
  k.free(out);
  k.free(px);
  return relRms(got, want);
}

/** granite-3.1-1b-a400m's dense shapes (hidden 1024, 16 heads × 64, 8 KV heads): q/o, k/v, router,
 * and a 1024-row slice of the tied head/embedding. */
export const GRANITE_SHAPES: readonly (DenseShape & { what: string })[] = [
  { rows: 1024, cols: 1024, what: "q_proj / o_proj" },
  { rows: 512, cols: 1024, what: "k_proj / v_proj" },
  { rows: 32, cols: 1024, what: "router" },
  { rows: 1024, cols: 1024, what: "head rows (embedding-like scale)" },
];
