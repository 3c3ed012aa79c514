/**
 * @module High-water marks of an instance's memory (StageHost, HeadHost, ExpertHost, the Worker),
 * for `/admin/hosts`: its stats show what is held now, and a budget check after a burst needs the
 * most it ever held. The owner notes a sample wherever what it holds can change (a load, an
 * admitted session, the end of a call) and when its stats are read.
 *
 * Two figures, both since the instance started:
 * - `bytesHeldPeak`: the most budgeted bytes held at once — weights, plus KV caches where the
 *   instance keeps them — what its budget vars bound;
 * - `wasmMemoryPeakBytes`: the largest total size its Wasm linear memories reached. A linear
 *   memory only grows, and the kernels' arena grows it only when an allocation needs room, so this
 *   covers the per-call scratch that "bytes in use" misses between calls. `wasmPagesPeak` is the
 *   same in 64 KiB pages. JS heap is not measurable inside workerd, so it is not counted.
 */

const WASM_PAGE_BYTES = 65_536;

export interface MemorySample {
  bytesHeld: number;
  wasmMemoryBytes: number;
}

export interface MemoryPeakStats {
  bytesHeldPeak: number;
  wasmMemoryPeakBytes: number;
  wasmPagesPeak: number;
  /** When the instance (its tracking) started, ISO 8601: peaks are since then. */
  since: string;
}

export class MemoryPeak {
  #bytesHeld = 0;
  #wasmBytes = 0;
  readonly #since = new Date().toISOString();

  /** Folds one sample in; returns the peaks so far. */
  note(s: MemorySample): MemoryPeakStats {
    this.#bytesHeld = Math.max(this.#bytesHeld, s.bytesHeld);
    this.#wasmBytes = Math.max(this.#wasmBytes, s.wasmMemoryBytes);
    return this.stats;
  }

  get stats(): MemoryPeakStats {
    return {
      bytesHeldPeak: this.#bytesHeld,
      wasmMemoryPeakBytes: this.#wasmBytes,
      wasmPagesPeak: Math.ceil(this.#wasmBytes / WASM_PAGE_BYTES),
      since: this.#since,
    };
  }
}
