/**
 * @module KV-cache admission (pure): sessions reserve their KV bytes up front against a byte
 * budget, so a full instance refuses a new session (429 + Retry-After) instead of running out of
 * memory mid-generation; sessions idle longer than a limit are reported for freeing. A session a
 * call is running on is never idle, however long the call takes: a stage's chunk waits for its
 * experts and the later stages, which on a cold pipeline takes longer than the idle limit, and
 * freeing its KV cache then pulled it from under the running call (the next token found the session
 * lost and the driver replayed it). Nor is its KV cache freed while a call runs on it: ending a session
 * then (a client abort while a chunk waits on its experts) only marks it, and the last call's
 * `release` hands it back to free — freeing it under the running call sent that call's K/V writes to
 * address 0 of the Wasm memory every session there shares.
 */

export type Admission = { ok: true } | { ok: false; reason: "full" | "too_long"; needBytes: number; freeBytes: number };

interface Entry<S> {
  bytes: number;
  lastUsed: number;
  /** Calls running on the session (between `acquire` and `release`). */
  inUse: number;
  /** Ended while a call ran on it: removed by the last call's `release`. */
  ending: boolean;
  value: S;
}

export class KvLedger<S = unknown> {
  readonly #sessions = new Map<string, Entry<S>>();
  #used = 0;
  peak = 0;
  refused = 0;

  constructor(readonly budgetBytes: number) {}

  get usedBytes(): number {
    return this.#used;
  }

  get size(): number {
    return this.#sessions.size;
  }

  /** Whether `bytes` more fit now; a session larger than the whole budget can never fit. */
  admit(bytes: number): Admission {
    const free = this.budgetBytes - this.#used;
    if (bytes > this.budgetBytes) return { ok: false, reason: "too_long", needBytes: bytes, freeBytes: free };
    if (bytes > free) {
      this.refused++;
      return { ok: false, reason: "full", needBytes: bytes, freeBytes: free };
    }
    return { ok: true };
  }

  /** Records an admitted session (call `admit` first). */
  add(id: string, bytes: number, value: S, now: number): void {
    // An ended session's last call still runs on its memory: a new session under its id must not hide it.
    if (this.#sessions.get(id)?.ending) throw new Error(`session ${id} was ended and a call on it is still running`);
    this.#sessions.set(id, { bytes, lastUsed: now, inUse: 0, ending: false, value });
    this.#used += bytes;
    this.peak = Math.max(this.peak, this.#used);
  }

  /** The session (undefined when unknown or ended). */
  get(id: string, now: number): S | undefined {
    const e = this.#sessions.get(id);
    if (!e || e.ending) return undefined;
    e.lastUsed = now;
    return e?.value;
  }

  /** Like `get`, and the session is in use (never idle) until the matching `release`. */
  acquire(id: string, now: number): S | undefined {
    const e = this.#sessions.get(id);
    if (!e || e.ending) return undefined;
    e.inUse++;
    e.lastUsed = now;
    return e.value;
  }

  /**
   * A call that `acquire`d the session ended: its idle time counts from now. When the session was
   * ended meanwhile and this was the last call on it, it is removed and its value returned for the
   * caller to free; otherwise undefined. Unknown ids are ignored.
   */
  release(id: string, now: number): S | undefined {
    const e = this.#sessions.get(id);
    if (!e) return undefined;
    e.inUse = Math.max(0, e.inUse - 1);
    e.lastUsed = now;
    return e.ending && e.inUse === 0 ? this.#delete(id, e) : undefined;
  }

  /**
   * Ends a session: returns its value to free, or undefined when unknown — or when a call still runs
   * on it, which then finds it ended and whose `release` returns it to free.
   */
  remove(id: string): S | undefined {
    const e = this.#sessions.get(id);
    if (!e || e.ending) return undefined;
    if (e.inUse > 0) {
      e.ending = true;
      return undefined;
    }
    return this.#delete(id, e);
  }

  #delete(id: string, e: Entry<S>): S {
    this.#sessions.delete(id);
    this.#used -= e.bytes;
    return e.value;
  }

  /** Ids of sessions no call is running on and unused for longer than `idleMs`. */
  idle(now: number, idleMs: number): string[] {
    return [...this.#sessions].filter(([, e]) => e.inUse === 0 && now - e.lastUsed > idleMs).map(([id]) => id);
  }
}
