/**
 * @module simd-ceiling — the compute ceilings bench:kernels judges the batch kernels against, as
 * cases one runtime-neutral driver can time in Node (process CPU time) and inside workerd
 * (bench-workerd-worker.ts /peak, timed from Node with workerd's CPU time from /proc):
 *   - f32: 8 f32x4 multiply-add chains on registers (assembly/stream.ts simdPeak; FMA in the relaxed
 *     build, mul + add in the simd build), 64 FLOPs a step;
 *   - int8 dot chains: 8 independent accumulators in each instruction form the kernels use
 *     (assembly/stream.ts int8Peak; one weight load from L1 a dot, activations in a register) —
 *     dot_i16x8 (2·64 ops a step), the relaxed i8×i7 dot as i16x8 dot + extadd (2·128) and as one
 *     dot-add (2·128);
 *   - int8 at the kernel's register tile: the batch kernels' own 4-token × 2-row tile
 *     (assembly/q8.ts q8TilePeak) on each int8 path, panel and x rows in L1 — what the kernel's
 *     instruction mix reaches without memory traffic, 2·128 ops a k-block.
 * Ops count a multiply-add as 2, as the bench's GOP/s-equivalent does (6·dModel·dFf·batch a call).
 */
import type { Kernels, Q8Path } from "../../src/kernels/index";

export interface CeilingCase {
  name: string;
  /** Operations of one unit of run(). */
  opsPerUnit: number;
  /** Runs `units` units; returns a value so the work is kept. */
  run(units: number): number;
}

/** k-blocks of 16 inputs per tile call: 8 KiB of panel and ≤ 8 KiB of x rows, in L1 with room. */
const TILE_KBLOCKS = 64;

/** The ceiling cases a Kernels instance can run: f32 and the int8 chain forms its build has, and the
 * tile on every int8 path it offers (`k.q8Paths`). */
export function ceilingCases(k: Kernels, flavor: string): CeilingCase[] {
  const dots = k.alloc(144);
  k.u8(dots, 144).forEach((_, i, a) => {
    a[i] = (i * 29 + 7) & 0x3f;
  });
  const out: CeilingCase[] = [
    { name: `${flavor} f32x4 madd chains`, opsPerUnit: 64, run: (n) => k.simdPeak(n) },
    { name: `${flavor} int8 dot_i16x8 chains`, opsPerUnit: 2 * 64, run: (n) => k.int8Peak(0, n, dots) },
  ];
  if (k.relaxedDotAvailable) {
    out.push(
      {
        name: `${flavor} int8 relaxed dot (i16x8 + extadd) chains`,
        opsPerUnit: 2 * 128,
        run: (n) => k.int8Peak(1, n, dots),
      },
      { name: `${flavor} int8 relaxed dot-add chains`, opsPerUnit: 2 * 128, run: (n) => k.int8Peak(2, n, dots) },
    );
  }
  const xqRow = 32 * TILE_KBLOCKS;
  const xq = k.alloc(4 * xqRow);
  const panel = k.alloc(128 * TILE_KBLOCKS);
  // Weights in [-127, 127], activations as a quantized row would hold them (7-bit-safe bytes).
  k.u8(panel, 128 * TILE_KBLOCKS).forEach((_, i, a) => {
    a[i] = (i * 37 + 11) & 0xff;
  });
  k.u8(xq, 4 * xqRow).forEach((_, i, a) => {
    a[i] = (i * 13 + 5) & 0x3f;
  });
  for (const path of k.q8Paths) {
    out.push({
      name: `${flavor} int8 4×2 tile from L1, ${path}`,
      opsPerUnit: 2 * 128 * TILE_KBLOCKS,
      run: (n) => {
        k.setQ8Path(path as Q8Path);
        return k.q8TilePeak(xq, xqRow, panel, TILE_KBLOCKS, n);
      },
    });
  }
  return out;
}
