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
 * (its AbortSignal) leaves the others' batch alone: its promise rejects (at its next poll), its
 * rows are dropped from the queue or their answer ignored.
 *
 * workerd: a caller that only awaits a promise another request settles, with no pending I/O of
 * its own, is cancelled as hung, and one whose sender's request is cancelled first waits forever;
 * and handing answers over directly cut streams under chaos load here (why was not found — a
 * probe shows such a promise resumes its awaiter in the awaiter's own request; README "Promises
 * shared across requests"). So nothing here resolves a caller from another request:
 * the sender only records each answer and wakes are counted, and every caller picks its answer
 * up, and notices wakes, with timers of its own request (polled every HAND_OVER_POLL_MS).
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
  /**
   * What "the same turn" is: "timer" (default) — the next macrotask (`setTimeout(0)`), which admits
   * every call already delivered, and in workerd the continuations of other requests (a promise
   * resolved across requests resumes its awaiter in a task of its own, not in this microtask
   * checkpoint); "microtasks" — once the microtask queue has turned over TURN_MICROTASKS times:
   * no timer, but only callers resumed in this very checkpoint (one request, one isolate) join.
   */
  turn?: "microtasks" | "timer";
  /**
   * Longest a sent batch may take to answer a caller, in ms (default 60000): past it the caller is
   * refused. The timer is the caller's own, so while it waits for a batch another request sent the
   * caller still holds pending work of its own — workerd cancels a request that waits only on
   * another request's I/O as hung.
   */
  runDeadlineMs?: number;
  /**
   * How a caller gets its answer: "poll" (default) — picked up by the caller's own timer (a Worker
   * isolate: a promise settled from another request would resume the caller there, see above);
   * "direct" — settled at once by whoever ran the batch: for a Durable Object, whose requests all
   * run in the object's one context, so a 1 ms pickup would only add latency to every call.
   */
  handOver?: "poll" | "direct";
}

/**
 * Microtask rounds a "microtasks" turn lasts: more than the await hops between one merged call's
 * answer and a caller's next call (promise adoption, a few async frames, the dense layer between).
 */
export const TURN_MICROTASKS = 64;

/** How often a waiting caller looks for its answer or a change of the queue, in ms. */
const HAND_OVER_POLL_MS = 1;

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
  deadline?: ReturnType<typeof setTimeout>;
  queuedAt: number;
  signal?: AbortSignal;
  resolve(value: R): void;
  reject(err: unknown): void;
  onAbort?: () => void;
  /** The answer, set by whichever request settled it; handed over by the caller's own timer. */
  result?: BatchResult<R>;
  /** "direct" hand-over: delivers `result` at once (set only then). */
  handOver?: () => void;
}

/** Runs one batch; answers one result per entry, in order (throwing fails every entry). */
export type BatchRunner<T, R> = (entries: readonly BatchEntry<T>[]) => Promise<BatchResult<R>[]>;

export class Coalescer<T, R> {
  #queue: Waiter<T, R>[] = [];
  #queuedRows = 0;
  #inFlight = 0;
  /** Bumped by every event a waiting driver may act on (a call arrived, a batch answered, a caller left). */
  #epoch = 0;
  /** Batches sent and callers served (stats, tests). */
  batches = 0;
  callers = 0;

  constructor(
    private readonly run: BatchRunner<T, R>,
    readonly limits: CoalescerLimits,
    /** How many callers are expected to meet here (absent: whoever came in the same turn). */
    private readonly quorum?: () => number,
    private readonly label = "batch queue",
    /**
     * Keeps the flushing caller's request alive until the batch it sent answers (the Worker's
     * `waitUntil`): the batch's I/O belongs to that request, and the others wait for it.
     */
    private readonly keepAlive?: (work: Promise<unknown>) => void,
  ) {}

  /** Rows waiting in the queue now. */
  get queuedRows(): number {
    return this.#queuedRows;
  }

