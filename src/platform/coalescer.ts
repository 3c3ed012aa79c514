/**
 * @module Continuous batching's one mechanism: calls that meet at the same place (one MoE layer in
 * a Worker isolate, one layer in an ExpertHost) within one turn — or a short bounded wait — are
 * handed to `run` together as one batch, and each caller gets its own result back.
 *
 * Bounded everywhere: a batch holds at most `maxRows` rows (a fuller queue flushes at once), at most
 * `maxInFlight` batches run at once (further callers queue), the queue holds at most
 * `maxQueuedRows` rows (a caller beyond is refused with QueueFullError, which the caller maps to a
 * 429/503 with Retry-After), and queued work waits at most `maxWaitMs` for company plus
 * `queueDeadlineMs` for a free slot (then it is refused the same way). One caller going away
 * (its AbortSignal) leaves the others' batch alone: its promise rejects at once, its rows are
 * dropped from the queue or their answer ignored.
 */

export interface CoalescerLimits {
  /**
   * How long a queued call may wait for others to join before its batch is sent, in ms (0 = the
   * same turn only: the batch leaves on the next macrotask). Only waited while `quorum` says more
   * callers are coming.
   */
  maxWaitMs: number;
  /** Rows in one batch at most; the queue flushes as soon as it holds this many. */
  maxRows: number;
  /** Batches running at once at most; more wait in the queue. */
  maxInFlight: number;
  /** Rows waiting in the queue at most: a caller that would go beyond is refused. */
  maxQueuedRows: number;
  /** Longest a call may wait in the queue for a free slot (after its company wait), in ms. */
  queueDeadlineMs: number;
}

/** A refused call: the queue is full, or the call waited past its queue deadline. */
export class QueueFullError extends Error {
  override name = "QueueFullError";
  constructor(
    message: string,
    /** Seconds after which a retry may succeed. */
    readonly retryAfterS: number,
  ) {
    super(message);
  }
}

/** One caller's answer: a batch may succeed for some callers and fail for others. */
export type BatchResult<R> = { ok: true; value: R } | { ok: false; error: unknown };

/** What `run` gets per caller: its item and whether it is still waiting for the answer. */
export interface BatchEntry<T> {
  item: T;
  rows: number;
  /** True once the caller went away (aborted): its rows may be skipped. */
  readonly gone: boolean;
}

interface Waiter<T, R> extends BatchEntry<T> {
  gone: boolean;
  queuedAt: number;
  signal?: AbortSignal;
  resolve(value: R): void;
  reject(err: unknown): void;
  onAbort?: () => void;
}

/** Runs one batch; answers one result per entry, in order (throwing fails every entry). */
export type BatchRunner<T, R> = (entries: readonly BatchEntry<T>[]) => Promise<BatchResult<R>[]>;

export class Coalescer<T, R> {
  #queue: Waiter<T, R>[] = [];
  #queuedRows = 0;
  #inFlight = 0;
  #turn: ReturnType<typeof setTimeout> | null = null;
  #wait: ReturnType<typeof setTimeout> | null = null;
  /** Batches sent and callers served (stats, tests). */
  batches = 0;
  callers = 0;

  constructor(
    private readonly run: BatchRunner<T, R>,
    readonly limits: CoalescerLimits,
    /** How many callers are expected to meet here (absent: whoever came in the same turn). */
    private readonly quorum?: () => number,
    private readonly label = "batch queue",
  ) {}

  /** Rows waiting in the queue now. */
  get queuedRows(): number {
    return this.#queuedRows;
  }

  /** Queues one call; resolves with its own result when its batch answers. */
  submit(item: T, rows: number, signal?: AbortSignal): Promise<R> {
    if (signal?.aborted) return Promise.reject(abortReasonOf(signal));
    if (this.#queuedRows + rows > this.limits.maxQueuedRows && this.#queue.length > 0) {
      const s = Math.max(1, Math.ceil(this.limits.queueDeadlineMs / 1000));
      const message = `${this.label} is full (${this.#queuedRows} rows queued, at most ${this.limits.maxQueuedRows})`;
      return Promise.reject(new QueueFullError(message, s));
    }
    return new Promise<R>((resolve, reject) => {
      const w: Waiter<T, R> = { item, rows, gone: false, queuedAt: Date.now(), signal, resolve, reject };
      if (signal) {
        w.onAbort = () => this.#abort(w);
        signal.addEventListener("abort", w.onAbort, { once: true });
      }
      this.#queue.push(w);
      this.#queuedRows += rows;
      this.#schedule();
    });
  }

