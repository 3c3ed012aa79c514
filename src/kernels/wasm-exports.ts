/**
 * @module The raw exports of the AssemblyScript kernels (assembly/index.ts) as TypeScript sees them:
 * one type, shared by the kernel face (./index), the allocator's owner and the relaxed probes.
 */

/** The raw exports of assembly/index.ts (pointers and sizes are i32, eps/scale f32). */
export type KernelExports = {
  memory: WebAssembly.Memory;
  heapBase(): number;
  simd(): number;
  relaxed(): number;
  matmul(out: number, x: number, w: number, n: number, dIn: number, dOut: number): void;
  rmsnorm(out: number, x: number, w: number, n: number, d: number, eps: number): void;
  rope(
    x: number,
    cos: number,
    sin: number,
    n: number,
    nHeads: number,
    headStride: number,
    rotOffset: number,
    rotDim: number,
    interleaved: number,
  ): void;
  softmax(x: number, rows: number, cols: number): void;
  siluMul(out: number, gate: number, up: number, len: number): void;
  expertFfn(
    out: number,
    x: number,
    w1: number,
    w3: number,
    w2: number,
    n: number,
    dModel: number,
    dFf: number,
    scratch: number,
  ): void;
  attention(
    out: number,
    q: number,
    k: number,
    v: number,
    nQ: number,
    startPos: number,
    nHeads: number,
    nKvHeads: number,
    headDim: number,
    vHeadDim: number,
    scale: number,
    scratch: number,
  ): void;
  matmulPacked(out: number, x: number, wp: number, n: number, dIn: number, dOut: number, scratch: number): void;
  expertFfnPacked(out: number, x: number, blob: number, n: number, dModel: number, dFf: number, scratch: number): void;
  /** 1: the packed f32 kernels' staged multi-token path, 0: register tiles, −1: unchanged; returns 1 if staged. */
  setPackedStaged(mode: number): number;
  matmulQ8(out: number, x: number, wq: number, n: number, dIn: number, dOut: number, scratch: number): void;
  expertFfnQ8(out: number, x: number, blob: number, n: number, dModel: number, dFf: number, scratch: number): void;
  setQ8Relaxed(on: number): number;
  probeRelaxed(out: number, a: number, b: number, c: number): number;
  streamRead(ptr: number, bytes: number): number;
  simdPeak(iters: number, seed: number): number;
  int8Peak(form: number, iters: number, w: number): number;
  q8TilePeak(xq: number, xqRow: number, panel: number, kBlocks: number, reps: number): number;
  scratchBytes(kind: number, n: number, a: number, b: number): number;
  matmulQ8g(
    out: number,
    x: number,
    w: number,
    n: number,
    dIn: number,
    dOut: number,
    group: number,
    scratch: number,
  ): void;
  matmulBf16(out: number, x: number, w: number, n: number, dIn: number, dOut: number): void;
  gatherQ8g(out: number, w: number, ids: number, count: number, rows: number, cols: number, group: number): void;
  gatherBf16(out: number, w: number, ids: number, count: number, rows: number, cols: number): void;
  argmaxRows(maxOut: number, idxOut: number, y: number, n: number, rows: number, scale: number): void;
  expertFfnQ8g(
    out: number,
    x: number,
    blob: number,
    n: number,
    dModel: number,
    dFf: number,
    group: number,
    scratch: number,
  ): void;
  expertFfnQ4g(
    out: number,
    x: number,
    blob: number,
    n: number,
    dModel: number,
    dFf: number,
    group: number,
    scratch: number,
  ): void;
  packRowsF32(
    dst: number,
    src: number,
    j0: number,
    nRows: number,
    cols: number,
    group: number,
    rowOffset: number,
  ): void;
  q4ActivationBits(): number;
  setQ4DotForm(form: number): number;
};
