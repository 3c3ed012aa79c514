/**
 * @module kernels — the typed face of the Wasm kernels (assembly/), and the allocator that owns
 * their linear memory.
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
 * `pickKernels` falls back to simd when relaxed SIMD is missing or its multiply-add is wrong.
 */
import { instantiateSync } from "@assemblyscript/loader";
import type { DenseMatrix } from "./dense-format";

export type KernelFlavor = "scalar" | "simd" | "relaxed";

/**
 * Which integer dot the int8 kernels use, and so how finely activations are quantized per token:
 *  - "dot_i16x8": i32x4.dot_i16x8_s on activations widened to i16 — 12-bit activations at the cost
 *    of 8 (scalar and simd builds, and relaxed where its probes failed);
 *  - relaxed i8×i7 dots on 7-bit unsigned digits (assembly/q8.ts rdot), in two instruction forms:
 *    "relaxed_dot" (i32x4.relaxed_dot_i8x16_i7x16_add_s: one vpdpbusd where V8 uses AVX-VNNI, as
 *    workerd's does) and "relaxed_dot_i16" (i16x8 dot + extadd: faster on Node 22's V8 12);
 *    by default with 14-bit activations as two digits (two dots per weight vector), or with the
 *    "_7bit" variants one digit (half the dots, about 4× the activation error).
 * The two forms give identical results; accuracy: see tests/unit/kernels/packed-contract.ts.
 */
export type Q8Path = "dot_i16x8" | "relaxed_dot" | "relaxed_dot_i16" | "relaxed_dot_7bit" | "relaxed_dot_i16_7bit";

/** Wasm setQ8Relaxed modes. */
const Q8_MODE: Record<Q8Path, number> = { dot_i16x8: 0, relaxed_dot_i16_7bit: 1, relaxed_dot_7bit: 2, relaxed_dot_i16: 3, relaxed_dot: 4 };
const Q8_PATH_OF_MODE: Q8Path[] = ["dot_i16x8", "relaxed_dot_i16_7bit", "relaxed_dot_7bit", "relaxed_dot_i16", "relaxed_dot"];
/** Instruction form a mode needs (1: i16x8 form, 2: dot-add form; 0: plain). */
const FORM_OF_MODE = [0, 1, 2, 1, 2];

/** Activation bits of an int8 path for rows of `kPad` values (dot_i16x8 keeps the i32 sum exact). */
export function q8ActivationBits(path: Q8Path, kPad = 0): number {
  if (path === "dot_i16x8") return kPad > 8256 ? Math.floor(Math.log2(Math.floor(2147483647 / (127 * kPad)) + 1)) + 1 : 12;
  return path.endsWith("_7bit") ? 7 : 14;
}

export interface KernelOptions {
  /** Software cap on the whole linear memory, ≤ WASM_MAX_BYTES. */
  maxBytes?: number;
  /** Preferred int8 path of the relaxed build (taken if its probe passed, else the other relaxed
   * form at the same precision, else dot_i16x8). Default "relaxed_dot" (14-bit activations). */
  q8Path?: Q8Path;
}

/** The relaxed build's start-up check failed: the runtime's relaxed f32x4.relaxed_madd is wrong. */
export class RelaxedProbeError extends Error {
  override readonly name = "RelaxedProbeError";
}

/** Per-isolate Wasm memory cap the code is built around: 1664 pages of 64 KiB = 104 MiB
 * (scripts/build-wasm.mjs passes the same `--maximumMemory`). */
export const WASM_MAX_BYTES = 1664 * 65536;

const PAGE_BYTES = 65536;
/** Every allocation starts and ends on a 16-byte boundary, so f32x4 loads never straddle two. */
const ALIGN = 16;
/** Grow memory at least this much at a time: each grow detaches every view, keep them rare. */
const MIN_GROW_PAGES = 16;

/** An allocation would take the Wasm memory past its budget. */
export class MemoryBudgetError extends Error {
  override readonly name = "MemoryBudgetError";
  constructor(
    readonly requestedBytes: number,
    readonly bytesInUse: number,
    readonly limitBytes: number,
  ) {
    super(
      `Wasm memory budget exceeded: requested ${requestedBytes} bytes with ${bytesInUse} bytes in use, ` +
        `limit ${limitBytes} bytes. Free buffers, hold fewer weights, or raise maxBytes (≤ ${WASM_MAX_BYTES}).`,
    );
  }
}

