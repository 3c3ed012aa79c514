/**
 * @module Prompt-prefix sharing between the generations of one step batcher (vLLM's automatic
 * prefix caching, within the sessions this isolate holds). A joining prompt whose first tokens
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
 * Finished generations are kept as donors too (`RetainedPrefixes`): their complete positions, in
 * sessions of their size that hold bytes of the KV budget until a new session needs the room.
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

/** A finished generation's K/V kept as a donor: its valid positions only, in a session of their size. */
export interface RetainedPrefix {
  /** The tokens at its positions (its prompt, then what it generated and ran). */
  history: readonly number[];
  session: KvPositions;
  /** Its bytes of the KV budget. */
  bytes: number;
  /** Frees its KV cache and its share of the KV budget. */
  release: () => void;
}

/** Finished generations kept as donors at most (the oldest is released first). */
export const RETAINED_PREFIXES_MAX = 64;
/** A finished generation shorter than this is not kept. */
export const RETAIN_MIN_TOKENS = 16;

/**
 * Finished generations' KV caches kept for later prompts that repeat them (a chat's next turn
 * resends the conversation; users resend the same system prompt), least recently used first.
 * Each holds bytes of the KV budget, so a session that finds the budget full has them released,
 * oldest first, before it is refused (`evictOldest`).
 */
export class RetainedPrefixes {
  #entries: RetainedPrefix[] = [];

  constructor(readonly max = RETAINED_PREFIXES_MAX) {}

  get size(): number {
    return this.#entries.length;
  }

  /** KV-budget bytes the kept donors hold. */
  get bytes(): number {
    return this.#entries.reduce((n, e) => n + e.bytes, 0);
  }

  /** Whether a kept donor already holds all of `history` (keeping it again would add nothing). */
  covers(history: readonly number[]): boolean {
    return this.#entries.some(
      (e) => e.session.length >= history.length && commonPrefix(e.history, history, history.length) === history.length,
    );
  }

  /** Keeps `entry`; donors whose every position it holds too (a chat's earlier turns) are released. */
  add(entry: RetainedPrefix): void {
    const covered = (e: RetainedPrefix) =>
      e.session.length <= entry.session.length &&
      commonPrefix(e.history, entry.history, e.session.length) === e.session.length;
    for (const e of this.#entries.filter(covered)) e.release();
    this.#entries = [...this.#entries.filter((e) => !covered(e)), entry];
    while (this.#entries.length > this.max) this.#entries.shift()?.release();
  }

  /**
   * The kept generation holding the most of `prompt`'s first positions (at most `limit`), and how
   * many, when more than `atLeast`; it becomes the most recently used.
   */
  best(prompt: readonly number[], limit: number, atLeast: number): { entry: RetainedPrefix; have: number } | null {
    let found: { entry: RetainedPrefix; have: number } | null = null;
    for (const entry of this.#entries) {
      const have = Math.min(commonPrefix(entry.history, prompt, limit), entry.session.length);
      if (have > (found?.have ?? atLeast)) found = { entry, have };
    }
    if (found) this.#entries = [...this.#entries.filter((e) => e !== found.entry), found.entry];
    return found;
  }

  /**
   * Releases every kept donor, each through its own `release` (an operator's reset: a benchmark
   * that must not measure copies of its own reference runs). Returns how many were kept.
   */
  releaseAll(): number {
    const all = this.#entries;
    this.#entries = [];
    for (const e of all) e.release();
    return all.length;
  }

  /** Releases the least recently used; false when none is kept. */
  evictOldest(): boolean {
    const e = this.#entries.shift();
    e?.release();
    return e !== undefined;
  }
}
