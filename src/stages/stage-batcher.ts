/**
 * @module Continuous batching in a StageHost: `run` calls of different sessions that reach the
 * stage together — delivered in one microtask checkpoint, or queued while the stage's pass is
 * running — go through its layers as ONE pass (`ModelForward.stepLayers`: dense work over every
 * row, attention per session over its own KV cache, one expert fan-out per MoE layer with rows
 * owned per call), and each call gets its own rows back and goes on along its route alone. Every
 * row is computed as it is alone (`layersExact`), so merging never changes a token.
 *
 * One pass at a time: calls arriving while it waits for its experts queue and form the next pass
 * (no timer: the pass in flight is the wait). A call alone runs today's per-call path.
 *
 * Bounded: a pass carries at most `maxRows` rows (its Wasm scratch must fit STAGE_SCRATCH_BYTES;
 * a bigger single call still runs, alone), the queue at most `maxQueuedRows` (`stageQueueRows`), and a queued call
 * waits at most `queueDeadlineMs` for its pass; a call refused by either throws QueueFullError,
 * which the StageHost answers as `overloaded` (the Worker's 503 `stage_overloaded` with a short Retry-After).
 */
import { Coalescer, type BatchEntry, type BatchResult } from "../platform/coalescer";
import { countMerged, countPass, emptyPassStats } from "../platform/pass-stats";
import type { Session } from "../serving/forward";
import type { StageBatchStats } from "../serving/stage-protocol";
import { PREFILL_CHUNK } from "../serving/stage-budgets";

/** One `run` call's work in this stage's layers. */
export interface StageCall {
  session: Session;
  /** Residual rows in [n, dModel]. */
  x: Float32Array;
  rng: () => number;
  /** The position its rows start at: the pass fails it when the session is elsewhere then. */
  start: number;
  /** Whether the session was ended meanwhile: its expert rows are then not retried. */
  gone: () => boolean;
  /**
   * Holds the session for the pass (its KV cache is not freed until the returned release runs);
   * null when the session has ended.
   */
  hold: () => (() => void) | null;
}

/** A call's rows out [n, dModel], and the expert RPCs it is charged with. */
export interface StageCallResult {
  y: Float32Array;
  rpcs: number;
}

/** How the stage runs its layers: one call alone (the per-call path), or several in one pass. */
export interface StagePassRunner {
  alone(call: StageCall): Promise<StageCallResult>;
  merged(calls: readonly StageCall[]): Promise<BatchResult<StageCallResult>[]>;
}

export interface StageBatchLimits {
  /** Rows one pass carries at most. */
  maxRows: number;
  /** Rows queued at most: a call beyond is refused. */
  maxQueuedRows: number;
  /** Longest a call waits in the queue for its pass, in ms. */
  queueDeadlineMs: number;
  /** Longest a pass may take to answer, in ms. */
  runDeadlineMs: number;
}

/**
 * Rows a stage's pass queue holds: four passes' worth, plus a whole prefill chunk — a pass may carry
 * fewer rows than PREFILL_CHUNK (a small scratch), and a chunk must still queue behind others.
 */
export function stageQueueRows(maxRows: number): number {
  return 4 * maxRows + PREFILL_CHUNK;
}

/**
 * `total` split in whole parts proportional to `rows` (largest remainders first), summing to `total`
 * unless every weight is 0 (then all 0: no call to charge).
 */
export function shareByRows(total: number, rows: readonly number[]): number[] {
  const sum = rows.reduce((t, r) => t + r, 0);
  if (sum <= 0) return rows.map(() => 0);
  const exact = rows.map((r) => (total * r) / sum);
  const shares = exact.map(Math.floor);
  let left = total - shares.reduce((t, v) => t + v, 0);
  const order = rows.map((_, i) => i).sort((a, b) => exact[b] - shares[b] - (exact[a] - shares[a]) || a - b);
  for (const i of order) {
    if (left <= 0) break;
    if (rows[i] > 0) {
      shares[i]++;
      left--;
    }
  }
  return shares;
}

export class StageBatcher {
  readonly #queue: Coalescer<StageCall, StageCallResult>;
  readonly #stats: StageBatchStats = emptyPassStats();