/** The raw exports of assembly/index.ts (pointers and sizes are i32, eps/scale f32). */
type KernelExports = {
  memory: WebAssembly.Memory;
  heapBase(): number;
  simd(): number;
  relaxed(): number;
  matmul(out: number, x: number, w: number, n: number, dIn: number, dOut: number): void;
  rmsnorm(out: number, x: number, w: number, n: number, d: number, eps: number): void;
  rope(
    x: number, cos: number, sin: number, n: number, nHeads: number, headStride: number,
    rotOffset: number, rotDim: number, interleaved: number,
  ): void;
  softmax(x: number, rows: number, cols: number): void;
  siluMul(out: number, gate: number, up: number, len: number): void;
  expertFfn(
    out: number, x: number, w1: number, w3: number, w2: number,
    n: number, dModel: number, dFf: number, scratch: number,
  ): void;
  attention(
    out: number, q: number, k: number, v: number, nQ: number, startPos: number, nHeads: number,
    nKvHeads: number, headDim: number, vHeadDim: number, scale: number, scratch: number,
  ): void;
  matmulPacked(out: number, x: number, wp: number, n: number, dIn: number, dOut: number, scratch: number): void;
  expertFfnPacked(out: number, x: number, blob: number, n: number, dModel: number, dFf: number, scratch: number): void;
  matmulQ8(out: number, x: number, wq: number, n: number, dIn: number, dOut: number, scratch: number): void;
  expertFfnQ8(out: number, x: number, blob: number, n: number, dModel: number, dFf: number, scratch: number): void;
  setQ8Relaxed(on: number): number;
  probeRelaxed(out: number, a: number, b: number, c: number): number;
  streamRead(ptr: number, bytes: number): number;
  simdPeak(iters: number, seed: number): number;
  scratchBytes(kind: number, n: number, a: number, b: number): number;
  matmulQ8g(
    out: number, x: number, w: number, n: number, dIn: number, dOut: number, group: number, scratch: number,
  ): void;
  matmulBf16(out: number, x: number, w: number, n: number, dIn: number, dOut: number): void;
  gatherQ8g(out: number, w: number, ids: number, count: number, rows: number, cols: number, group: number): void;
  gatherBf16(out: number, w: number, ids: number, count: number, rows: number, cols: number): void;
  expertFfnQ8g(
    out: number, x: number, blob: number, n: number, dModel: number, dFf: number, group: number, scratch: number,
  ): void;
  expertFfnQ4g(
    out: number, x: number, blob: number, n: number, dModel: number, dFf: number, group: number, scratch: number,
  ): void;
  q4ActivationBits(): number;
};

/** scratchBytes kinds (assembly/index.ts). */
const SCRATCH_KIND = { ffnF32: 0, ffnQ8: 1, matmulQ8: 2, matmulPacked: 3 } as const;

/** Fixed pseudo-random test vectors (the probe must give the same verdict on every start). */
function probeRng(): () => number {
  let seed = 0x9e3779b9;
  return () => {
    seed = (Math.imul(seed ^ (seed >>> 15), 0x2c1b3c6d) + 0x6b43a9b5) >>> 0;
    return seed;
  };
}

/**
 * True when `dot(a, b, c)` — lane l = c[l] + Σ_m a[4l + m]·b[4l + m], a signed 8-bit, b 7-bit —
 * is exact on 64 vectors: the extremes (−128·127, where treating a as unsigned, a swapped-operand
 * bug, shows) and random ones.
 */
export function relaxedDotAgrees(dot: (a: Int8Array, b: Int8Array, c: Int32Array) => Int32Array): boolean {
  const next = probeRng();
  for (let trial = 0; trial < 64; trial++) {
    const a = new Int8Array(16);
    const b = new Int8Array(16);
    const c = new Int32Array(4);
    for (let i = 0; i < 16; i++) {
      a[i] = trial === 0 ? -128 : trial === 1 ? 127 : (next() & 0xff) - 128;
      b[i] = trial < 2 ? 127 : next() & 0x7f;
    }
    for (let l = 0; l < 4; l++) c[l] = (next() | 0) >> 8;
    const got = dot(a, b, c);
    for (let l = 0; l < 4; l++) {
      let want = c[l];
      for (let m = 0; m < 4; m++) want += a[4 * l + m] * b[4 * l + m];
      if (got[l] !== want) return false;
    }
  }
  return true;
}

