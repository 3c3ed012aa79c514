/**
 * @module KV-cache admission (pure): sessions reserve their KV bytes up front against a byte
 * budget, so a full instance refuses a new session (429 + Retry-After) instead of running out of
 * memory mid-generation; sessions idle longer than a limit are reported for freeing. A session a
 * call is running on is never idle, however long the call takes: a stage's chunk waits for its
 * experts and the later stages, which on a cold pipeline takes longer than the idle limit, and
 * freeing its KV cache then pulled it from under the running call (the next token found the session
 * lost and the driver replayed it).
 */

export type Admission = { ok: true } | { ok: false; reason: "full" | "too_long"; needBytes: number; freeBytes: number };

export class KvLedger<S = unknown> {
  readonly #sessions = new Map<string, { bytes: number; lastUsed: number; inUse: number; value: S }>();
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
    this.#sessions.set(id, { bytes, lastUsed: now, inUse: 0, value });
    this.#used += bytes;
    this.peak = Math.max(this.peak, this.#used);
  }

  get(id: string, now: number): S | undefined {
    const e = this.#sessions.get(id);
    if (e) e.lastUsed = now;
    return e?.value;
  }

  /** Like `get`, and the session is in use (never idle) until the matching `release`. */
  acquire(id: string, now: number): S | undefined {
    const e = this.#sessions.get(id);
    if (!e) return undefined;
    e.inUse++;
    e.lastUsed = now;
    return e.value;
  }

  /** A call that `acquire`d the session ended: its idle time counts from now. Unknown ids are ignored. */
  release(id: string, now: number): void {
    const e = this.#sessions.get(id);
    if (!e) return;
    e.inUse = Math.max(0, e.inUse - 1);
    e.lastUsed = now;
  }

  /** Removes a session; returns its value to free (undefined when unknown). */
  remove(id: string): S | undefined {
    const e = this.#sessions.get(id);
    if (!e) return undefined;
    this.#sessions.delete(id);
    this.#used -= e.bytes;
    return e.value;
  }

  /** Ids of sessions no call is running on and unused for longer than `idleMs`. */
  idle(now: number, idleMs: number): string[] {
    return [...this.#sessions].filter(([, e]) => e.inUse === 0 && now - e.lastUsed > idleMs).map(([id]) => id);
  }
}
