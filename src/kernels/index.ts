/**
 * @module kernels — the typed face of the Wasm kernels (assembly/): the `Kernels` class, whose op
 * methods forward to the Wasm exports and whose memory is handed out by its allocator (./arena).
 *
 * Platform-agnostic: give it a compiled `WebAssembly.Module` (src/kernels/node.ts reads one from
 * build/, src/kernels/workers.ts imports one through wrangler's CompiledWasm rule). Every tensor is
 * f32, row-major, outer dimension first, addressed by a byte pointer into the Wasm memory — except
 * packed expert weights (src/kernels/packing.ts). The op methods forward straight to the Wasm
 * exports: no allocation and no checks per call, so validate shapes where they enter the system.
 *
 * Three builds share the export names: scalar (the reference-ish fallback), simd, and relaxed
 * (relaxed SIMD: fused multiply-add, and the 7-bit-activation int8 dot). A relaxed instance probes
 * itself when it is created (`instantiate`) and turns its int8 dot path off if the instruction
 * disagrees with exact integer arithmetic (a V8 bug returns wrong values in some Node versions);
 * `Kernels.pick` falls back to simd when relaxed SIMD is missing or its multiply-add is wrong. The
 * probes and the int8 path choice live in ./probe; this module re-exports their public names.
 */
import { instantiateSync } from "@assemblyscript/loader";
import { Arena, WASM_MAX_BYTES } from "./arena";
import type { DenseMatrix } from "./dense-format";
import {
  type KernelFlavor,
  type Q8Path,
  pickFirstWorking,
  probeRelaxedForms,
  q8ModeFor,
  q8PathOfMode,
  q8PathsFor,
} from "./probe";
import type { KernelExports } from "./wasm-exports";

// Names this module has always exported, now defined next door (imports of this module keep working).
export { MemoryBudgetError, WASM_MAX_BYTES } from "./arena";
export type { KernelFlavor, Q8Path } from "./probe";
export { RelaxedProbeError, q8ActivationBits, relaxedDotAgrees, relaxedMaddAgrees } from "./probe";

/** The relaxed dot instruction form of the int4 kernel (Kernels.setQ4Relaxed). */
export type Q4DotForm = "i16" | "dot-add";

/** How the packed f32 kernels run groups of 8+ tokens (Kernels.setPackedF32Path): "tiles", register
 * tiles (fastest where Wasm loads have no explicit bounds checks: Node), or "staged", the 1-token tile
 * over a panel copy at a constant address (one checked load per 8 multiply-adds: workerd). Same bits. */
export type PackedF32Path = "tiles" | "staged";

export interface KernelOptions {
  /** Software cap on the whole linear memory, ≤ WASM_MAX_BYTES. */
  maxBytes?: number;
  /** Preferred int8 path of the relaxed build (taken if its probe passed, else the other relaxed
   * form at the same precision, else dot_i16x8). Default "relaxed_dot" (14-bit activations). */
  q8Path?: Q8Path;
  /**
   * The packed f32 kernels' multi-token path (simd and relaxed builds). Default here "tiles" (Node's
   * loadKernels keeps it); createKernels (src/kernels/workers.ts, every Worker and Durable Object)
   * passes "staged". Both give the same bits.
   */
  packedF32Path?: PackedF32Path;
}

/** scratchBytes kinds (assembly/index.ts). */
const SCRATCH_KIND = { ffnF32: 0, ffnQ8: 1, matmulQ8: 2, matmulPacked: 3 } as const;

export class Kernels {
  readonly flavor: KernelFlavor;
  readonly maxBytes: number;
  readonly #wasm: KernelExports;
  readonly #memory: WebAssembly.Memory;
  readonly #arena: Arena;

  private constructor(wasm: KernelExports, flavor: KernelFlavor, maxBytes: number) {
    this.#wasm = wasm;
    this.#memory = wasm.memory;
    this.flavor = flavor;
    this.maxBytes = maxBytes;
    this.#arena = new Arena(wasm.memory, wasm.heapBase(), maxBytes);
  }

