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
 * a bigger single call still runs, alone), the queue at most `maxQueuedRows`, and a queued call
 * waits at most `queueDeadlineMs` for its pass; a call refused by either throws QueueFullError,
 * which the StageHost answers as `busy` (the Worker's 429/503 with Retry-After).
 */
import { Coalescer, type BatchEntry, type BatchResult } from "../platform/coalescer";
import type { Session } from "../serving/forward";
import type { StageBatchStats } from "../serving/stage-protocol";

/** One `run` call's work in this stage's layers. */
export interface StageCall {
  session: Session;
  /** Residual rows in [n, dModel]. */
  x: Float32Array;
  rng: () => number;
  /** Whether the session was ended meanwhile: its expert rows are then not retried. */
  gone: () => boolean;
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

export class StageBatcher {
  readonly #queue: Coalescer<StageCall, StageCallResult>;
  readonly #stats: StageBatchStats = {
    passes: 0,
    calls: 0,
    mergedPasses: 0,
    mergedCalls: 0,
    mergedRows: 0,
    maxCalls: 0,
  };

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
    return this.#queue.submit(call, call.x.length / this.dModel);
  }

  stats(): StageBatchStats {
    return { ...this.#stats };
  }

  async #pass(entries: readonly BatchEntry<StageCall>[]): Promise<BatchResult<StageCallResult>[]> {
    const s = this.#stats;
    s.passes++;
    s.calls += entries.length;
    s.maxCalls = Math.max(s.maxCalls, entries.length);
    if (entries.length === 1) {
      try {
        return [{ ok: true, value: await this.runner.alone(entries[0].item) }];
      } catch (error) {
        return [{ ok: false, error }];
      }
    }
    // A session twice in one pass (a retried call while the first still runs) would write its KV
    // cache twice at the same positions: the later call fails, as it would have after the first.
    const seen = new Set<Session>();
    const take: number[] = [];
    const results: BatchResult<StageCallResult>[] = entries.map((e, i) => {
      if (seen.has(e.item.session)) return { ok: false, error: new Error("a call on this session is already running") };
      seen.add(e.item.session);
      take.push(i);
      return { ok: true, value: { y: new Float32Array(0), rpcs: 0 } };
    });
    const calls = take.map((i) => entries[i].item);
    if (calls.length === 1) {
      try {
        results[take[0]] = { ok: true, value: await this.runner.alone(calls[0]) };
      } catch (error) {
        results[take[0]] = { ok: false, error };
      }
      return results;
    }
    s.mergedPasses++;
    s.mergedCalls += calls.length;
    s.mergedRows += calls.reduce((t, c) => t + c.x.length / this.dModel, 0);
    const out = await this.runner.merged(calls);
    take.forEach((i, j) => {
      results[i] = out[j];
    });
    return results;
  }
}
