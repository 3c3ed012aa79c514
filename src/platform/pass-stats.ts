/**
 * @module Counters of a batcher's passes (one Coalescer run is one pass): how many passes ran,
 * and how many really carried several calls. The StageHost and HeadHost batchers count the same
 * things the same way and report these counters as they are in their hosts' stats.
 */

export interface PassStats {
  /** Passes run, and the calls they served. */
  passes: number;
  calls: number;
  /** Passes that carried two calls or more, with their calls and rows. */
  mergedPasses: number;
  mergedCalls: number;
  mergedRows: number;
  /** Most calls one pass carried. */
  maxCalls: number;
}

export function emptyPassStats(): PassStats {
  return { passes: 0, calls: 0, mergedPasses: 0, mergedCalls: 0, mergedRows: 0, maxCalls: 0 };
}

/** Counts a pass that took `calls` calls off its queue. */
export function countPass(s: PassStats, calls: number): void {
  s.passes++;
  s.calls += calls;
  s.maxCalls = Math.max(s.maxCalls, calls);
}

/** Counts the calls of a pass that ran as one (only when `calls` ≥ 2), with their `rows`. */
export function countMerged(s: PassStats, calls: number, rows: number): void {
  if (calls < 2) return;
  s.mergedPasses++;
  s.mergedCalls += calls;
  s.mergedRows += rows;
}
