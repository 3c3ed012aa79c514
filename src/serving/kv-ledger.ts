/**
 * @module KV-cache admission (pure): sessions reserve their KV bytes up front against a byte
 * budget, so a full instance refuses a new session (429 + Retry-After) instead of running out of
 * memory mid-generation; sessions idle longer than a limit are reported for freeing.
 */

export type Admission = { ok: true } | { ok: false; reason: "full" | "too_long"; needBytes: number; freeBytes: number };

export class KvLedger<S = unknown> {
  readonly #sessions = new Map<string, { bytes: number; lastUsed: number; value: S }>();
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
    this.#sessions.set(id, { bytes, lastUsed: now, value });
    this.#used += bytes;
    this.peak = Math.max(this.peak, this.#used);
  }

  get(id: string, now: number): S | undefined {
    const e = this.#sessions.get(id);
    if (e) e.lastUsed = now;
    return e?.value;
  }

  /** Removes a session; returns its value to free (undefined when unknown). */
  remove(id: string): S | undefined {
    const e = this.#sessions.get(id);
    if (!e) return undefined;
    this.#sessions.delete(id);
    this.#used -= e.bytes;
    return e.value;
  }

  /** Ids of sessions unused for longer than `idleMs`. */
  idle(now: number, idleMs: number): string[] {
    return [...this.#sessions].filter(([, e]) => now - e.lastUsed > idleMs).map(([id]) => id);
  }
}
