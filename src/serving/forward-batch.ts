/**
 * @module The types and helpers of the batched forward passes (`ModelForward.step` for the whole
 * model, `ModelForward.stepLayers` for a part's layer range): segments of several sessions' rows,
 * their per-segment outcomes, and the row bookkeeping (offsets, room, per-segment routings merged
 * into one). The passes themselves live in forward.ts beside the per-session path they must match
 * bit for bit.
 */
import type { Routing } from "../gating/router";
import type { Session } from "./forward";

/**
 * One session's rows in a batched step (`ModelForward.step`): its tokens at positions
 * session.length…, its own random source (noisy routing draws from it as it would alone).
 */
export interface StepSegment {
  session: Session;
  tokens: number[];
  /** 1: the logits of its last token are wanted; 0: none (a prompt chunk that is not the last). */
  nOut: 0 | 1;
  rng: () => number;
  /** Whether its generation left (aborted): its expert rows are then not retried. */
  gone?: () => boolean;
}

/** A segment's outcome: its logits [nOut, vocab] (empty for nOut 0), or the error that failed it. */
export type StepOutcome = { ok: true; logits: Float32Array } | { ok: false; error: unknown };

/**
 * One session's rows in a batched pass over the layers a part holds (`ModelForward.stepLayers`):
 * its residual stream x [n, dModel] at positions session.length…, its own random source.
 */
export interface LayerSegment {
  session: Session;
  x: Float32Array;
  rng: () => number;
}

/** A layer segment's outcome: its residual stream after the part's layers [n, dModel], or its error. */
export type LayerOutcome = { ok: true; y: Float32Array } | { ok: false; error: unknown };

/** A segment as the batched layers see it: its session, row count and random source. */
export interface StepPart {
  session: Session;
  n: number;
  rng: () => number;
}

/**
 * Routed experts of a batched step: `owner[t]` is the segment of token row t. Answers every row's
 * output, and the segments that lost rows (their output rows are then meaningless).
 */
export type OwnedExpertRunner = (
  layer: number,
  routing: Routing,
  h: Float32Array,
  owner: Int32Array | null,
) => Promise<{ out: Float32Array; lost: Map<number, unknown> }>;

/** Every segment's session has room for its rows (checked before any of them is touched). */
export function checkRoom(parts: readonly StepPart[]): void {
  for (const g of parts)
    if (g.session.length + g.n > g.session.maxLen)
      throw new Error(`session holds ${g.session.maxLen} positions, asked for ${g.session.length + g.n}`);
}

/** Row offset of part i: the rows of the parts before it. */
export function offsetOf(parts: readonly { n: number }[], i: number): number {
  let at = 0;
  for (let j = 0; j < i; j++) at += parts[j].n;
  return at;
}

/** Routings of consecutive row ranges as one routing over all the rows. */
export function mergeRoutings(rs: Routing[]): Routing {
  if (rs.length === 1) return rs[0];
  const n = rs.reduce((t, r) => t + r.n, 0);
  const topK = rs[0].topK;
  const ids = new Int32Array(n * topK);
  const weights = new Float32Array(n * topK);
  let at = 0;
  let rerouted = 0;
  let dropped = 0;
  for (const r of rs) {
    ids.set(r.ids, at * topK);
    weights.set(r.weights, at * topK);
    at += r.n;
    rerouted += r.rerouted ?? 0;
    dropped += r.dropped ?? 0;
  }
  const merged: Routing = { n, topK, ids, weights };
  if (rs.some((r) => r.rerouted !== undefined)) merged.rerouted = rerouted;
  if (rs.some((r) => r.dropped !== undefined)) merged.dropped = dropped;
  return merged;
}