  /**
   * Instantiates a compiled kernels module. `flavor` must match the build it came from (checked);
   * `maxBytes` is a software cap on the whole linear memory, ≤ WASM_MAX_BYTES.
   */
  static instantiate(module: WebAssembly.Module, flavor: KernelFlavor, opts: KernelOptions = {}): Kernels {
    const maxBytes = opts.maxBytes ?? WASM_MAX_BYTES;
    if (!Number.isInteger(maxBytes) || maxBytes <= 0 || maxBytes > WASM_MAX_BYTES) {
      throw new RangeError(`maxBytes must be an integer in 1..${WASM_MAX_BYTES}, got ${maxBytes}`);
    }
    // The loader supplies the env imports an AssemblyScript module may ask for; its wrapped exports
    // spread arguments on every call, so the kernels call the instance's raw exports instead.
    const { instance } = instantiateSync(module, {});
    const wasm = instance.exports as unknown as KernelExports;
    const built: KernelFlavor = wasm.relaxed() === 1 ? "relaxed" : wasm.simd() === 1 ? "simd" : "scalar";
    if (built !== flavor) {
      throw new Error(`kernel module is the ${built} build, but flavor "${flavor}" was asked for`);
    }
    const k = new Kernels(wasm, flavor, maxBytes);
    k.setPackedF32Path(opts.packedF32Path ?? "tiles");
    if (flavor === "relaxed") {
      [k.#formOk[1], k.#formOk[2]] = probeRelaxedForms(wasm, k.#arena);
      k.setQ8Path(opts.q8Path ?? "relaxed_dot");
      k.setQ4Relaxed(true);
    }
    return k;
  }

  /**
   * The fastest build that works here: relaxed when it instantiates (the runtime has relaxed SIMD)
   * and its multiply-add passes the probe, else simd, else scalar. `modules` maps flavors to
   * compiled modules; a missing or failing one is skipped.
   */
  static pick(modules: Partial<Record<KernelFlavor, () => WebAssembly.Module>>, opts: KernelOptions = {}): Kernels {
    return pickFirstWorking(modules, (module, flavor) => Kernels.instantiate(module, flavor, opts));
  }

  /** The int8 dot path in use (see Q8Path). */
  get q8Path(): Q8Path {
    return q8PathOfMode(this.#q8Mode);
  }

  #q8Mode = 0;
  /** Relaxed dot forms that passed the probe (index 1: i16x8 form, 2: dot-add form). */
  #formOk: boolean[] = [true, false, false];

  /** True when a relaxed int8 dot can be used here (relaxed build, a probe passed). */
  get relaxedDotAvailable(): boolean {
    return this.#formOk[1] || this.#formOk[2];
  }

  /** The int8 paths this instance can take. */
  get q8Paths(): Q8Path[] {
    return q8PathsFor(this.#formOk);
  }

  /** Chooses the int8 dot path: a relaxed form is taken only where its probe passed (else the
   * other form at the same precision, else dot_i16x8). Returns the path in use. */
  setQ8Path(path: Q8Path): Q8Path {
    this.#q8Mode = this.#wasm.setQ8Relaxed(q8ModeFor(path, this.#formOk));
    return this.q8Path;
  }

  /** Sum of the byte sizes asked for by live allocations. */
  get bytesInUse(): number {
    return this.#arena.bytesInUse;
  }

  /** Current size of the Wasm linear memory (what the isolate pays for); only ever grows. */
  get memoryBytes(): number {
    return this.#arena.memoryBytes;
  }

  /**
   * Reserves `bytes` (rounded up to 16) and returns a 16-byte-aligned pointer, never 0. Contents
   * are unspecified. May grow the memory, which detaches every view taken before the call.
   */
  alloc(bytes: number): number {
    return this.#arena.alloc(bytes);
  }

  /** Returns an allocation to the free list, merging it with free neighbours. */
  free(ptr: number): void {
    this.#arena.free(ptr);
  }

  /** Float32 view of [ptr, ptr + 4·len); valid until the next alloc (growth detaches it). */
  f32(ptr: number, len: number): Float32Array {
    return new Float32Array(this.#memory.buffer, ptr, len);
  }

  /** Byte view of [ptr, ptr + len); valid until the next alloc. */
  u8(ptr: number, len: number): Uint8Array {
    return new Uint8Array(this.#memory.buffer, ptr, len);
  }

  /** alloc + copy `values` in. */
  allocF32(values: Float32Array): number {
    const ptr = this.alloc(values.length * 4);
    this.f32(ptr, values.length).set(values);
    return ptr;
  }

  /** out[n, dOut] = x[n, dIn] · w[dOut, dIn]ᵀ. GEMV at n = 1; tiles of ≤ 4 tokens share each weight
   * load for small n. out must not overlap x or w. */
  matmul(out: number, x: number, w: number, n: number, dIn: number, dOut: number): void {
    this.#wasm.matmul(out, x, w, n, dIn, dOut);
  }

  /** out[n, d] = x · rsqrt(mean(x²) + eps) · w per row (HF order); out may equal x. */
  rmsnorm(out: number, x: number, w: number, n: number, d: number, eps: number): void {
    this.#wasm.rmsnorm(out, x, w, n, d, eps);
  }

  /** In-place RoPE on x [n, nHeads, headStride], rotating rotDim values from rotOffset in each head
   * with cos/sin [n, rotDim/2]. interleaved = false: pairs (i, i + rotDim/2) (HF rotate_half);
   * true: pairs (2i, 2i + 1). a' = a·cos − b·sin, b' = b·cos + a·sin. */
  rope(
    x: number,
    cos: number,
    sin: number,
    n: number,
    nHeads: number,
    headStride: number,
    rotOffset: number,
    rotDim: number,
    interleaved: boolean,
  ): void {
    this.#wasm.rope(x, cos, sin, n, nHeads, headStride, rotOffset, rotDim, interleaved ? 1 : 0);
  }

  /** In-place, max-subtracted softmax over each of `rows` rows of length `cols`. */
  softmax(x: number, rows: number, cols: number): void {
    this.#wasm.softmax(x, rows, cols);
  }

  /** out[i] = silu(gate[i]) · up[i]; out may equal gate or up. */
  siluMul(out: number, gate: number, up: number, len: number): void {
    this.#wasm.siluMul(out, gate, up, len);
  }

  /** SwiGLU expert: out[n, dModel] = (silu(x·w1ᵀ) ⊙ (x·w3ᵀ)) · w2ᵀ. w1, w3 [dFf, dModel];
   * w2 [dModel, dFf]; scratch ≥ 2·n·dFf floats. */
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
  ): void {
    this.#wasm.expertFfn(out, x, w1, w3, w2, n, dModel, dFf, scratch);
  }

  /** Causal GQA attention over a KV cache. q [nQ, nHeads, headDim]; k [kvLen, nKvHeads, headDim];
   * v [kvLen, nKvHeads, vHeadDim], kvLen = startPos + nQ; query i sees positions 0..startPos + i;
   * head h reads kv head floor(h / (nHeads / nKvHeads)). out [nQ, nHeads, vHeadDim];
   * scratch ≥ kvLen floats. */
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
  ): void {
    this.#wasm.attention(out, q, k, v, nQ, startPos, nHeads, nKvHeads, headDim, vHeadDim, scale, scratch);
  }

  /** out[n, dOut] = x[n, dIn] · wᵀ with w packed by packF32 (src/kernels/packing.ts);
   * scratch ≥ scratchBytes("matmulPacked", n, dIn, dOut). */
  matmulPacked(out: number, x: number, wp: number, n: number, dIn: number, dOut: number, scratch: number): void {
    this.#wasm.matmulPacked(out, x, wp, n, dIn, dOut, scratch);
  }

  /** SwiGLU expert on a blob from packExpertF32: gate and up in one pass over the fused panels,
   * then down. x, out [n, dModel]; scratch ≥ scratchBytes("ffnF32", n, dModel, dFf). */
  expertFfnPacked(out: number, x: number, blob: number, n: number, dModel: number, dFf: number, scratch: number): void {
    this.#wasm.expertFfnPacked(out, x, blob, n, dModel, dFf, scratch);
  }

  /**
   * Writes f32 rows j0 .. j0 + nRows - 1 (row-major at src, [nRows, cols]) into the panels at dst
   * (assembly/pack-f32.ts): padded row 8·(j / group) + j % group + rowOffset. Every byte of those rows'
   * panel blocks is written (tail columns as 0), so dst needs no clearing.
   */
  packRowsF32(
    dst: number,
    src: number,
    j0: number,
    nRows: number,
    cols: number,
    group: number,
    rowOffset: number,
  ): void {
    this.#wasm.packRowsF32(dst, src, j0, nRows, cols, group, rowOffset);
  }

  /** out[n, dOut] = x · wᵀ with w from packQ8; activations quantized per token inside (q8Path).
   * scratch ≥ scratchBytes("matmulQ8", n, dIn, dOut). */
  matmulQ8(out: number, x: number, wq: number, n: number, dIn: number, dOut: number, scratch: number): void {
    this.#wasm.matmulQ8(out, x, wq, n, dIn, dOut, scratch);
  }

  /** SwiGLU expert on a blob from packExpertQ8 (int8 weights, per-row scales).
   * scratch ≥ scratchBytes("ffnQ8", n, dModel, dFf). */
  expertFfnQ8(out: number, x: number, blob: number, n: number, dModel: number, dFf: number, scratch: number): void {
    this.#wasm.expertFfnQ8(out, x, blob, n, dModel, dFf, scratch);
  }

  /** Scratch bytes the packed kernels need for n tokens (a, b = dModel, dFf or dIn, dOut). */
  scratchBytes(kind: keyof typeof SCRATCH_KIND, n: number, a: number, b: number): number {
    return this.#wasm.scratchBytes(SCRATCH_KIND[kind], n, a, b) >>> 0;
  }

  /**
   * out[n, m.rows] = x[n, m.cols] · Wᵀ for a dense stage matrix (src/kernels/dense.ts loads it):
   * f32 → `matmul`; bf16 widened in-kernel; int8 with per-group scales and 16-bit per-token
   * activations. scratch ≥ denseScratchBytes(m, n) bytes (0 for f32/bf16: pass 0). out must not
   * overlap x, W or scratch.
   */
  matmulDense(m: DenseMatrix, out: number, x: number, n: number, scratch: number): void {
    if (m.format === "f32") this.#wasm.matmul(out, x, m.ptr, n, m.cols, m.rows);
    else if (m.format === "bf16") this.#wasm.matmulBf16(out, x, m.ptr, n, m.cols, m.rows);
    else this.#wasm.matmulQ8g(out, x, m.ptr, n, m.cols, m.rows, m.group, scratch);
  }

  /**
   * out[count, m.cols] = rows ids[0..count) of W as f32 (embeddings, tied heads): bf16 and f32
   * exact, int8 = f32(scale · q). `ids` points at count i32 row indices; each must be < m.rows
   * (checked here: a bad id would read another tensor's bytes).
   */
  gatherDense(m: DenseMatrix, out: number, ids: number, count: number): void {
    const idv = new Int32Array(this.#memory.buffer, ids, count);
    for (let c = 0; c < count; c++) {
      if (!(idv[c] >= 0 && idv[c] < m.rows)) {
        throw new RangeError(`gatherDense: row id ${idv[c]} out of range 0..${m.rows - 1}`);
      }
    }
    if (m.format === "int8") this.#wasm.gatherQ8g(out, m.ptr, ids, count, m.rows, m.cols, m.group);
    else if (m.format === "bf16") this.#wasm.gatherBf16(out, m.ptr, ids, count, m.rows, m.cols);
    else {
      const heap = new Float32Array(this.#memory.buffer);
      for (let c = 0; c < count; c++) {
        const from = (m.ptr >> 2) + idv[c] * m.cols;
        heap.copyWithin((out >> 2) + c * m.cols, from, from + m.cols);
      }
    }
  }

  /**
   * Greedy over logits y[n, rows] (f32): maxOut[t] (f32) = the largest of row t, each value ÷ scale
   * as `Float32Array[i] /= scale` computes it, and idxOut[t] (i32) its index — the first on ties; a
   * NaN is never picked unless it is at index 0 (the scan `v[j] > v[best]`, bit for bit).
   */
  argmaxRows(maxOut: number, idxOut: number, y: number, n: number, rows: number, scale = 1): void {
    if (!(rows >= 1)) throw new RangeError(`argmaxRows: rows must be ≥ 1, got ${rows}`);
    this.#wasm.argmaxRows(maxOut, idxOut, y, n, rows, scale);
  }

  /** SwiGLU expert on a blob from packExpertQ8g (int8 weights, one scale per `group` inputs,
   * 16-bit activations). scratch ≥ expertQ8gScratchBytes(n, dModel, dFf, group). */
  expertFfnQ8g(
    out: number,
    x: number,
    blob: number,
    n: number,
    dModel: number,
    dFf: number,
    group: number,
    scratch: number,
  ): void {
    this.#wasm.expertFfnQ8g(out, x, blob, n, dModel, dFf, group, scratch);
  }

  /** SwiGLU expert on a blob from packExpertQ4g (4-bit weights, one scale per `group` inputs held as
   * a per-row f32 unit times integer sub-scales, 8-bit activations).
   * scratch ≥ expertQ4gScratchBytes(n, dModel, dFf, group). */
  expertFfnQ4g(
    out: number,
    x: number,
    blob: number,
    n: number,
    dModel: number,
    dFf: number,
    group: number,
    scratch: number,
  ): void {
    this.#wasm.expertFfnQ4g(out, x, blob, n, dModel, dFf, group, scratch);
  }

  /** Selects the packed f32 kernels' multi-token path (PackedF32Path); the scalar build has only one.
   * Rows are bit-identical either way. Returns the path in use. */
  setPackedF32Path(path: PackedF32Path): PackedF32Path {
    return this.#wasm.setPackedStaged(path === "staged" ? 1 : 0) === 1 ? "staged" : "tiles";
  }

  /** The packed f32 kernels' multi-token path in use. */
  get packedF32Path(): PackedF32Path {
    return this.#wasm.setPackedStaged(-1) === 1 ? "staged" : "tiles";
  }

  /** Activation bits of expertFfnQ4g: 8 on every build and path (its results do not depend on either). */
  get q4ActivationBits(): number {
    return this.#wasm.q4ActivationBits();
  }

  /** Runs expertFfnQ4g on a relaxed dot form that passed the probe — `form` if it did ("i16": the
   * i16x8 dot, the default; "dot-add": the i32x4 dot-add, one AVX-VNNI instruction where V8 has it),
   * else the other — or on plain SIMD when `on` is false or none passed; independent of the int8
   * path (setQ8Path). Same results either way (exact integer sums); returns whether a relaxed form
   * is in use. */
  setQ4Relaxed(on: boolean, form: Q4DotForm = "i16"): boolean {
    const [first, second] = form === "dot-add" ? [2, 1] : [1, 2];
    const pick = !on ? 0 : this.#formOk[first] ? first : this.#formOk[second] ? second : 0;
    return this.#wasm.setQ4DotForm(pick) > 0;
  }

  /** The int4 kernel's dot form in use: "i16", "dot-add" or "simd" (plain SIMD or scalar build). */
  get q4DotForm(): Q4DotForm | "simd" {
    const form = this.#wasm.setQ4DotForm(-1);
    return form === 1 ? "i16" : form === 2 ? "dot-add" : "simd";
  }

  /** iters steps of 64 FLOPs of register-only f32x4 multiply-adds: the SIMD compute ceiling probe. */
  simdPeak(iters: number): number {
    return this.#wasm.simdPeak(iters, 1e-3);
  }

  /** iters steps of 8 int8 dot chains in one instruction form — 0: dot_i16x8 (64 multiply-adds a
   * step), 1: relaxed i16x8 form, 2: relaxed dot-add (128 a step; returns 0 at once outside the
   * relaxed build) — weights loaded from w (144 bytes: 8 weight vectors, then the activations; kept in
   * L1 by the caller): the int8 compute ceiling probe. */
  int8Peak(form: 0 | 1 | 2, iters: number, w: number): number {
    return this.#wasm.int8Peak(form, iters, w);
  }

  /** reps calls of the int8 batch tile (4 tokens × 2 rows over kBlocks k-blocks of 16 inputs, the
   * current q8Path) on a panel and x rows the caller keeps small enough for L1: the kernel's own
   * instruction mix without memory traffic, 128·kBlocks multiply-adds a call. */
  q8TilePeak(xq: number, xqRow: number, panel: number, kBlocks: number, reps: number): number {
    return this.#wasm.q8TilePeak(xq, xqRow, panel, kBlocks, reps);
  }

  /** Reads [ptr, ptr + bytes) once (bytes a multiple of 64): the memory-bandwidth probe. */
  streamRead(ptr: number, bytes: number): number {
    return this.#wasm.streamRead(ptr, bytes);
  }
}
