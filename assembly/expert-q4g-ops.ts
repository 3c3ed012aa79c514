/**
 * @module expert-q4g-ops — the building blocks of the relaxed int4 matmul (expert-q4g-relaxed.ts):
 * nibble unpacking, one panel column's and one 32-input block's dots in either relaxed form (F = i16:
 * the i16x8 dot, F = i32: the i32x4 dot-add), zero points, sub-scales, and the pass's shapes.
 */
import { CHUNK } from "./expert-q4g-plain";

/** lo / hi nibbles of 16 stored bytes: the 7-bit operands. */
// @ts-ignore: decorator
@inline
export function nibLo(v: v128): v128 {
  return v128.and(v, i8x16.splat(15));
}
// @ts-ignore: decorator
@inline
export function nibHi(v: v128): v128 {
  return v128.and(i16x8.shr_u(v, 4), i8x16.splat(15));
}

/** acc + the dots of one 16-byte panel column (lo, hi nibbles) with the token's activations at xl
 * (4 inputs, splat) and xl + 16: F = i16 → i16 lanes [2r + h], F = i32 → i32 lane r (dot-add). */
// @ts-ignore: decorator
@inline
export function col<F>(lo: v128, hi: v128, xl: usize, acc: v128): v128 {
  const a = v128.load32_splat(xl);
  const b = v128.load32_splat(xl, 16);
  if (sizeof<F>() == 2) {
    return i16x8.add(acc, i16x8.add(i16x8.relaxed_dot_i8x16_i7x16_s(a, lo), i16x8.relaxed_dot_i8x16_i7x16_s(b, hi)));
  }
  return i32x4.relaxed_dot_i8x16_i7x16_add_s(b, hi, i32x4.relaxed_dot_i8x16_i7x16_add_s(a, lo, acc));
}

/** acc + one 32-input block (64 panel bytes at wb) for one token (activations xb, zero point zb). */
// @ts-ignore: decorator
@inline
export function block<F>(wb: usize, xb: usize, acc: v128): v128 {
  const v0 = v128.load(wb);
  const v1 = v128.load(wb, 16);
  const v2 = v128.load(wb, 32);
  const v3 = v128.load(wb, 48);
  acc = col<F>(nibLo(v0), nibHi(v0), xb, acc);
  acc = col<F>(nibLo(v1), nibHi(v1), xb + 4, acc);
  acc = col<F>(nibLo(v2), nibHi(v2), xb + 8, acc);
  return col<F>(nibLo(v3), nibHi(v3), xb + 12, acc);
}

/** The zero point of the block at zb (4 bytes: an i16 pair for F = i16, an i32 for F = i32) added to p. */
// @ts-ignore: decorator
@inline
export function zeroAdd<F>(p: v128, zb: usize): v128 {
  const z = v128.load32_splat(zb);
  return sizeof<F>() == 2 ? i16x8.add(p, z) : i32x4.add(p, z);
}

/** The 4 rows' sub-scales of a group at sp, for scaled(): [s0, s0, s1, s1, …] i16 or [s0 … s3] i32. */
// @ts-ignore: decorator
@inline
export function subVec<F>(sp: usize): v128 {
  if (sizeof<F>() == 2) {
    const s = v128.load64_zero(sp);
    return v128.shuffle<i16>(s, s, 0, 0, 1, 1, 2, 2, 3, 3);
  }
  return v128.load16x4_s(sp);
}

/** acc + (lane r of p summed) · sub_r. */
// @ts-ignore: decorator
@inline
export function scaled<F>(acc: v128, p: v128, s: v128): v128 {
  return i32x4.add(acc, sizeof<F>() == 2 ? i32x4.dot_i16x8_s(p, s) : i32x4.mul(p, s));
}

/** Blocks of a group summed before the sub-scale multiply: 2 in i16 (< 2^15), the whole group in i32. */
// @ts-ignore: decorator
@inline
export function runBlocks<F>(group: i32): i32 {
  return sizeof<F>() == 2 ? 2 : group >> 5;
}

/** Shapes of one matrix pass, shared by the panel loops. */
@unmanaged
export class Dims {
  groups: i32 = 0;
  chunkGroups: i32 = 0;
  run: i32 = 0;
  group: i32 = 0;
  wRow: usize = 0;
  sRow: usize = 0;
  oRow: usize = 0;
  xRow: usize = 0;
  zRow: usize = 0;
}

// @ts-ignore: decorator
@inline
export function dimsOf<F>(d: Dims, dOut: i32, colsG: i32, group: i32): Dims {
  d.groups = colsG / group;
  d.chunkGroups = max(1, CHUNK / group);
  d.run = runBlocks<F>(group);
  d.group = group;
  d.wRow = <usize>(colsG >> 1);
  d.sRow = <usize>d.groups << 1;
  d.oRow = <usize>dOut << 2;
  d.xRow = <usize>colsG;
  d.zRow = <usize>(colsG >> 3);
  return d;
}
