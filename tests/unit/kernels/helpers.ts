/**
 * @module helpers — test data and checks shared by the kernel suites: a seeded generator, random
 * tensors, a relative-error check that names the worst index, and output buffers fenced by canaries.
 */
import { expect } from "vitest";
import type { KernelFlavor, Kernels } from "../../../src/kernels/index";
import { createRng as rng } from "../../../src/serving/sampling";

/** Where a suite gets its kernels: Node reads build/, workerd imports the compiled modules. */
export interface KernelSource {
  load(flavor: KernelFlavor, opts?: { maxBytes?: number }): Kernels;
  module(flavor: KernelFlavor): WebAssembly.Module;
  /** The runtime can compile this build (relaxed SIMD is not everywhere). */
  supports(flavor: KernelFlavor): boolean;
}

/** Written around every output buffer; a kernel that writes past its tensor changes it. */
export const GUARD = 4;
const CANARY = -12345.5;

/** Seeded test data: the project's one PRNG (mulberry32). */
export { rng };

/** len uniform values in [-scale, scale). */
export function randn(next: () => number, len: number, scale = 1): Float32Array {
  const a = new Float32Array(len);
  for (let i = 0; i < len; i++) a[i] = (next() * 2 - 1) * scale;
  return a;
}

/** Largest |got − want| / (1 + |want|) must stay ≤ tol; names the first offending index. */
export function expectClose(got: Float32Array, want: Float32Array, tol: number, what: string): void {
  expect(got.length, `${what}: length`).toBe(want.length);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < want.length; i++) {
    // NaN compares false both ways: let it win once and never be replaced.
    const err = Math.abs(got[i] - want[i]) / (1 + Math.abs(want[i]));
    if (err > worst || (Number.isNaN(err) && !Number.isNaN(worst))) {
      worst = err;
      at = i;
    }
    if (Number.isNaN(worst)) break;
  }
  if (!(worst <= tol)) {
    expect.fail(
      `${what}: index ${at} got ${got[at]}, want ${want[at]} ` +
        `(rel err ${worst.toExponential(2)} > ${tol.toExponential(2)})`,
    );
  }
}

/** Output tensor with canaries on both sides; read() checks them and returns a copy. */
export function guarded(k: Kernels, len: number): { ptr: number; read(): Float32Array } {
  const base = k.alloc((len + 2 * GUARD) * 4);
  k.f32(base, len + 2 * GUARD).fill(CANARY);
  const ptr = base + GUARD * 4;
  return {
    ptr,
    read() {
      const all = k.f32(base, len + 2 * GUARD);
      for (let i = 0; i < GUARD; i++) {
        expect(all[i], "guard before the output was overwritten").toBe(CANARY);
        expect(all[GUARD + len + i], "guard after the output was overwritten").toBe(CANARY);
      }
      return all.slice(GUARD, GUARD + len);
    },
  };
}
