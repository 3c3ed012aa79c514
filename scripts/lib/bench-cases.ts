/**
 * @module bench-cases — the expert-kernel cases of bench:kernels, shared by the Node run and the
 * workerd run (bench-workerd-worker.ts bundles this file): random expert weights, and for each
 * implementation a set of expert copies in memory plus a `call(copy, n)` that runs one expert on n
 * tokens. Cold = cycling through more copies than the L3 holds (as real MoE decode does); hot =
 * copy 0 over and over. No Node APIs here.
 */
import { WASM_MAX_BYTES, type KernelFlavor, type Kernels, type Q4DotForm, type Q8Path } from "../../src/kernels/index";
import {
  expertPackedBytes,
  packExpertF32,
  packExpertQ8,
  quantizeRowsQ8,
  type Q8Expert,
} from "../../src/kernels/packing";
import { expertFfnRef } from "../../src/kernels/reference";
import { expertQ8gBytes, expertQ8gScratchBytes, packExpertQ8g } from "../../src/kernels/dense-format";
import { expertQ4gBytes, expertQ4gScratchBytes, packExpertQ4g, quantizeExpertQ4g } from "../../src/kernels/q4g-format";

export type Impl =
  | "js-ref"
  | "wasm-f32-rowmajor"
  | "wasm-f32-packed"
  | "wasm-f32-packed-relaxed"
  | "wasm-int8-dot16"
  | "wasm-int8-relaxed"
  | "wasm-int8-relaxed-7bit"
  | "wasm-int8-g32"
  | "wasm-int8-g64"
  | "wasm-int4-g32"
  | "wasm-int4-g32-dotadd"
  | "wasm-int4-g64";

export interface ImplInfo {
  impl: Impl;
  label: string;
  dtype: "f32" | "int8";
  /** Kernel build; null for the plain JS reference. */
  flavor: KernelFlavor | null;
  q8Path?: Q8Path;
  /** Group-scaled formats (expertFfnQ8g / expertFfnQ4g) and their group; per-row int8 when absent.
   * Their rows count as dtype "int8" so they are compared with the int8 peers. */
  grouped?: { format: "q8g" | "q4g"; group: number };
  /** int4 only: the relaxed dot form to force (Kernels.setQ4Relaxed); the loader's default when absent. */
  q4Form?: Q4DotForm;
}

export const WASM_IMPLS: readonly ImplInfo[] = [
  { impl: "js-ref", label: "plain JS reference (f32)", dtype: "f32", flavor: null },
  { impl: "wasm-f32-rowmajor", label: "Wasm f32 row-major (simd)", dtype: "f32", flavor: "simd" },
  { impl: "wasm-f32-packed", label: "Wasm f32 packed (simd)", dtype: "f32", flavor: "simd" },
  { impl: "wasm-f32-packed-relaxed", label: "Wasm f32 packed (relaxed madd)", dtype: "f32", flavor: "relaxed" },
  {
    impl: "wasm-int8-dot16",
    label: "Wasm int8 (dot_i16x8, 12-bit act.)",
    dtype: "int8",
    flavor: "simd",
    q8Path: "dot_i16x8",
  },
  {
    impl: "wasm-int8-relaxed",
    label: "Wasm int8 (relaxed dot, 14-bit act.)",
    dtype: "int8",
    flavor: "relaxed",
    q8Path: "relaxed_dot",
  },
  {
    impl: "wasm-int8-relaxed-7bit",
    label: "Wasm int8 (relaxed dot, 7-bit act.)",
    dtype: "int8",
    flavor: "relaxed",
    q8Path: "relaxed_dot_7bit",
  },
  {
    impl: "wasm-int8-g32",
    label: "Wasm int8 groups of 32 (16-bit act.)",
    dtype: "int8",
    flavor: "relaxed",
    grouped: { format: "q8g", group: 32 },
  },
  {
    impl: "wasm-int8-g64",
    label: "Wasm int8 groups of 64 (16-bit act.)",
    dtype: "int8",
    flavor: "relaxed",
    grouped: { format: "q8g", group: 64 },
  },
  {
    impl: "wasm-int4-g32",
    label: "Wasm int4 groups of 32",
    dtype: "int8",
    flavor: "relaxed",
    grouped: { format: "q4g", group: 32 },
  },
  {
    impl: "wasm-int4-g32-dotadd",
    label: "Wasm int4 groups of 32 (dot-add form)",
    dtype: "int8",
    flavor: "relaxed",
    grouped: { format: "q4g", group: 32 },
    q4Form: "dot-add",
  },
  {
    impl: "wasm-int4-g64",
    label: "Wasm int4 groups of 64",
    dtype: "int8",
    flavor: "relaxed",
    grouped: { format: "q4g", group: 64 },
  },
];

