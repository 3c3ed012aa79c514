/**
 * @module Step-level continuous batching (vLLM style) for a model the Worker runs whole: the
 * generations of one model and upload in this isolate share decode steps. Each step is ONE batched
 * forward pass (`ModelForward.step`: dense work over all rows, attention per session over its own
 * KV cache, one expert fan-out per MoE layer, one head pass) that gives every member its next
 * token; a new generation joins at the next step, its prompt in chunks of at most
 * STEP_PREFILL_TOKENS per step, so running streams keep producing while prompts are read.
 *
 * Who runs the steps: the generation whose call found no loop running (the leader) runs them in
 * its own request, back to back, sampling each member's token with that member's own random source
 * and parameters, while the members' consumers take their tokens. Members are never waited for: a
 * step takes whoever has work and room (at most LOOKAHEAD tokens not yet taken), so one stream alone
 * pays no wait at all. When the leader's own generation ends, its loop stops after the step in
 * flight and another member picks it up from its own request.
 *
 * workerd: a member waits on a promise the leader resolves from another request. With
 * `handle_cross_request_promise_resolution` (on since compatibility date 2024-10-14) the member
 * resumes in its own request (a hop measured at well under 0.1 ms, against ~1.2 ms for a
 * `setTimeout(0)` wake), but a request that waits only on another request's work is cancelled as
 * hung, so every wait also holds a deadline timer of the member's own — created, and cleared, in
 * the member's request (a timer cannot be cleared from another request).
 */
import type { Session, StepOutcome, StepSegment } from "./forward";
import { sampleToken, type SamplingParams } from "./sampling";

/** Prompt tokens read per step at most, over every joining generation (TTFT vs the others' pace). */
export const STEP_PREFILL_TOKENS = 256;
/** Rows (tokens) in one step at most: bounds the step's Wasm scratch. */
export const MAX_STEP_ROWS = 512;
/** Tokens a member may have produced and not yet taken: the steps never wait for a slow consumer. */
export const LOOKAHEAD = 2;
/** Longest a member waits for a step to answer (bounds a stuck step; a decode step is milliseconds). */
export const STEP_WAIT_MS = 120_000;

/** One generation as the steps see it. */
export interface StepStreamSpec {
  session: Session;
  promptIds: number[];
  maxTokens: number;
  sampling: SamplingParams;
  rng: () => number;
  eos: ReadonlySet<number>;
}

class Stream {
  /** Tokens to run next: the prompt's rest, then the last sampled token. */
  pending: number[];
  prefilled = false;
  produced = 0;
  /** Sampled tokens the consumer has not taken yet. */
  readonly outbox: number[] = [];
  /** No further token: EOS, max_tokens or an error. */
  done = false;
  error: unknown = null;
  /** The consumer left (abort, stop string, end): no further step includes it. */
  gone = false;
  /** Inside the step in flight (its KV cache is being written). */
  inStep = false;
  /** Wakes the consumer's wait (set while it waits). */
  wake: (() => void) | null = null;
  constructor(readonly spec: StepStreamSpec) {
    this.pending = spec.promptIds.slice();
  }

  get ready(): boolean {
    return !this.gone && !this.done && this.outbox.length < LOOKAHEAD && this.pending.length > 0;
  }
}

/** Per step: the segments and rows it ran (the batch-size metric). */
export type StepObserver = (segments: number, rows: number) => void;

export class StepBatcher {
  #streams: Stream[] = [];
  #looping = false;
  /** Steps run and rows (tokens) they carried (tests, stats). */
  steps = 0;
  rows = 0;
  segments = 0;

  constructor(
    private readonly run: (segs: StepSegment[]) => Promise<StepOutcome[]>,
    /** Keeps the leader's request alive until its loop stops (the Worker's waitUntil). */
    private readonly keepAlive?: (work: Promise<unknown>) => void,
    private readonly observe?: StepObserver,
  ) {}

  /** Generations sharing the steps now. */
  get members(): number {
    return this.#streams.filter((s) => !s.gone).length;
  }

  /**
   * The tokens of one generation, produced by steps shared with the isolate's other generations.
   * `signal` aborts the wait at once; the session's KV cache is no longer written once this
   * generator has returned (free it after).
   */
  async *tokens(spec: StepStreamSpec, signal?: AbortSignal): AsyncGenerator<number> {
    const st = new Stream(spec);
    this.#streams.push(st);
    try {
      for (;;) {
        signal?.throwIfAborted();
        const id = st.outbox.shift();
        if (id !== undefined) {
          this.#ensureLoop(st);
          yield id;
          continue;
        }
        if (st.error !== null) throw st.error;
        if (st.done) return;
        this.#ensureLoop(st);
        if (st.outbox.length === 0 && st.error === null && !st.done) await this.#wait(st, signal);
      }
    } finally {
      st.gone = true;
      if (st.inStep) await this.#wait(st);
      this.#streams = this.#streams.filter((s) => s !== st);
    }
  }