/** True when `madd(a, b, c)` equals a·b + c rounded once (fused) or twice, lane by lane, on 16
 * random vectors. */
export function relaxedMaddAgrees(madd: (a: Float32Array, b: Float32Array, c: Float32Array) => Float32Array): boolean {
  const next = probeRng();
  const r = () => ((next() / 4294967296) * 2 - 1) * 8;
  for (let trial = 0; trial < 16; trial++) {
    const [a, b, c] = [0, 1, 2].map(() => Float32Array.from({ length: 4 }, r));
    const got = madd(a, b, c);
    for (let l = 0; l < 4; l++) {
      const fused = Math.fround(a[l] * b[l] + c[l]);
      const twice = Math.fround(Math.fround(a[l] * b[l]) + c[l]);
      if (got[l] !== fused && got[l] !== twice) return false;
    }
  }
  return true;
}

/** A free block [ptr, ptr + size); the free list is kept sorted by ptr and fully coalesced. */
type Block = { ptr: number; size: number };

export class Kernels {
  readonly flavor: KernelFlavor;
  readonly maxBytes: number;
  readonly #wasm: KernelExports;
  readonly #memory: WebAssembly.Memory;
  /** End of the highest block ever handed out and not returned; memory above it is untouched. */
  #top: number;
  readonly #free: Block[] = [];
  /** ptr → [rounded size, requested bytes] */
  readonly #live = new Map<number, [number, number]>();
  #inUse = 0;

  private constructor(wasm: KernelExports, flavor: KernelFlavor, maxBytes: number) {
    this.#wasm = wasm;
    this.#memory = wasm.memory;
    this.flavor = flavor;
    this.maxBytes = maxBytes;
    // Static data (exp tables) ends at heapBase; pointer 0 stays reserved so 0 can mean "none".
    this.#top = Math.max(ALIGN, alignUp(wasm.heapBase(), ALIGN));
  }

  /**
   * Instantiates a compiled kernels module. `flavor` must match the build it came from (checked);
   * `maxBytes` is a software cap on the whole linear memory, ≤ WASM_MAX_BYTES.
   */
  static instantiate(
    module: WebAssembly.Module,
    flavor: KernelFlavor,
    opts: KernelOptions = {},
  ): Kernels {
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
    if (flavor === "relaxed") {
      k.#probeRelaxed();
      k.setQ8Path(opts.q8Path ?? "relaxed_dot");
    }
    return k;
  }