export interface ExpertShape {
  dModel: number;
  dFf: number;
}

export interface RandomExpert {
  w1: Float32Array; // [dFf, dModel]
  w3: Float32Array; // [dFf, dModel]
  w2: Float32Array; // [dModel, dFf]
  q: Q8Expert;
}

/** Bell-shaped random weights of scale 1/√d (sum of three uniforms), seeded. */
export function randomExpert({ dModel, dFf }: ExpertShape, seed = 1): RandomExpert {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5;
  };
  const fill = (len: number, scale: number) => {
    const w = new Float32Array(len);
    for (let i = 0; i < len; i++) w[i] = (next() + next() + next()) * 2 * scale;
    return w;
  };
  const w1 = fill(dFf * dModel, 1 / Math.sqrt(dModel));
  const w3 = fill(dFf * dModel, 1 / Math.sqrt(dModel));
  const w2 = fill(dModel * dFf, 1 / Math.sqrt(dFf));
  return {
    w1,
    w3,
    w2,
    q: {
      w1: quantizeRowsQ8(w1, dFf, dModel),
      w3: quantizeRowsQ8(w3, dFf, dModel),
      w2: quantizeRowsQ8(w2, dModel, dFf),
    },
  };
}

/** FLOPs of one expert call: three matmuls of dModel × dFf, 2 per multiply-add. */
export function expertFlops({ dModel, dFf }: ExpertShape, n: number): number {
  return 2 * 3 * dModel * dFf * n;
}

/** Bytes of weights one call reads. */
export function weightBytes(info: ImplInfo, { dModel, dFf }: ExpertShape): number {
  if (info.grouped?.format === "q8g") return expertQ8gBytes(dModel, dFf, info.grouped.group);
  if (info.grouped?.format === "q4g") return expertQ4gBytes(dModel, dFf, info.grouped.group);
  return info.dtype === "int8" ? expertPackedBytes("q8", dModel, dFf) : 3 * dModel * dFf * 4;
}

export interface BenchCase {
  /** Copies of the expert held (cold cycles through them all). */
  copies: number;
  /** One expert call on copy `i` (mod copies) with n ≤ maxN tokens. */
  call(i: number, n: number): void;
  /** Output of the last call on copy 0 for n tokens (a correctness spot check). */
  output(n: number): Float32Array;
}

/** The relaxed dot's instruction form this runtime prefers (the kernels' loaders default to it):
 * "dot-add" in workerd (AVX-VNNI), "i16" in Node 22. */
export type DotForm = "dot-add" | "i16";

function withForm(path: Q8Path, form: DotForm): Q8Path {
  if (form === "dot-add" || path === "dot_i16x8") return path;
  return path === "relaxed_dot" ? "relaxed_dot_i16" : path === "relaxed_dot_7bit" ? "relaxed_dot_i16_7bit" : path;
}

/**
 * Builds `copies` copies of the expert for `info`, spread over as many Kernels instances (Wasm
 * memories ≤ 104 MiB) as needed. `newKernels(flavor)` makes an instance of a build.
 */