  /** Queues one call; resolves with its own result when its batch answers. */
  submit(item: T, rows: number, signal?: AbortSignal): Promise<R> {
    if (signal?.aborted) return Promise.reject(abortReasonOf(signal));
    // Alone: one caller is expected (this one) and none is queued or running — nobody to merge with, so
    // the call runs at once in the caller's own request: no turn, no timer, no hand-over.
    if (this.quorum?.() === 1 && this.#queue.length === 0 && this.#inFlight === 0) {
      return this.#runAlone(item, rows, signal);
    }
    if (this.#queuedRows + rows > this.limits.maxQueuedRows && this.#queue.length > 0) {
      const message = `${this.label} is full (${this.#queuedRows} rows queued, at most ${this.limits.maxQueuedRows})`;
      return Promise.reject(new QueueFullError(message, this.#retryAfterS()));
    }
    return new Promise<R>((resolve, reject) => {
      const w: Waiter<T, R> = { item, rows, gone: false, queuedAt: Date.now(), signal, resolve, reject };
      // The answer is handed over by a timer of the caller's own request, never by settling the
      // caller's promise from the request that sent the batch (see the module comment).
      const handOver = () => {
        const r = w.result;
        if (!r) {
          setTimeout(handOver, HAND_OVER_POLL_MS);
          return;
        }
        clearTimeout(w.deadline);
        if (r.ok) resolve(r.value);
        else reject(r.error);
      };
      if (this.#direct) w.handOver = handOver;
      else setTimeout(handOver, 0);
      if (signal) {
        w.onAbort = () => this.#abort(w);
        signal.addEventListener("abort", w.onAbort, { once: true });
      }
      this.#queue.push(w);
      this.#queuedRows += rows;
      // A full batch, or one that every expected caller has joined, leaves at once, sent by the
      // caller that completed it: lockstep callers then pay no turn and no timer at all.
      const expected = this.quorum?.() ?? 0;
      const complete = expected > 0 && this.#queue.length >= expected;
      if ((complete || this.#queuedRows >= this.limits.maxRows) && this.#inFlight < this.limits.maxInFlight) {
        this.#flush();
      }
      this.#wake();
      if (!this.#queue.includes(w)) return;
      const limit = this.limits.maxWaitMs + this.limits.queueDeadlineMs + (this.limits.runDeadlineMs ?? 60_000);
      w.deadline = setTimeout(() => this.#refuse(w, `no answer within ${limit} ms`), limit);
      // Every caller drives the queue from its own request: a batch is always sent by a caller
      // still waiting (a runtime ties I/O and timers to the request that started them).
      void this.#drive(w);
    });
  }

  async #runAlone(item: T, rows: number, signal?: AbortSignal): Promise<R> {
    this.#inFlight++;
    this.batches++;
    this.callers++;
    try {
      const [r] = await this.run([{ item, rows, gone: signal?.aborted ?? false }]);
      if (!r) throw new Error("internal: no result for a lone call");
      if (!r.ok) throw r.error;
      return r.value;
    } finally {
      this.#inFlight--;
      this.#wake();
    }
  }

  #retryAfterS(): number {
    return Math.max(1, Math.ceil(this.limits.queueDeadlineMs / 1000));
  }

  #abort(w: Waiter<T, R>): void {
    if (w.gone) return;
    w.gone = true;
    clearTimeout(w.deadline);
    const i = this.#queue.indexOf(w);
    if (i >= 0) {
      this.#queue.splice(i, 1);
      this.#queuedRows -= w.rows;
    }
    w.result = { ok: false, error: abortReasonOf(w.signal!) };
    w.handOver?.();
    this.#wake();
  }

  #wake(): void {
    this.#epoch++;
    if (this.#direct) for (const f of this.#sleepers.splice(0)) f();
  }

  get #direct(): boolean {
    return this.limits.handOver === "direct";
  }

  /** "direct" hand-over: callers sleeping in #drive, woken by the next #wake. */
  #sleepers: (() => void)[] = [];

  /**
   * Resolves after `ms`, or sooner once a #wake happened (seen by polling: the timer is the
   * caller's own, so the caller resumes in its own request, never in the waker's).
   */
  #sleep(ms: number): Promise<void> {
    if (this.#direct) {
      return new Promise<void>((resolve) => {
        const sleepers = this.#sleepers;
        const timer = setTimeout(
          () => {
            // Woken by its own timer: leave the list, so it does not grow between wakes.
            const at = sleepers.indexOf(done);
            if (at >= 0) sleepers.splice(at, 1);
            resolve();
          },
          Math.max(0, ms),
        );
        function done() {
          clearTimeout(timer);
          resolve();
        }
        sleepers.push(done);
      });
    }
    const epoch = this.#epoch;
    const until = Date.now() + Math.max(0, ms);
    return new Promise<void>((resolve) => {
      const tick = () => {
        if (this.#epoch !== epoch || Date.now() >= until) resolve();
        else setTimeout(tick, Math.min(HAND_OVER_POLL_MS, Math.max(0, until - Date.now())));
      };
      setTimeout(tick, 0);
    });
  }

  /** One caller's loop: until its call has left, send a batch whenever one may leave. */
  async #drive(w: Waiter<T, R>): Promise<void> {
    // The same turn: every caller already resumed by the same event joins before the batch leaves.
    if (this.limits.turn === "microtasks") await afterMicrotasks(TURN_MICROTASKS);
    else await new Promise((r) => setTimeout(r, 0));
    const deadline = w.queuedAt + this.limits.maxWaitMs + this.limits.queueDeadlineMs;
    while (!w.gone && this.#queue.includes(w)) {
      const now = Date.now();
      if (this.#inFlight >= this.limits.maxInFlight) {
        if (now > deadline) {
          this.#refuse(w, `waited ${now - w.queuedAt} ms for a free slot (deadline ${deadline - w.queuedAt} ms)`);
          return;
        }
        await this.#sleep(deadline - now + 1); // a batch answering wakes us
        continue;
      }
      const head = this.#queue[0];
      const waited = now - head.queuedAt;
      const expected = this.quorum?.() ?? 0;
      if (
        this.#queuedRows >= this.limits.maxRows ||
        this.#queue.length >= expected ||
        waited >= this.limits.maxWaitMs
      ) {
        this.#flush();
        continue;
      }
      // Others are on their way (a request behind in its step): wait for them, boundedly.
      await this.#sleep(this.limits.maxWaitMs - waited);
    }
  }

  #refuse(w: Waiter<T, R>, why: string): void {
    const i = this.#queue.indexOf(w);
    if (i >= 0) {
      this.#queue.splice(i, 1);
      this.#queuedRows -= w.rows;
    }
    this.#settle(w, { ok: false, error: new QueueFullError(`${this.label}: ${why}`, this.#retryAfterS()) });
  }

  #flush(): void {
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
    const sent = this.#send(batch);
    this.keepAlive?.(sent);
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
    this.#wake();
  }

  #settle(w: Waiter<T, R>, r: BatchResult<R>): void {
    if (w.signal && w.onAbort) w.signal.removeEventListener("abort", w.onAbort);
    if (w.gone) return;
    w.gone = true;
    w.result = r;
    w.handOver?.();
  }
}

async function afterMicrotasks(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await undefined;
}

function abortReasonOf(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("the request was aborted", "AbortError");
}
