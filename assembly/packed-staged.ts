/**
 * @module packed-staged — the packed f32 kernels' multi-token path for runtimes without a Wasm trap
 * handler (workerd), where every load from a variable address is compiled with an explicit bounds
 * check (compare + branch) and the register tiles' 6 loads per 8 multiply-adds pay for it.
 *
 * A group of STAGED_MIN..STAGED_TOKENS tokens walks a panel STAGE_KB k-blocks at a time: the k-blocks are
 * copied once to STAGE (one memory.copy, one check), then every token of the group runs the 1×8
 * GEMV tile over the copy (./packed-staged-chunk), whose weight loads have constant addresses and
 * no check. Per k-block a token makes one checked load (x) for 8 multiply-adds. The tokens' partial
 * lane sums wait in STAGED_STATE between steps, so each lane still sums the k-blocks in order with
 * the same multiply-adds as tile1x8: every row has the GEMV tile's bits, as the tiles' rows do.
 *
 * Chosen per instance (Kernels.setPackedF32Path): in Node, whose V8 has the trap handler, the
 * register tiles are faster and V8 12 spills the written-out step, so Node keeps them.
 */
import { madd } from "./simd-math";
import { STAGE, STAGE_KB, stagedChunk } from "./packed-staged-chunk";

const KB_BYTES: usize = 128;
/** Most tokens one staged pass carries (STAGED_STATE: 8 f32x4 of row sums each). */
export const STAGED_TOKENS: i32 = 32;
/** Fewest: with fewer tokens the panel copy costs about what the checks it saves cost (measured in
 * workerd: 4 tokens slower than the 4×2 tile, 8 faster), so smaller groups keep the tiles. */
export const STAGED_MIN: i32 = 8;
/** Row sums of a staged pass: token i's rows 0..3 lane sums at 128·i, rows 4..7 at 128·i + 64. */
export const STAGED_STATE: usize = memory.data(STAGED_TOKENS * 128, 16);

let stagedPath: bool = false;

/** mode 1: staged path on, 0: off (register tiles), −1: unchanged. Returns 1 when on; the scalar
 * build has no staged path and always answers 0. */
export function setPackedStaged(mode: i32): i32 {
  if (mode >= 0) stagedPath = ASC_FEATURE_SIMD && mode == 1;
  return stagedPath ? 1 : 0;
}

/** Whether a group of n tokens takes the staged path. */
// @ts-ignore: decorator
@inline
export function useStaged(n: i32): bool {
  return ASC_FEATURE_SIMD && stagedPath && n >= STAGED_MIN;
}

/** Row sums of m ≤ STAGED_TOKENS tokens (x rows xRow bytes apart) against one panel of kBlocks
 * k-blocks, into STAGED_STATE. */
export function stagedSums(x: usize, xRow: usize, panel: usize, m: i32, kBlocks: i32): void {
  if (!ASC_FEATURE_SIMD) return;
  memory.fill(STAGED_STATE, 0, <usize>m << 7);
  let k0 = 0;
  for (; k0 + STAGE_KB <= kBlocks; k0 += STAGE_KB) {
    memory.copy(STAGE, panel + <usize>k0 * KB_BYTES, <usize>STAGE_KB * KB_BYTES);
    const xk = x + (<usize>k0 << 4);
    for (let t = 0; t < m; t++) stagedChunk(xk + <usize>t * xRow, STAGED_STATE + (<usize>t << 7));
  }
  if (k0 < kBlocks) {
    // The last kBlocks mod STAGE_KB k-blocks straight from the panel (checked loads; a short run).
    const xk = x + (<usize>k0 << 4);
    const pk = panel + <usize>k0 * KB_BYTES;
    for (let t = 0; t < m; t++) tail1x8(xk + <usize>t * xRow, pk, kBlocks - k0, STAGED_STATE + (<usize>t << 7));
  }
}

/** packed.ts tile1x8 over kc k-blocks of the panel at w, continuing the 8 row sums at s. */
function tail1x8(x: usize, w: usize, kc: i32, s: usize): void {
  let a0 = v128.load(s), a1 = v128.load(s, 16), a2 = v128.load(s, 32), a3 = v128.load(s, 48);
  let a4 = v128.load(s, 64), a5 = v128.load(s, 80), a6 = v128.load(s, 96), a7 = v128.load(s, 112);
  const end = x + (<usize>kc << 4);
  for (let xp = x; xp < end; xp += 16) {
    const xv = v128.load(xp);
    a0 = madd(v128.load(w), xv, a0);
    a1 = madd(v128.load(w, 16), xv, a1);
    a2 = madd(v128.load(w, 32), xv, a2);
    a3 = madd(v128.load(w, 48), xv, a3);
    a4 = madd(v128.load(w, 64), xv, a4);
    a5 = madd(v128.load(w, 80), xv, a5);
    a6 = madd(v128.load(w, 96), xv, a6);
    a7 = madd(v128.load(w, 112), xv, a7);
    w += KB_BYTES;
  }
  v128.store(s, a0);
  v128.store(s, a1, 16);
  v128.store(s, a2, 32);
  v128.store(s, a3, 48);
  v128.store(s, a4, 64);
  v128.store(s, a5, 80);
  v128.store(s, a6, 96);
  v128.store(s, a7, 112);
}