  constructor(
    private readonly runner: StagePassRunner,
    private readonly dModel: number,
    limits: StageBatchLimits,
    label: string,
  ) {
    this.#queue = new Coalescer<StageCall, StageCallResult>(
      (entries) => this.#pass(entries),
      {
        maxWaitMs: 0,
        maxRows: limits.maxRows,
        maxInFlight: 1,
        maxQueuedRows: Math.max(limits.maxRows, limits.maxQueuedRows),
        queueDeadlineMs: limits.queueDeadlineMs,
        turn: "microtasks",
        runDeadlineMs: limits.runDeadlineMs,
        // A Durable Object runs every request in its one context: answers go straight to callers.
        handOver: "direct",
      },
      undefined,
      `${label} pass queue`,
    );
  }

  /** Runs `call` in the stage's next pass; its own rows, or its own failure (QueueFullError: overload). */
  run(call: StageCall): Promise<StageCallResult> {
    return this.#queue.submit(call, Math.max(1, Math.ceil(call.x.length / this.dModel)));
  }

  stats(): StageBatchStats {
    return { ...this.#stats };
  }

  /** Whether a pass may carry several calls (BATCHING on), or one call at a time. */
  get merges(): boolean {
    return this.#queue.limits.maxRows > 1;
  }

  async #pass(entries: readonly BatchEntry<StageCall>[]): Promise<BatchResult<StageCallResult>[]> {
    const s = this.#stats;
    countPass(s, entries.length);
    const results: BatchResult<StageCallResult>[] = entries.map(() => ({ ok: true, value: EMPTY }));
    const take: number[] = [];
    const releases: (() => void)[] = [];
    const seen = new Set<Session>();
    try {
      // Checked here, when the pass runs, call by call: an offender fails alone, the others run.
      entries.forEach((e, i) => {
        const refusal = this.#refusal(e.item, seen);
        if (refusal) {
          results[i] = { ok: false, error: refusal };
          return;
        }
        // The pass holds the session until it ends, whatever happens to its caller meanwhile (a
        // deadline refusing it, its `finally` releasing it, `end` freeing it): never freed under the pass.
        const release = e.item.hold();
        if (!release) {
          results[i] = {
            ok: false,
            error: new StageCallError("session_lost", "the session ended before its pass ran"),
          };
          return;
        }
        releases.push(release);
        seen.add(e.item.session);
        take.push(i);
      });
      const calls = take.map((i) => entries[i].item);
      if (calls.length === 1) {
        try {
          results[take[0]] = { ok: true, value: await this.runner.alone(calls[0]) };
        } catch (error) {
          results[take[0]] = { ok: false, error };
        }
      } else if (calls.length > 1) {
        const rows = calls.reduce((t, c) => t + c.x.length / this.dModel, 0);
        countMerged(s, calls.length, rows);
        const out = await this.runner.merged(calls);
        take.forEach((i, j) => {
          results[i] = out[j];
        });
      }
      return results;
    } finally {
      for (const release of releases) release();
    }
  }

  /** Why `call` cannot run in this pass (its own bad request), or null. */
  #refusal(call: StageCall, seen: ReadonlySet<Session>): StageCallError | null {
    const { session, x, start } = call;
    // A session twice in one pass (a retried call while the first still runs) would write its KV
    // cache twice at the same positions: the later call fails, as it would have after the first.
    if (seen.has(session)) return new StageCallError("bad_request", "a call on this session is already running");
    const rows = x.length / this.dModel;
    if (!Number.isInteger(rows) || rows < 1)
      return new StageCallError("bad_request", `x must hold n·${this.dModel} values, got ${x.length}`);
    // A call queued behind a pass on its session (a duplicate) finds the session moved on.
    if (session.length !== start)
      return new StageCallError(
        "bad_request",
        `the session is at position ${session.length}, the call starts at ${start}`,
      );
    if (start + rows > session.maxLen)
      return new StageCallError(
        "bad_request",
        `the session holds ${session.maxLen} positions, asked for ${start + rows}`,
      );
    return null;
  }
}

const EMPTY: StageCallResult = { y: new Float32Array(0), rpcs: 0 };

/** A call refused by its pass: a bad request (shape, room, position) or a session ended before it ran. */
export class StageCallError extends Error {
  override name = "StageCallError";
  constructor(
    readonly code: "bad_request" | "session_lost",
    message: string,
  ) {
    super(message);
  }
}
