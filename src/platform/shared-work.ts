/**
 * @module Work that concurrent requests of one isolate share — a model load, an upload check, a
 * ranged read of embedding rows — run once, each request that waits for it waiting in its own request.
 *
 * workerd gives each request its own I/O context, and the work's I/O belongs to the request that
 * started it. That request may answer or be cancelled (its client disconnected) before the work
 * finishes: the work's I/O is then cancelled and its promise — orphaned — never settles, so a
 * request awaiting it would wait forever. And a request that only awaits another request's promise,
 * with no pending I/O of its own, is cancelled as hung. (Where a settled promise resumes its
 * awaiter is not the problem: workerd resumes it in the awaiter's own request — README
 * "Continuous batching".)
 *
 * A `Flight` is the work as its starter sees it (`promise`, awaited in the starter's own request)
 * plus what everyone else sees: a recorded outcome and a heartbeat the starter's request ticks
 * while the work runs. Another request `join`s: it looks at the outcome with timers of its own
 * request (pending I/O of its own, so it is never taken for hung) and, when the heartbeat stops moving — the starter's
 * request is gone and its I/O with it — gives up with OrphanedWorkError, and starts the work again
 * itself (`shareWork`). The same pattern as the batch queue's hand-over (src/platform/coalescer.ts).
 */

/** How often the starter's request ticks the heartbeat while the work runs, in ms. */
export const HEARTBEAT_MS = 50;
/** A joiner's first look comes after this many ms; the interval doubles up to HEARTBEAT_MS. */
const FIRST_POLL_MS = 1;
/**
 * The heartbeat unchanged for this long (and over ORPHANED_POLLS looks) means the starter's request
 * is gone: twenty missed beats. Counting looks too keeps one long synchronous stretch (a weight
 * decode holding the thread) from reading as death — the beat is due right after it.
 */
export const ORPHANED_MS = 1000;
const ORPHANED_POLLS = 10;

/** The starter's request went away before the work settled: join again or start the work yourself. */
export class OrphanedWorkError extends Error {
  override name = "OrphanedWorkError";
}

type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

export class Flight<T> {
  #outcome: Outcome<T> | null = null;
  #beat = 0;
  /** A joiner found the heartbeat stopped: nobody will settle this flight. */
  #orphaned = false;
  /** The work itself: await it only in the request that started it. */
  readonly promise: Promise<T>;

  /** Starts `work` in the caller's request (the starter), with the heartbeat ticking there. */
  constructor(work: () => Promise<T>) {
    const tick = setInterval(() => this.#beat++, HEARTBEAT_MS);
    this.promise = (async () => work())().then(
      (value) => {
        this.#outcome = { ok: true, value };
        clearInterval(tick);
        return value;
      },
      (error: unknown) => {
        this.#outcome = { ok: false, error };
        clearInterval(tick);
        throw error;
      },
    );
    // Unobserved rejections are the starter's to handle; joiners read the outcome.
    this.promise.catch(() => {});
  }

  get settled(): boolean {
    return this.#outcome !== null;
  }

  /** Whether a joiner saw the starter's request go away before the work settled. */
  get orphaned(): boolean {
    return this.#orphaned && this.#outcome === null;
  }

  /**
   * The outcome, picked up in the caller's own request: settled now → at once; otherwise by timers
   * of the caller's request. Rejects with OrphanedWorkError when the starter's request is gone, and
   * with `signal`'s reason when the caller's own request is.
   */
  join(signal?: AbortSignal): Promise<T> {
    const now = this.#outcome;
    if (now) return now.ok ? Promise.resolve(now.value) : Promise.reject(now.error);
    return new Promise<T>((resolve, reject) => {
      let wait = FIRST_POLL_MS;
      let beat = this.#beat;
      let seenAt = Date.now();
      let still = 0;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal?.reason);
      };
      const look = () => {
        const out = this.#outcome;
        if (out) {
          signal?.removeEventListener("abort", onAbort);
          if (out.ok) resolve(out.value);
          else reject(out.error);
          return;
        }
        if (this.#beat !== beat) {
          beat = this.#beat;
          seenAt = Date.now();
          still = 0;
        } else if (++still >= ORPHANED_POLLS && Date.now() - seenAt >= ORPHANED_MS) {
          this.#orphaned = true;
        }
        if (this.#orphaned) {
          signal?.removeEventListener("abort", onAbort);
          reject(new OrphanedWorkError("the request that started this work went away before it finished"));
          return;
        }
        wait = Math.min(wait * 2, HEARTBEAT_MS);
        timer = setTimeout(look, wait);
      };
      if (signal?.aborted) return reject(signal.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      timer = setTimeout(look, wait);
    });
  }
}

/**
 * The outcome of the work `current()` stands for, or of `start()` when there is none or it was
 * orphaned: joins another request's flight in this request's own context; otherwise starts a new
 * one (and awaits it, as its starter). `start` records the new flight where `current()` and later
 * callers find it. Two joiners of an orphaned flight: the first starts the work again, the second
 * finds that flight on its next look and joins it.
 */
export async function shareWork<T>(
  current: () => Flight<T> | null | undefined,
  start: () => Flight<T>,
  signal?: AbortSignal,
): Promise<T> {
  for (;;) {
    const f = current();
    if (!f || f.orphaned) return start().promise;
    try {
      return await f.join(signal);
    } catch (err) {
      if (!(err instanceof OrphanedWorkError)) throw err;
    }
  }
}