  /**
   * The fastest build that works here: relaxed when it instantiates (the runtime has relaxed SIMD)
   * and its multiply-add passes the probe, else simd, else scalar. `modules` maps flavors to
   * compiled modules; a missing or failing one is skipped.
   */
  static pick(
    modules: Partial<Record<KernelFlavor, () => WebAssembly.Module>>,
    opts: KernelOptions = {},
  ): Kernels {
    const errors: string[] = [];
    for (const flavor of ["relaxed", "simd", "scalar"] as const) {
      const get = modules[flavor];
      if (!get) continue;
      try {
        return Kernels.instantiate(get(), flavor, opts);
      } catch (err) {
        if (err instanceof RangeError) throw err; // a bad maxBytes is the caller's, not the build's
        errors.push(`${flavor}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    throw new Error(`no kernel build works in this runtime (${errors.join("; ")})`);
  }

  /** The int8 dot path in use (see Q8Path). */
  get q8Path(): Q8Path {
    return Q8_PATH_OF_MODE[this.#q8Mode];
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
    return Q8_PATH_OF_MODE.filter((_, mode) => this.#formOk[FORM_OF_MODE[mode]]);
  }

  /** Chooses the int8 dot path: a relaxed form is taken only where its probe passed (else the
   * other form at the same precision, else dot_i16x8). Returns the path in use. */
  setQ8Path(path: Q8Path): Q8Path {
    let mode = Q8_MODE[path];
    if (!this.#formOk[FORM_OF_MODE[mode]]) {
      const other = mode % 2 === 1 ? mode + 1 : mode - 1; // same precision, other form
      mode = mode !== 0 && this.#formOk[FORM_OF_MODE[other]] ? other : 0;
    }
    this.#q8Mode = this.#wasm.setQ8Relaxed(mode);
    return this.q8Path;
  }

  /**
   * Checks the relaxed instructions against exact arithmetic on fixed pseudo-random inputs:
   * relaxed_madd must equal a·b + c rounded once or twice; each relaxed i8×i7 dot form must equal
   * the exact integer dot for signed a and 7-bit b. A wrong madd throws (use another build); a
   * wrong dot form is never used (a V8 bug returns wrong values in some Node versions).
   */
  #probeRelaxed(): void {
    const buf = this.alloc(96);
    try {
      const [a, b, c, out] = [buf, buf + 16, buf + 32, buf + 48];
      const run = (x: ArrayBufferView, y: ArrayBufferView, z: ArrayBufferView) => {
        this.u8(a, 16).set(new Uint8Array(x.buffer, x.byteOffset, 16));
        this.u8(b, 16).set(new Uint8Array(y.buffer, y.byteOffset, 16));
        this.u8(c, 16).set(new Uint8Array(z.buffer, z.byteOffset, 16));
        this.#wasm.probeRelaxed(out, a, b, c);
        return new Uint8Array(this.#memory.buffer, out, 48).slice();
      };
      const maddOk = relaxedMaddAgrees((x, y, z) => new Float32Array(run(x, y, z).buffer, 16, 4));
      if (!maddOk) throw new RelaxedProbeError("f32x4.relaxed_madd disagrees with a·b + c in this runtime");
      this.#formOk[1] = relaxedDotAgrees((x, y, z) => new Int32Array(run(x, y, z).buffer, 0, 4));
      this.#formOk[2] = relaxedDotAgrees((x, y, z) => new Int32Array(run(x, y, z).buffer, 32, 4));
    } finally {
      this.free(buf);
    }
  }

  /** Sum of the byte sizes asked for by live allocations. */
  get bytesInUse(): number {
    return this.#inUse;
  }

  /** Current size of the Wasm linear memory (what the isolate pays for); only ever grows. */
  get memoryBytes(): number {
    return this.#memory.buffer.byteLength;
  }

  /**
   * Reserves `bytes` (rounded up to 16) and returns a 16-byte-aligned pointer, never 0. Contents
   * are unspecified. May grow the memory, which detaches every view taken before the call.
   */
  alloc(bytes: number): number {
    if (!Number.isInteger(bytes) || bytes < 0) {
      throw new RangeError(`alloc: bytes must be a non-negative integer, got ${bytes}`);
    }
    const size = Math.max(ALIGN, alignUp(bytes, ALIGN));
    let ptr = this.#takeFree(size);
    if (ptr === 0) ptr = this.#takeTop(size, bytes);
    this.#live.set(ptr, [size, bytes]);
    this.#inUse += bytes;
    return ptr;
  }

  /** Returns an allocation to the free list, merging it with free neighbours. */
  free(ptr: number): void {
    const entry = this.#live.get(ptr);
    if (entry === undefined) throw new Error(`free: ${ptr} is not a live allocation`);
    this.#live.delete(ptr);
    const [size, requested] = entry;
    this.#inUse -= requested;
    const free = this.#free;
    if (ptr + size === this.#top) {
      // Give the block back to the top, and the free block below it if they now touch.
      this.#top = ptr;
      const last = free[free.length - 1];
      if (last !== undefined && last.ptr + last.size === ptr) {
        this.#top = last.ptr;
        free.pop();
      }
      return;
    }
    // Binary search for the first block above ptr.
    let lo = 0;
    let hi = free.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (free[mid].ptr < ptr) lo = mid + 1;
      else hi = mid;
    }
    const prev = free[lo - 1];
    const next = free[lo];
    const joinPrev = prev !== undefined && prev.ptr + prev.size === ptr;
    const joinNext = next !== undefined && ptr + size === next.ptr;
    if (joinPrev && joinNext) {
      prev.size += size + next.size;
      free.splice(lo, 1);
    } else if (joinPrev) {
      prev.size += size;
    } else if (joinNext) {
      next.ptr = ptr;
      next.size += size;
    } else {
      free.splice(lo, 0, { ptr, size });
    }
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
    x: number, cos: number, sin: number, n: number, nHeads: number, headStride: number,
    rotOffset: number, rotDim: number, interleaved: boolean,
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
    out: number, x: number, w1: number, w3: number, w2: number,
    n: number, dModel: number, dFf: number, scratch: number,
  ): void {
    this.#wasm.expertFfn(out, x, w1, w3, w2, n, dModel, dFf, scratch);
  }

  /** Causal GQA attention over a KV cache. q [nQ, nHeads, headDim]; k [kvLen, nKvHeads, headDim];
   * v [kvLen, nKvHeads, vHeadDim], kvLen = startPos + nQ; query i sees positions 0..startPos + i;
   * head h reads kv head floor(h / (nHeads / nKvHeads)). out [nQ, nHeads, vHeadDim];
   * scratch ≥ kvLen floats. */
  attention(
    out: number, q: number, k: number, v: number, nQ: number, startPos: number, nHeads: number,
    nKvHeads: number, headDim: number, vHeadDim: number, scale: number, scratch: number,
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

  /** SwiGLU expert on a blob from packExpertQ8g (int8 weights, one scale per `group` inputs,
   * 16-bit activations). scratch ≥ expertQ8gScratchBytes(n, dModel, dFf, group). */
  expertFfnQ8g(
    out: number, x: number, blob: number, n: number, dModel: number, dFf: number, group: number, scratch: number,
  ): void {
    this.#wasm.expertFfnQ8g(out, x, blob, n, dModel, dFf, group, scratch);
  }

  /** SwiGLU expert on a blob from packExpertQ4g (4-bit weights, one bf16 scale per `group` inputs,
   * q4ActivationBits-bit activations). scratch ≥ expertQ4gScratchBytes(n, dModel, dFf, group). */
  expertFfnQ4g(
    out: number, x: number, blob: number, n: number, dModel: number, dFf: number, group: number, scratch: number,
  ): void {
    this.#wasm.expertFfnQ4g(out, x, blob, n, dModel, dFf, group, scratch);
  }

  /** Activation bits expertFfnQ4g uses now: 8 while a relaxed int8 dot path is on (it runs on the
   * relaxed i8×i7 dot), else 16. */
  get q4ActivationBits(): number {
    return this.#wasm.q4ActivationBits();
  }

  /** iters steps of 64 FLOPs of register-only f32x4 multiply-adds: the SIMD compute ceiling probe. */
  simdPeak(iters: number): number {
    return this.#wasm.simdPeak(iters, 1e-3);
  }

  /** Reads [ptr, ptr + bytes) once (bytes a multiple of 64): the memory-bandwidth probe. */
  streamRead(ptr: number, bytes: number): number {
    return this.#wasm.streamRead(ptr, bytes);
  }

  /** First fit from the free list; 0 when no free block is big enough. */
  #takeFree(size: number): number {
    const free = this.#free;
    for (let i = 0; i < free.length; i++) {
      const block = free[i];
      if (block.size < size) continue;
      const ptr = block.ptr;
      if (block.size === size) free.splice(i, 1);
      else {
        block.ptr += size;
        block.size -= size;
      }
      return ptr;
    }
    return 0;
  }

  /** Carves `size` bytes off the top, growing the memory when needed. */
  #takeTop(size: number, requested: number): number {
    const ptr = this.#top;
    const end = ptr + size;
    if (end > this.maxBytes) throw new MemoryBudgetError(requested, this.#inUse, this.maxBytes);
    const have = this.#memory.buffer.byteLength;
    if (end > have) {
      const havePages = have / PAGE_BYTES;
      const needPages = Math.ceil(end / PAGE_BYTES);
      const capPages = Math.floor(this.maxBytes / PAGE_BYTES);
      const chunkPages = Math.min(Math.max(needPages, havePages + MIN_GROW_PAGES), Math.max(capPages, needPages));
      if (!this.#grow(chunkPages - havePages) && !this.#grow(needPages - havePages)) {
        // The module's own --maximumMemory (or the engine) refused: report what it did allow.
        throw new MemoryBudgetError(requested, this.#inUse, have);
      }
    }
    this.#top = end;
    return ptr;
  }

  #grow(deltaPages: number): boolean {
    try {
      this.#memory.grow(deltaPages);
      return true;
    } catch {
      return false;
    }
  }
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