  #abort(w: Waiter<T, R>): void {
    if (w.gone) return;
    w.gone = true;
    const i = this.#queue.indexOf(w);
    if (i >= 0) {
      this.#queue.splice(i, 1);
      this.#queuedRows -= w.rows;
    }
    w.reject(abortReasonOf(w.signal!));
  }

  /** Decides when the queue leaves: at once when full, else at the end of this turn or after the wait. */
  #schedule(): void {
    if (this.#queue.length === 0) return;
    if (this.#queuedRows >= this.limits.maxRows && this.#inFlight < this.limits.maxInFlight) {
      this.#flush();
      return;
    }
    // The same turn: every caller already resumed by the same event joins before the batch leaves.
    this.#turn ??= setTimeout(() => {
      this.#turn = null;
      this.#check();
    }, 0);
  }

  #check(): void {
    if (this.#queue.length === 0) return;
    if (this.#inFlight >= this.limits.maxInFlight) {
      this.#expireQueued();
      return; // #done() calls back here when a slot frees
    }
    const waited = Date.now() - this.#queue[0].queuedAt;
    const expected = this.quorum?.() ?? 0;
    if (this.#queue.length >= expected || waited >= this.limits.maxWaitMs) {
      this.#flush();
      return;
    }
    // Others are on their way (a request behind in its step): wait for them, boundedly.
    if (this.#wait === null) {
      this.#wait = setTimeout(
        () => {
          this.#wait = null;
          this.#check();
        },
        Math.max(0, this.limits.maxWaitMs - waited),
      );
    }
  }

  /** Queued calls past their deadline (waiting for a slot) are refused, not left to wait forever. */
  #expireQueued(): void {
    const limit = this.limits.maxWaitMs + this.limits.queueDeadlineMs;
    const now = Date.now();
    const keep: Waiter<T, R>[] = [];
    for (const w of this.#queue) {
      if (now - w.queuedAt <= limit) {
        keep.push(w);
        continue;
      }
      this.#queuedRows -= w.rows;
      this.#settle(w, {
        ok: false,
        error: new QueueFullError(
          `${this.label}: waited ${now - w.queuedAt} ms for a free slot (deadline ${limit} ms)`,
          Math.max(1, Math.ceil(this.limits.queueDeadlineMs / 1000)),
        ),
      });
    }
    this.#queue = keep;
    if (this.#queue.length > 0 && this.#wait === null) {
      this.#wait = setTimeout(() => {
        this.#wait = null;
        this.#check();
      }, this.limits.queueDeadlineMs);
    }
  }

  #flush(): void {
    if (this.#wait !== null) {
      clearTimeout(this.#wait);
      this.#wait = null;
    }
    // Take callers in arrival order up to maxRows (at least one, whatever its size).
    let rows = 0;
    let take = 0;
    while (take < this.#queue.length && (take === 0 || rows + this.#queue[take].rows <= this.limits.maxRows)) {
      rows += this.#queue[take].rows;
      take++;
    }
    const batch = this.#queue.splice(0, take);
    this.#queuedRows -= rows;
    this.#inFlight++;
    this.batches++;
    this.callers += batch.length;
    void this.#send(batch);
    if (this.#queue.length > 0) this.#schedule();
  }

  async #send(batch: Waiter<T, R>[]): Promise<void> {
    let results: BatchResult<R>[];
    try {
      results = await this.run(batch);
      if (results.length !== batch.length) throw new Error(`internal: ${results.length} results for ${batch.length}`);
    } catch (error) {
      results = batch.map(() => ({ ok: false, error }));
    }
    batch.forEach((w, i) => this.#settle(w, results[i]));
    this.#inFlight--;
    if (this.#queue.length > 0) this.#schedule();
  }

  #settle(w: Waiter<T, R>, r: BatchResult<R>): void {
    if (w.signal && w.onAbort) w.signal.removeEventListener("abort", w.onAbort);
    if (w.gone) return;
    w.gone = true;
    if (r.ok) w.resolve(r.value);
    else w.reject(r.error);
  }
}

function abortReasonOf(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("the request was aborted", "AbortError");
}
