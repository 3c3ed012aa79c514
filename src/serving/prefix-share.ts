/**
 * @module Prompt-prefix sharing between the live generations of one step batcher (vLLM's automatic
 * prefix caching, within the sessions this isolate holds now). A joining prompt whose first tokens
 * another live session has already run gets those positions' K/V copied from it instead of
 * running them through the model: 16 users sending the same system prompt or the same question
 * pay its prefill once. A prompt whose shared part another prompt is still reading waits for it
 * (a step or two) instead of computing the same positions beside it.
 *
 * Why a copy is exact: a position's K/V depend only on the tokens at and before it, and every
 * kernel of a batched step gives each row the bits it gets alone (`ModelForward.stepExact`), so
 * the donor's K/V at a shared position are the bits the receiving session would have computed.
 * The receiving prompt always runs its last token itself (its logits come from that row).
 *
 * Not a cache of ended sessions: when the last session holding a prefix ends, the prefix goes
 * with it (the KV budget is reserved per session; nothing is kept past a session's end).
 */
import type { Kernels } from "../kernels";
import type { KvLayout } from "./attention";

/** The KV cache positions of one session, as the sharing sees them. */
export interface KvPositions {
  /** Positions whose K/V are written in every layer (complete). */
  length: number;
  maxLen: number;
  /** Per held layer: K [maxLen, nKvHeads, kHeadDim] and V [maxLen, nKvHeads, vHeadDim] (Wasm pointers). */
  readonly k: readonly number[];
  readonly v: readonly number[];
}

/** Copies the K/V of positions [start, end) of `from` into `to`, every held layer (a byte copy). */
export type CopyPositions = (from: KvPositions, to: KvPositions, start: number, end: number) => void;

/**
 * A shared part shorter than this is not worth waiting a step for: the waiting prompt then runs
 * its tokens beside the donor's. (A copy from a donor that has the positions already is always
 * taken, however short.)
 */
export const PREFIX_WAIT_MIN_TOKENS = 8;

/** Length of the common prefix of `a` and `b`, at most `limit`. */
export function commonPrefix(a: readonly number[], b: readonly number[], limit: number): number {
  const n = Math.min(a.length, b.length, limit);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** The byte copy of `CopyPositions` for sessions in one Kernels' memory with layout `kv`. */
export function kvCopier(kernels: Kernels, kv: KvLayout): CopyPositions {
  const kPos = kv.nKvHeads * kv.kHeadDim * 4;
  const vPos = kv.nKvHeads * kv.vHeadDim * 4;
  return (from, to, start, end) => {
    if (end <= start) return;
    if (start < 0 || end > from.length || end > to.maxLen || from.k.length !== to.k.length)
      throw new RangeError(`cannot copy positions ${start}..${end} (donor has ${from.length}, room ${to.maxLen})`);
    for (let l = 0; l < from.k.length; l++) {
      const ks = kernels.u8(from.k[l] + start * kPos, (end - start) * kPos);
      kernels.u8(to.k[l] + start * kPos, ks.length).set(ks);
      const vs = kernels.u8(from.v[l] + start * vPos, (end - start) * vPos);
      kernels.u8(to.v[l] + start * vPos, vs.length).set(vs);
    }
  };
}
