/**
 * @module Choosing what this runtime can run: which kernel build (flavor) works, whether the relaxed
 * build's instructions agree with exact arithmetic (a V8 bug returns wrong relaxed int8 dots in some
 * Node versions), and which int8 dot path (Q8Path) to take given the probes that passed.
 */
import type { Arena } from "./arena";
import type { KernelExports } from "./wasm-exports";

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
const Q8_MODE: Record<Q8Path, number> = {
  dot_i16x8: 0,
  relaxed_dot_i16_7bit: 1,
  relaxed_dot_7bit: 2,
  relaxed_dot_i16: 3,
  relaxed_dot: 4,
};
const Q8_PATH_OF_MODE: Q8Path[] = [
  "dot_i16x8",
  "relaxed_dot_i16_7bit",
  "relaxed_dot_7bit",
  "relaxed_dot_i16",
  "relaxed_dot",
];
/** Instruction form a mode needs (1: i16x8 form, 2: dot-add form; 0: plain). */
const FORM_OF_MODE = [0, 1, 2, 1, 2];

/** Activation bits of an int8 path for rows of `kPad` values (dot_i16x8 keeps the i32 sum exact). */
export function q8ActivationBits(path: Q8Path, kPad = 0): number {
  if (path === "dot_i16x8")
    return kPad > 8256 ? Math.floor(Math.log2(Math.floor(2147483647 / (127 * kPad)) + 1)) + 1 : 12;
  return path.endsWith("_7bit") ? 7 : 14;
}

/** The int8 path of a Wasm setQ8Relaxed mode. */
export function q8PathOfMode(mode: number): Q8Path {
  return Q8_PATH_OF_MODE[mode];
}

/** The int8 paths open when `formOk[f]` says which instruction forms passed (index 0: plain, always). */
export function q8PathsFor(formOk: readonly boolean[]): Q8Path[] {
  return Q8_PATH_OF_MODE.filter((_, mode) => formOk[FORM_OF_MODE[mode]]);
}

/** The setQ8Relaxed mode for a wanted path: its own if its form passed, else the other form at the
 * same precision if that passed, else dot_i16x8 (mode 0). */
export function q8ModeFor(path: Q8Path, formOk: readonly boolean[]): number {
  let mode = Q8_MODE[path];
  if (!formOk[FORM_OF_MODE[mode]]) {
    const other = mode % 2 === 1 ? mode + 1 : mode - 1; // same precision, other form
    mode = mode !== 0 && formOk[FORM_OF_MODE[other]] ? other : 0;
  }
  return mode;
}

/** The relaxed build's start-up check failed: the runtime's relaxed f32x4.relaxed_madd is wrong. */
export class RelaxedProbeError extends Error {
  override readonly name = "RelaxedProbeError";
}

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

/**
 * Checks the relaxed instructions against exact arithmetic on fixed pseudo-random inputs:
 * relaxed_madd must equal a·b + c rounded once or twice; each relaxed i8×i7 dot form must equal
 * the exact integer dot for signed a and 7-bit b. A wrong madd throws RelaxedProbeError (use another
 * build); returns which dot forms agree ([i16x8 form, dot-add form]) — a wrong one is never used.
 * Takes 96 bytes from `arena` for the duration of the probe.
 */
export function probeRelaxedForms(wasm: KernelExports, arena: Arena): [boolean, boolean] {
  const buf = arena.alloc(96);
  try {
    const [a, b, c, out] = [buf, buf + 16, buf + 32, buf + 48];
    const u8 = (ptr: number, len: number) => new Uint8Array(wasm.memory.buffer, ptr, len);
    const run = (x: ArrayBufferView, y: ArrayBufferView, z: ArrayBufferView) => {
      u8(a, 16).set(new Uint8Array(x.buffer, x.byteOffset, 16));
      u8(b, 16).set(new Uint8Array(y.buffer, y.byteOffset, 16));
      u8(c, 16).set(new Uint8Array(z.buffer, z.byteOffset, 16));
      wasm.probeRelaxed(out, a, b, c);
      return new Uint8Array(wasm.memory.buffer, out, 48).slice();
    };
    const maddOk = relaxedMaddAgrees((x, y, z) => new Float32Array(run(x, y, z).buffer, 16, 4));
    if (!maddOk) throw new RelaxedProbeError("f32x4.relaxed_madd disagrees with a·b + c in this runtime");
    return [
      relaxedDotAgrees((x, y, z) => new Int32Array(run(x, y, z).buffer, 0, 4)),
      relaxedDotAgrees((x, y, z) => new Int32Array(run(x, y, z).buffer, 32, 4)),
    ];
  } finally {
    arena.free(buf);
  }
}

/**
 * The first of relaxed, simd, scalar whose module `make` accepts: `modules` maps flavors to compiled
 * modules; a missing one is skipped, and so is one whose `make` throws — except a RangeError (a bad
 * option is the caller's, not the build's), which is thrown on.
 */
export function pickFirstWorking<T>(
  modules: Partial<Record<KernelFlavor, () => WebAssembly.Module>>,
  make: (module: WebAssembly.Module, flavor: KernelFlavor) => T,
): T {
  const errors: string[] = [];
  for (const flavor of ["relaxed", "simd", "scalar"] as const) {
    const get = modules[flavor];
    if (!get) continue;
    try {
      return make(get(), flavor);
    } catch (err) {
      if (err instanceof RangeError) throw err; // a bad maxBytes is the caller's, not the build's
      errors.push(`${flavor}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  throw new Error(`no kernel build works in this runtime (${errors.join("; ")})`);
}
