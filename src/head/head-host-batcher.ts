/**
 * @module Continuous batching in a HeadHost: `forward` calls on the shard that meet run as ONE
 * matmul over the shard's rows for all their hidden rows (the shard's weights are read once, not
 * once per call), and each call gets its own logits slice or greedy answer back. Exact: the head
 * kernels (f32 and bf16) compute each token row the same whatever rows share the call, for any row
 * count (tests/unit/kernels/batch-rows-contract.ts), and the greedy scan and the division by
 * logits_scaling are per row — so a merged answer is bit for bit the answer alone.
 *
 * When calls meet: a head pass is synchronous (no await inside), so calls never queue behind a
 * running pass; they are delivered as separate events after it. A call has company — it waits one
 * timer turn (`setTimeout(0)`: the events already delivered join it, and the pass leaves with all
 * of them) — when another call arrived within HEAD_COMPANY_MS, or when a pass ended and no timer
 * turn has passed since: the call was then delivered straight after that pass, which means it
 * waited for it, and so may the calls behind it. The clock alone misses that case: a pass takes
 * longer than HEAD_COMPANY_MS on a granite-sized shard, so calls delivered one after another
 * behind it look far apart and each ran alone. A call with no company runs at once (one stream
 * alone pays no timer: its next call comes long after the turn).
 *
 * Bounded: a pass carries at most HEAD_PASS_BYTES of logits (at least HEAD_TOKEN_CHUNK rows), the
 * queue 8× that, a queued call waits at most HEAD_QUEUE_DEADLINE_MS; a refused call answers
 * `overloaded` (the Worker's 503 with Retry-After).
 */
import { Coalescer, type BatchEntry, type BatchResult } from "../platform/coalescer";
import { countMerged, countPass, emptyPassStats } from "../platform/pass-stats";
import { HEAD_TOKEN_CHUNK, type HeadStore } from "./head-store";
import type { HeadBatchStats, HeadMode } from "./protocol";

/** Logit bytes one merged pass produces at most (JS memory of its answer). */
export const HEAD_PASS_BYTES = 4 << 20;
/** A call arriving this soon after the previous one waits a turn for others. */
export const HEAD_COMPANY_MS = 5;
/** Longest a queued call waits for its pass. */
export const HEAD_QUEUE_DEADLINE_MS = 5_000;

export interface HeadCall {
  mode: HeadMode;
  /** [n, dModel], already checked against the store's dModel. */
  hidden: Float32Array;
  n: number;
}

export type HeadAnswer =
  | { mode: "logits"; logits: Float32Array }
  | { mode: "greedy"; max: Float32Array; argmax: Int32Array };

/** One call alone on the store (the per-call path). */
export function headAnswer(store: HeadStore, call: HeadCall, calls = 1): HeadAnswer {
  if (call.mode === "logits") return { mode: "logits", logits: store.logits(call.hidden, call.n, calls) };
  return { mode: "greedy", ...store.greedy(call.hidden, call.n, calls) };
}

export class HeadHostBatcher {
  #queue: Coalescer<HeadCall, HeadAnswer> | null = null;
  #store: HeadStore | null = null;
  #lastArrival = Number.NEGATIVE_INFINITY;
  /** A pass ended and no timer turn has run since (calls delivered now waited behind it). */
  #justRan = false;
  readonly #stats: HeadBatchStats = emptyPassStats();

  constructor(
    private readonly label: string,
    /** The clock arrivals are timed by (tests pass their own). */
    private readonly now: () => number = Date.now,
  ) {}

  /** `call` on `store`, merged with the calls that meet it; its own answer (QueueFullError: overload). */
  run(store: HeadStore, call: HeadCall): Promise<HeadAnswer> {
    const now = this.now();
    const company = this.#justRan || now - this.#lastArrival < HEAD_COMPANY_MS;
    this.#lastArrival = now;
    return this.#queueFor(store, company).submit(call, call.n);
  }

  stats(): HeadBatchStats {
    return { ...this.#stats };
  }

  /** The store's queue (a reloaded store gets a new one; the old one finishes what it holds). */
  #queueFor(store: HeadStore, company: boolean): Coalescer<HeadCall, HeadAnswer> {
    this.#company = company;
    if (this.#queue && this.#store === store) return this.#queue;
    const maxRows = Math.max(HEAD_TOKEN_CHUNK, Math.floor(HEAD_PASS_BYTES / (4 * store.rows)));
    this.#store = store;
    this.#queue = new Coalescer<HeadCall, HeadAnswer>(
      async (entries) => this.#pass(store, entries),
      {
        maxWaitMs: 0,
        maxRows,
        maxInFlight: 1,
        maxQueuedRows: 8 * maxRows,
        queueDeadlineMs: HEAD_QUEUE_DEADLINE_MS,
        turn: "timer",
        handOver: "direct",
      },
      // 1: no company expected, the call runs at once (no turn). With company, a quorum no turn can
      // complete: the pass leaves after one turn (maxWaitMs 0) with every call delivered by then,
      // not as soon as a second one arrives (a pair per pass, the rest waiting behind it).
      () => (this.#company ? maxRows + 1 : 1),
      `${this.label} head queue`,
    );
    return this.#queue;
  }

  #company = false;

  #pass(store: HeadStore, entries: readonly BatchEntry<HeadCall>[]): BatchResult<HeadAnswer>[] {
    this.#noteRan();
    const s = this.#stats;
    countPass(s, entries.length);
    const rows = entries.reduce((t, e) => t + e.item.n, 0);
    countMerged(s, entries.length, rows);
    const out: BatchResult<HeadAnswer>[] = new Array(entries.length);
    for (const mode of ["logits", "greedy"] as const) {
      const idx = entries.flatMap((e, i) => (e.item.mode === mode ? [i] : []));
      if (idx.length === 0) continue;
      try {
        mergedAnswers(
          store,
          mode,
          idx.map((i) => entries[i].item),
        ).forEach((a, j) => {
          out[idx[j]] = { ok: true, value: a };
        });
      } catch {
        // Which call made it fail is not known: each alone, so a failure stays with its call.
        for (const i of idx) {
          try {
            out[i] = { ok: true, value: headAnswer(store, entries[i].item) };
          } catch (error) {
            out[i] = { ok: false, error };
          }
        }
      }
    }
    return out;
  }

  /**
   * Marks the pass's end until the next timer turn. Set as the pass starts: it is synchronous, so
   * no call is delivered before it ends, and the timer set here fires only after it.
   */
  #noteRan(): void {
    if (this.#justRan) return;
    this.#justRan = true;
    setTimeout(() => {
      this.#justRan = false;
    }, 0);
  }
}

/** One head pass over every call's rows (one mode), split back per call. */
function mergedAnswers(store: HeadStore, mode: HeadMode, calls: readonly HeadCall[]): HeadAnswer[] {
  if (calls.length === 1) return [headAnswer(store, calls[0])];
  const n = calls.reduce((t, c) => t + c.n, 0);
  const hidden = new Float32Array(n * store.dModel);
  let at = 0;
  for (const c of calls) {
    hidden.set(c.hidden, at * store.dModel);
    at += c.n;
  }
  // The store's stats count calls, not passes: this pass serves every one of them.
  const all = headAnswer(store, { mode, hidden, n }, calls.length);
  at = 0;
  return calls.map((c) => {
    const from = at;
    at += c.n;
    if (all.mode === "logits") return { mode: "logits", logits: all.logits.slice(from * store.rows, at * store.rows) };
    return { mode: "greedy", max: all.max.slice(from, at), argmax: all.argmax.slice(from, at) };
  });
}