  /** Starts the step loop in the caller's request when none runs and some member has work. */
  #ensureLoop(leader: Stream): void {
    if (this.#looping || !this.#streams.some((s) => s.ready)) return;
    this.#looping = true;
    const loop = this.#loop(leader);
    this.keepAlive?.(loop);
  }

  async #loop(leader: Stream): Promise<void> {
    try {
      // The leader's request holds the loop's I/O: it stops leading once its own generation ends.
      while (!leader.gone) {
        const batch = this.#pick();
        if (batch.length === 0) break;
        await this.#step(batch);
      }
    } finally {
      this.#looping = false;
      // Whoever still waits picks the loop up from its own request.
      for (const s of this.#streams) s.wake?.();
    }
  }

  /** This step's rows: every decoding member's token, then prompt chunks up to the prefill budget. */
  #pick(): { st: Stream; tokens: number[] }[] {
    const out: { st: Stream; tokens: number[] }[] = [];
    let rows = 0;
    for (const st of this.#streams) {
      if (!st.ready || !st.prefilled || rows >= MAX_STEP_ROWS) continue;
      out.push({ st, tokens: st.pending });
      rows += st.pending.length;
    }
    let budget = Math.min(STEP_PREFILL_TOKENS, MAX_STEP_ROWS - rows);
    for (const st of this.#streams) {
      if (!st.ready || st.prefilled || budget <= 0) continue;
      const chunk = st.pending.slice(0, budget);
      out.push({ st, tokens: chunk });
      budget -= chunk.length;
    }
    // A session that would run past its KV cache fails alone, before the step.
    return out.filter(({ st, tokens }) => {
      const { session } = st.spec;
      if (session.length + tokens.length <= session.maxLen) return true;
      st.error = new Error(`session holds ${session.maxLen} positions, asked for ${session.length + tokens.length}`);
      st.done = true;
      st.wake?.();
      return false;
    });
  }

  async #step(batch: { st: Stream; tokens: number[] }[]): Promise<void> {
    const segs: StepSegment[] = batch.map(({ st, tokens }) => ({
      session: st.spec.session,
      tokens,
      nOut: tokens.length === st.pending.length ? 1 : 0,
      rng: st.spec.rng,
    }));
    for (const { st } of batch) st.inStep = true;
    let out: StepOutcome[];
    try {
      out = await this.run(segs);
    } catch (error) {
      out = segs.map(() => ({ ok: false, error }));
    }
    const rows = segs.reduce((n, g) => n + g.tokens.length, 0);
    this.steps++;
    this.rows += rows;
    this.segments += segs.length;
    this.observe?.(segs.length, rows);
    batch.forEach(({ st, tokens }, i) => {
      st.inStep = false;
      const r = out[i];
      if (!r.ok) {
        st.error = r.error;
        st.done = true;
      } else if (!st.gone) {
        st.pending = st.pending.slice(tokens.length);
        if (segs[i].nOut === 1) this.#sample(st, r.logits);
      }
      st.wake?.();
    });
  }

  /** The member's next token, drawn as its own decode loop draws it (its parameters, its source). */
  #sample(st: Stream, logits: Float32Array): void {
    const { sampling, rng, eos, maxTokens } = st.spec;
    const id = sampleToken(logits, sampling, rng);
    st.prefilled = true;
    st.produced++;
    st.outbox.push(id);
    if (eos.has(id) || st.produced >= maxTokens) st.done = true;
    else st.pending = [id];
  }

  /** Waits for a wake; the timer and the abort listener are this request's own, and cleared here. */
  async #wait(st: Stream, signal?: AbortSignal): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let onAbort: (() => void) | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        st.wake = resolve;
        timer = setTimeout(() => reject(new Error(`no decode step answered within ${STEP_WAIT_MS} ms`)), STEP_WAIT_MS);
        if (signal) {
          onAbort = () => reject(signal.reason ?? new DOMException("the request was aborted", "AbortError"));
          signal.addEventListener("abort", onAbort, { once: true });
        }
      });
    } finally {
      st.wake = null;
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener("abort", onAbort);
    }
  }
}
