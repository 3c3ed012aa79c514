/**
 * @module group-expert-runner — what the group-quantized expert contracts (int8 groups in
 * ./expert-q8g-contract.ts, 4-bit groups in ./expert-q4g-contract.ts) share: packing a random
 * expert into Wasm memory, running the kernel between guard zones, and the one case that holds the
 * kernel to its reference twin and to the f32 expert.
 */
import { expect } from "vitest";
import type { Kernels } from "../../../src/kernels/index";
import { expertFfnRef } from "../../../src/kernels/reference";
import { GUARD, guarded, randn, rng } from "./helpers";

/** [n, dModel, dFf, group] */
export type GroupShape = readonly [number, number, number, number];

/** ‖got − want‖ / ‖want‖ */
export function relRms(got: Float32Array, want: Float32Array): number {
  let e = 0;
  let w = 0;
  for (let i = 0; i < want.length; i++) {
    e += (got[i] - want[i]) ** 2;
    w += want[i] ** 2;
  }
  return Math.sqrt(e / Math.max(w, 1e-30));
}

/** One group-quantized expert format as its contract drives it. */
export interface GroupExpertFormat<Q> {
  bytes(dModel: number, dFf: number, group: number): number;
  scratchBytes(n: number, dModel: number, dFf: number, group: number): number;
  /** Quantizes f32 weights into `dst` (the packed blob); returns the quantized matrices. */
  pack(dst: Uint8Array, w1: Float32Array, w3: Float32Array, w2: Float32Array, d: number, f: number, g: number): Q;
  /** The Wasm kernel: out[n, dModel] from x at `px` and the blob. */
  run(k: Kernels, out: number, px: number, blob: number, n: number, d: number, f: number, g: number, s: number): void;
  /** The plain reference twin on the quantized matrices. */
  reference(k: Kernels, out: Float32Array, x: Float32Array, q: Q, n: number, d: number, f: number): void;
}

/** Packs the expert, runs the kernel with guard zones around output and scratch, frees it all. */
export function runGroupExpert<Q>(
  format: GroupExpertFormat<Q>,
  k: Kernels,
  x: Float32Array,
  w: { w1: Float32Array; w3: Float32Array; w2: Float32Array },
  [n, dModel, dFf, group]: GroupShape,
): { y: Float32Array; q: Q } {
  const bytes = format.bytes(dModel, dFf, group);
  const blob = k.alloc(bytes);
  const q = format.pack(k.u8(blob, bytes), w.w1, w.w3, w.w2, dModel, dFf, group);
  const px = k.allocF32(x);
  const scratch = guarded(k, format.scratchBytes(n, dModel, dFf, group) / 4);
  const out = guarded(k, n * dModel);
  format.run(k, out.ptr, px, blob, n, dModel, dFf, group, scratch.ptr);
  scratch.read();
  const y = out.read();
  for (const p of [out.ptr - GUARD * 4, scratch.ptr - GUARD * 4, px, blob]) k.free(p);
  return { y, q };
}

/**
 * The contract case: on Gaussian weights of scale 1/√d, the kernel is within `refBound` relative
 * RMS of its reference twin (same quantized weights) and within `f32Bound` of the f32 expert.
 */
export function checkGroupExpert<Q>(
  format: GroupExpertFormat<Q>,
  k: Kernels,
  shape: GroupShape,
  seed: number,
  bounds: { refBound: number; f32Bound: number; label: string },
): void {
  const [n, dModel, dFf, group] = shape;
  const next = rng(seed + n * 1000 + dModel + dFf + group);
  const x = randn(next, n * dModel);
  const w1 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
  const w3 = randn(next, dFf * dModel, 1 / Math.sqrt(dModel));
  const w2 = randn(next, dModel * dFf, 1 / Math.sqrt(dFf));
  const { y, q } = runGroupExpert(format, k, x, { w1, w3, w2 }, shape);
  const want = new Float32Array(n * dModel);
  format.reference(k, want, x, q, n, dModel, dFf);
  expect(relRms(y, want), `vs ${bounds.label} reference`).toBeLessThan(bounds.refBound);
  const f32 = new Float32Array(n * dModel);
  expertFfnRef(f32, x, w1, w3, w2, n, dModel, dFf, new Float32Array(2 * n * dFf));
  if (dModel * dFf >= 1024) expect(relRms(y, f32), "vs f32").toBeLessThan(bounds.f32Bound);
}