export function setupCase(
  info: ImplInfo,
  shape: ExpertShape,
  w: RandomExpert,
  copies: number,
  maxN: number,
  newKernels: (flavor: KernelFlavor) => Kernels,
  form: DotForm = "dot-add",
): BenchCase {
  const { dModel, dFf } = shape;
  if (info.flavor === null) return jsCase(shape, w, copies, maxN);
  const grouped = info.grouped;
  const bytes =
    info.impl === "wasm-f32-rowmajor" || grouped
      ? weightBytes(info, shape)
      : expertPackedBytes(info.dtype === "int8" ? "q8" : "f32", dModel, dFf);
  // Pack once into a staging buffer, then copy bytes into every slot.
  const staging = new Uint8Array(bytes);
  if (grouped?.format === "q8g") packExpertQ8g(staging, w.w1, w.w3, w.w2, dModel, dFf, grouped.group);
  else if (grouped?.format === "q4g") {
    packExpertQ4g(staging, quantizeExpertQ4g(w.w1, w.w3, w.w2, dModel, dFf, grouped.group), dModel, dFf);
  } else if (info.impl === "wasm-f32-rowmajor") {
    const f = new Float32Array(staging.buffer);
    f.set(w.w1, 0);
    f.set(w.w3, dFf * dModel);
    f.set(w.w2, 2 * dFf * dModel);
  } else if (info.dtype === "int8") packExpertQ8(staging, w.q, dModel, dFf);
  else packExpertF32(new Float32Array(staging.buffer), w.w1, w.w3, w.w2, dModel, dFf);

  interface Slot {
    k: Kernels;
    blob: number;
    x: number;
    out: number;
    scratch: number;
  }
  const slots: Slot[] = [];
  const flavor = info.flavor;
  while (slots.length < copies) {
    const k = newKernels(flavor);
    const path = info.q8Path && withForm(info.q8Path, form);
    if (path && k.setQ8Path(path) !== path)
      throw new Error(`${info.label}: the ${path} path is not available in this runtime`);
    if (info.q4Form && !(k.setQ4Relaxed(true, info.q4Form) && k.q4DotForm === info.q4Form))
      throw new Error(`${info.label}: the ${info.q4Form} form is not available in this runtime`);
    const x = k.alloc(maxN * dModel * 4);
    const seed = k.f32(x, maxN * dModel);
    for (let i = 0; i < seed.length; i++) seed[i] = Math.sin(i * 0.61) * 1.5;
    const out = k.alloc(maxN * dModel * 4);
    const scratchBytes = grouped
      ? (grouped.format === "q8g" ? expertQ8gScratchBytes : expertQ4gScratchBytes)(maxN, dModel, dFf, grouped.group)
      : info.impl === "wasm-f32-rowmajor"
        ? 2 * maxN * dFf * 4
        : k.scratchBytes(info.dtype === "int8" ? "ffnQ8" : "ffnF32", maxN, dModel, dFf);
    const scratch = k.alloc(scratchBytes);
    const room = Math.floor((WASM_MAX_BYTES - k.memoryBytes - (1 << 20)) / (bytes + 64));
    if (room < 1)
      throw new Error(`${info.label}: one ${dModel}×${dFf} expert (${bytes} B) does not fit one Wasm memory`);
    for (let c = 0; c < room && slots.length < copies; c++) {
      const blob = k.alloc(bytes);
      k.u8(blob, bytes).set(staging);
      slots.push({ k, blob, x, out, scratch });
    }
  }
  const third = dFf * dModel * 4;
  const call =
    grouped?.format === "q8g"
      ? (s: Slot, n: number) => s.k.expertFfnQ8g(s.out, s.x, s.blob, n, dModel, dFf, grouped.group, s.scratch)
      : grouped?.format === "q4g"
        ? (s: Slot, n: number) => s.k.expertFfnQ4g(s.out, s.x, s.blob, n, dModel, dFf, grouped.group, s.scratch)
        : info.impl === "wasm-f32-rowmajor"
          ? (s: Slot, n: number) =>
              s.k.expertFfn(s.out, s.x, s.blob, s.blob + third, s.blob + 2 * third, n, dModel, dFf, s.scratch)
          : info.dtype === "int8"
            ? (s: Slot, n: number) => s.k.expertFfnQ8(s.out, s.x, s.blob, n, dModel, dFf, s.scratch)
            : (s: Slot, n: number) => s.k.expertFfnPacked(s.out, s.x, s.blob, n, dModel, dFf, s.scratch);
  return {
    copies,
    call: (i, n) => call(slots[i % copies], n),
    output(n) {
      call(slots[0], n);
      return slots[0].k.f32(slots[0].out, n * dModel).slice();
    },
  };
}

function jsCase(shape: ExpertShape, w: RandomExpert, copies: number, maxN: number): BenchCase {
  const { dModel, dFf } = shape;
  const sets = Array.from({ length: copies }, (_, c) =>
    c === 0 ? w : { ...w, w1: w.w1.slice(), w3: w.w3.slice(), w2: w.w2.slice() },
  );
  const x = Float32Array.from({ length: maxN * dModel }, (_, i) => Math.sin(i * 0.61) * 1.5);
  const out = new Float32Array(maxN * dModel);
  const scratch = new Float32Array(2 * maxN * dFf);
  const call = (s: RandomExpert, n: number) =>
    expertFfnRef(
      out.subarray(0, n * dModel),
      x.subarray(0, n * dModel),
      s.w1,
      s.w3,
      s.w2,
      n,
      dModel,
      dFf,
      scratch.subarray(0, 2 * n * dFf),
    );
  return {
    copies,
    call: (i, n) => call(sets[i % copies], n),
    output(n) {
      call(sets[0], n);
      return out.slice(0, n * dModel);
    },
  };
}

/** Copies needed so that cycling through them reads ≥ coldBytes (at least 2). */
export function coldCopies(bytesPerCopy: number, coldBytes: number): number {
  return Math.max(2, Math.ceil(coldBytes / bytesPerCopy));
}

/** Reads a buffer of `mb` MiB `reps` times with the Wasm streaming loop; returns the k and ptr. */
export function streamBuffer(k: Kernels, mb: number): { ptr: number; bytes: number; run(): number } {
  const bytes = mb << 20;
  const ptr = k.alloc(bytes);
  k.u8(ptr, bytes).fill(1);
  return { ptr, bytes, run: () => k.streamRead(ptr, bytes) };
}
