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
 * pays no wait at all. When the leader's own generation ends, or after LEAD_STEPS steps or LEAD_MS,
 * its loop stops after the step in flight and another member picks it up from its own request; a
 * request leads at most LEAD_FOR_OTHERS_STEPS steps in all with no work of its own in them (its
 * invocation's subrequests stay bounded, src/stages/rpc-count.ts). A
 * leader's request can die mid-step (CPU limit, cancellation) and its step then never answers: a
 * member that waited a whole STEP_WAIT_MS on the same step gives it up (its members fail, their KV
 * caches are freed only once it returns: `settled`) and starts a fresh loop.
 *
 * workerd: a member waits on a promise the leader resolves from another request. With
 * `handle_cross_request_promise_resolution` (on since compatibility date 2024-10-14) the member
 * resumes in its own request (a hop measured at well under 0.1 ms, against ~1.2 ms for a
 * `setTimeout(0)` wake), but a request that waits only on another request's work is cancelled as
 * hung, so every wait also holds a deadline timer of the member's own — created, and cleared, in
 * the member's request (a timer cannot be cleared from another request).
 */
import type { Session, StepOutcome, StepSegment } from "./forward";
import { commonPrefix, PREFIX_WAIT_MIN_TOKENS, RetainedPrefixes, type CopyPositions } from "./prefix-share";
import { sampleToken, type SamplingParams } from "./sampling";
import { CATCH_UP_YIELDS, consumerBehind, macrotask } from "./step-yield";

/** Prompt tokens read per step at most, over every joining generation (TTFT vs the others' pace). */
export const STEP_PREFILL_TOKENS = 256;
/** Rows (tokens) in one step at most: bounds the step's Wasm scratch. */
export const MAX_STEP_ROWS = 512;
/** Tokens a member may have produced and not yet taken: the steps never wait for a slow consumer. */
export const LOOKAHEAD = 2;
/** Longest a member waits for a step to answer (bounds a stuck step; a decode step is milliseconds). */
export const STEP_WAIT_MS = 120_000;
/**
 * Steps one leader runs, and how long, before it hands the loop on: the steps run in the leader's
 * request, so a request never spends more than this of its own time (CPU limit) on the others.
 */
export const LEAD_STEPS = 64;
export const LEAD_MS = 2_000;
/**
 * Steps without a row of its own one generation's request leads in all, over every turn it leads:
 * each step's RPCs are subrequests of the leader's invocation, so this bounds what the others add
 * to it (src/stages/rpc-count.ts counts the worst case against `[limits] subrequests`). A request
 * past it hands the loop on at the first step it has no row in; steps with its own row it always
 * leads (it would run them alone).
 */
export const LEAD_FOR_OTHERS_STEPS = 1024;

/**
 * Longest a leader runs steps alone without handing the thread to the isolate's other work. In
 * local workerd the ExpertHost calls of a step never wait on the network, so a loop that only
 * awaits them never lets the event loop poll: requests arriving meanwhile are not read, members'
 * consumers do not run and their responses are not written until the loop stops. A macrotask
 * (a 0 ms timer) between steps lets them through: after every step when other members share the
 * steps, at most this often when the leader is alone (a timer costs ~1 ms); a few more while a
 * member's consumer is behind (src/serving/step-yield.ts).
 */
export const LONE_YIELD_MS = 40;

/** Limits of a StepBatcher (tests shorten them). */
export interface StepLimits {
  /** Rows (tokens) per step: at most MAX_STEP_ROWS. */
  maxRows: number;
  /**
   * Whether a step of `rows` rows, `outRows` of them wanting logits, fits the step's scratch
   * (`ModelForward.stepScratchBytes`); a single decode row always runs.
   */
  fits: (rows: number, outRows: number) => boolean;
  waitMs: number;
  leadSteps: number;
  leadMs: number;
  /** Steps without its own row a generation's request may lead in all (LEAD_FOR_OTHERS_STEPS). */
  leadForOthers: number;
  /**
   * Copies K/V positions between two members' sessions: a joining prompt takes the positions it
   * shares with a live member from it instead of running them (./prefix-share.ts). null: no sharing.
   */
  share: CopyPositions | null;
  /** CATCH_UP_YIELDS (tests set 0 to compare). */
  catchUpYields: number;
  /**
   * Rows a step keeps from decode rows while a prompt waits to be read (at least 1): decode rows
   * that fill the step never hold a new prompt to a few tokens a step.
   */
  prefillReserve: number;
}

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
  /** The prompt, then every sampled token: position p of the session holds history[p]. */
  readonly history: number[];
  prefilled = false;
  produced = 0;
  /** Sampled tokens the consumer has not taken yet. */
  readonly outbox: number[] = [];
  /** No further token: EOS, max_tokens or an error. */
  done = false;
  error: unknown = null;
  /** The consumer left (abort, stop string, end): no further step includes it. */
  gone = false;
  /** The step in flight it is part of (its KV cache is being written). */
  step: Step | null = null;
  /** Wakes the consumer's wait (set while it waits). */
  wake: (() => void) | null = null;
  /** Steps its request led without a row of its own (bounded by StepLimits.leadForOthers). */
  ledForOthers = 0;
  constructor(readonly spec: StepStreamSpec) {
    this.pending = spec.promptIds.slice();
    this.history = spec.promptIds.slice();
    this.fromStart = spec.session.length === 0;
  }

  /**
   * Its prompt is still to be read, `pending` is exactly the prompt's unread rest, and the prompt
   * fits its KV cache (one that does not fails alone at the end of the pick, and reads nothing).
   */
  get reading(): boolean {
    const { session, promptIds } = this.spec;
    return (
      !this.prefilled && session.length + this.pending.length === promptIds.length && promptIds.length <= session.maxLen
    );
  }

  /** Position p of its session holds history[p] (it started empty): it may lend its positions. */
  readonly fromStart: boolean;

  get ready(): boolean {
    return !this.gone && !this.done && this.outbox.length < LOOKAHEAD && this.pending.length > 0;
  }
}

/** A step in flight. */
interface Step {
  streams: Stream[];
  /** Settles (never rejects) when the step's forward pass has returned. */
  settled: Promise<void>;
  /** Given up on (ran past the wait limit): its outcome is dropped, its streams have failed. */
  stale: boolean;
}

/** Per step: the segments and rows it ran (the batch-size metric), and prompt positions shared into it. */
export type StepObserver = (segments: number, rows: number, shared: number) => void;

export class StepBatcher {
  #streams: Stream[] = [];
  #looping = false;
  /** Bumped when a stuck loop is given up: the old loop, should it ever resume, touches nothing. */
  #epoch = 0;
  #inFlight: Step | null = null;
  /** Where the next step's pick of decode rows starts (round robin over the streams). */
  #turn = 0;
  /** When the loop's leader began yielding between steps (null: not yielding). */
  #yieldingSince: number | null = null;
  /** Steps given up as stuck whose forward pass has not returned yet. */
  #stale: Step[] = [];
  readonly #limits: StepLimits;
  /** Steps run and rows (tokens) they carried (tests, stats). */
  steps = 0;
  rows = 0;
  segments = 0;
  /** Prompt positions taken from another member's KV cache instead of being run (prefix sharing). */
  sharedTokens = 0;
  #sharedSeen = 0;
  /** Finished generations kept as donors (the model runtime adds them when it frees a session). */
  readonly retained = new RetainedPrefixes();
  /** Each ended generation's tokens at its session's complete positions, until `endedHistory` takes it. */
  readonly #ended = new WeakMap<Session, number[]>();

  constructor(
    private readonly run: (segs: StepSegment[]) => Promise<StepOutcome[]>,
    /** Keeps the leader's request alive until its loop stops (the Worker's waitUntil). */
    private readonly keepAlive?: (work: Promise<unknown>) => void,
    private readonly observe?: StepObserver,
    limits: Partial<StepLimits> = {},
  ) {
    this.#limits = {
      maxRows: MAX_STEP_ROWS,
      fits: () => true,
      waitMs: STEP_WAIT_MS,
      leadSteps: LEAD_STEPS,
      leadMs: LEAD_MS,
      leadForOthers: LEAD_FOR_OTHERS_STEPS,
      share: null,
      catchUpYields: CATCH_UP_YIELDS,
      prefillReserve: 1,
      ...limits,
    };
    this.#limits.maxRows = Math.max(1, Math.min(MAX_STEP_ROWS, Math.floor(this.#limits.maxRows)));
  }

  /** Generations sharing the steps now. */
  get members(): number {
    return this.#streams.filter((s) => !s.gone).length;
  }

  /**
   * Settles once no step in flight writes `session`'s KV cache any more (null: none does now).
   * Free a session only then: a step given up as stuck may still return and write it.
   */
  settled(session: Session): Promise<void> | null {
    const step = this.#inFlight;
    const stale = this.#stale.find((x) => x.streams.some((st) => st.spec.session === session));
    if (stale) return stale.settled;
    return step?.streams.some((st) => st.spec.session === session) ? step.settled : null;
  }

  /**
   * The tokens of one generation, produced by steps shared with the isolate's other generations.
   * `signal` aborts the wait at once. The session's KV cache is no longer written once this
   * generator has returned, unless its step was given up as stuck: free it after `settled`.
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
        if (st.outbox.length > 0 || st.error !== null || st.done) continue;
        const inFlight = this.#inFlight;
        if (!(await this.#wait(st, signal))) this.#timedOut(inFlight);
      }
    } finally {
      st.gone = true;
      if (this.#limits.share && st.error === null && st.fromStart) this.#ended.set(spec.session, st.history);
      try {
        // A live step ends in milliseconds; a stale one may never: its session is freed on `settled`.
        const step = st.step;
        if (step && !step.stale && !(await this.#wait(st))) this.#timedOut(step);
      } finally {
        this.#streams = this.#streams.filter((s) => s !== st);
      }
    }
  }

  /**
   * A wait ran out. The step in flight when it began, still in flight, is stuck (its leader's
   * request died: CPU limit, cancellation): its streams fail, and the caller starts a fresh loop.
   * Otherwise the steps move but never reached this member: that is its error.
   */
  #timedOut(before: Step | null): void {
    const step = this.#inFlight;
    const { waitMs } = this.#limits;
    if (!step && !this.#looping) return; // no loop runs: the caller starts one
    if (!step && this.#yieldingSince !== null) {
      // A member's whole wait ran out while the loop sat in a 0 ms yield between steps: the leader's
      // request stopped there (however long ago the yield began — the member may have started
      // waiting before it). No step holds a session, so nothing fails; the loop is given up (its
      // epoch ends it should its timer ever fire) and the caller starts a fresh one.
      this.#yieldingSince = null;
      this.#looping = false;
      this.#epoch++;
      for (const s of this.#streams) s.wake?.();
      return;
    }
    if (!step || step !== before) throw new Error(`no decode step answered within ${waitMs} ms`);
    step.stale = true;
    this.#stale.push(step);
    void step.settled.then(() => (this.#stale = this.#stale.filter((x) => x !== step)));
    for (const st of step.streams) {
      st.error = new Error(`a decode step ran past ${waitMs} ms (the request running it was stopped)`);
      st.done = true;
    }
    this.#inFlight = null;
    this.#looping = false;
    this.#epoch++;
    for (const s of this.#streams) s.wake?.();
  }

  /**
   * Starts the step loop in the caller's request when none runs and some member has work. A
   * generation with no token left to produce leads only when no other member could: it would stop
   * leading (and hand the loop on) as soon as its consumer is through.
   */
  #ensureLoop(leader: Stream): void {
    if (this.#looping || !this.#streams.some((s) => s.ready)) return;
    if (leader.done || leader.gone) {
      // Every waiting member is woken (one may sit in a request that died): the first to run leads.
      const others = this.#streams.filter((s) => s !== leader && !s.done && !s.gone && s.wake !== null);
      for (const s of others) s.wake?.();
      if (others.length > 0) return;
    }
    this.#looping = true;
    const loop = this.#loop(leader, this.#epoch);
    this.keepAlive?.(loop);
  }

  async #loop(leader: Stream, epoch: number): Promise<void> {
    const { leadSteps, leadMs, leadForOthers, catchUpYields } = this.#limits;
    const t0 = Date.now();
    let yielded = t0;
    try {
      // The leader's request holds the loop's I/O: it stops leading once its own generation ends,
      // and after a bounded share of steps, so a request that dies takes little with it.
      for (let n = 0; !leader.gone && n < leadSteps && Date.now() - t0 < leadMs; n++) {
        const batch = this.#pick(leader);
        if (batch.length === 0) break;
        if (!batch.some((b) => b.st === leader)) {
          // A step for the others only (the pick takes a leader with work first, so it has none:
          // its consumer is behind, or it is done): its RPCs are the leader's subrequests, bounded.
          // Never stop a leader that has work: its request would start the loop again at once and
          // stop again, a turn of the event loop that never ends.
          if (!leader.ready && leader.ledForOthers >= leadForOthers) break;
          leader.ledForOthers++;
        }
        await this.#step(batch, epoch);
        if (epoch !== this.#epoch) return;
        if (this.#streams.length > 1 || Date.now() - yielded >= LONE_YIELD_MS) {
          this.#yieldingSince = Date.now();
          await macrotask();
          // Members' responses still starting (or stalled) get more turns of the event loop
          // before the next step holds it again; a member keeping up costs nothing here.
          for (let i = 0; i < catchUpYields && epoch === this.#epoch && this.#behind(); i++) await macrotask();
          if (epoch !== this.#epoch) return;
          this.#yieldingSince = null;
          yielded = Date.now();
        }
      }
    } finally {
      if (epoch === this.#epoch) {
        this.#looping = false;
        // Whoever still waits picks the loop up from its own request: the others before the leader.
        for (const s of this.#streams) if (s !== leader && !s.done) s.wake?.();
        for (const s of this.#streams) if (s !== leader && s.done) s.wake?.();
        leader.wake?.();
      }
    }
  }

  /** Whether a live member's consumer is behind its tokens (`consumerBehind`). */
  #behind(): boolean {
    const live = this.#streams.filter((s) => !s.gone);
    return consumerBehind(
      live.map((s) => ({ produced: s.produced, untaken: s.outbox.length })),
      LOOKAHEAD,
    );
  }

  /**
   * This step's rows: every decoding member's token, then prompt chunks up to the prefill budget,
   * within the step's row and scratch limits. A prompt whose last chunk is in the step wants its
   * logits (a head row); a chunk that would not fit with its head row stops one token short. The
   * leader's work comes first (its decode row, or its prompt's next chunk, never waiting for a
   * shared prefix): a step without its row is one where it has none, which bounds the steps its
   * request runs for the others (StepLimits.leadForOthers).
   */
  #pick(leader: Stream): { st: Stream; tokens: number[] }[] {
    const { maxRows, fits } = this.#limits;
    const out: { st: Stream; tokens: number[] }[] = [];
    let rows = 0;
    let outs = 0;
    // Decode rows from a rotating start: when the step's limits cut them, the streams left out
    // this step come first in a later one (in arrival order the first ones would take every step).
    // A prompt waiting to be read keeps `prefillReserve` rows free (one head row among them), so
    // decode rows that fill the limits never hold a new request's prompt back until a stream ends.
    // The leader's decode row comes first; the others' turn rotates among them alone.
    const all = this.#streams;
    const others = all.filter((st) => st !== leader);
    const from = others.length > 0 ? this.#turn++ % others.length : 0;
    const reserve = all.some((st) => st.ready && !st.prefilled) ? Math.max(1, this.#limits.prefillReserve) : 0;
    // A leader still reading its prompt keeps its reserve even from the first decode row (which
    // otherwise always runs): with one row a step, its prompt takes it.
    const leaderReads = leader.ready && !leader.prefilled;
    for (const st of [leader, ...others.map((_, i) => others[(from + i) % others.length])]) {
      if (!st.ready || !st.prefilled) continue;
      const need = rows + 1 + reserve;
      const checked = out.length > 0 || leaderReads;
      if (checked && (need > maxRows || !fits(need, outs + 1 + Math.min(reserve, 1)))) continue;
      out.push({ st, tokens: st.pending });
      rows += st.pending.length;
      outs++;
    }
    let budget = Math.min(STEP_PREFILL_TOKENS, maxRows - rows);
    for (const st of [leader, ...all.filter((x) => x !== leader)]) {
      if (!st.ready || st.prefilled || budget <= 0) continue;
      // A member may sit the step out while an earlier one reads the prefix they share; the leader
      // reads on (its copy, if any, is taken first).
      if (this.#limits.share && this.#shareInto(st) && (st !== leader || st.done)) continue;
      const n = this.#chunk(st.pending.length, Math.min(budget, st.pending.length), rows, outs);
      if (n === 0) continue;
      out.push({ st, tokens: st.pending.slice(0, n) });
      rows += n;
      if (n === st.pending.length) outs++;
      budget -= n;
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

  /** Whether prompts share positions here (a copier was given). */
  get sharing(): boolean {
    return this.#limits.share !== null;
  }

  /**
   * The tokens at the complete positions of an ended generation's session (its prompt, then the
   * tokens it ran), once: null for a session whose generation failed or that no generation ended.
   */
  endedHistory(session: Session): number[] | null {
    const h = this.#ended.get(session) ?? null;
    this.#ended.delete(session);
    return h === null ? null : h.slice(0, session.length);
  }

  /**
   * Prefix sharing for a member whose prompt is still to be read: copies the longest run of its
   * prompt's next positions that another live member's KV cache holds (never its last token: that
   * row gives its logits). Returns true when it should sit this step out because an earlier
   * member is still reading at least PREFIX_WAIT_MIN_TOKENS more of the prompt they share (the
   * earlier one never waits for a later one, so someone always reads).
   */
  #shareInto(st: Stream): boolean {
    if (!st.reading || !st.fromStart) return false;
    const own = st.spec.session;
    const limit = st.spec.promptIds.length - 1;
    let best: Stream | null = null;
    let bestEnd = own.length;
    let wait = false;
    const earlier = this.#streams.indexOf(st);
    this.#streams.forEach((d, i) => {
      if (d === st || d.gone || !d.fromStart) return;
      const shared = commonPrefix(d.history, st.spec.promptIds, limit);
      const have = Math.min(shared, d.spec.session.length);
      if (have > bestEnd) {
        best = d;
        bestEnd = have;
      }
      // An earlier member reading the shared part now: its positions will be there in a step or two.
      if (i < earlier && d.ready && d.reading && shared - Math.max(have, own.length) >= PREFIX_WAIT_MIN_TOKENS)
        wait = true;
    });
    const live = best as Stream | null;
    const kept = this.retained.best(st.spec.promptIds, limit, bestEnd);
    const donor = kept ? kept.entry.session : (live?.spec.session ?? null);
    if (kept) bestEnd = kept.have;
    if (donor && this.#limits.share) {
      const from = own.length;
      try {
        this.#limits.share(donor, own, from, bestEnd);
      } catch (error) {
        // A copy that cannot be made fails this member alone; its positions were not advanced.
        st.error = error;
        st.done = true;
        st.wake?.();
        return true;
      }
      own.length = bestEnd;
      st.pending = st.pending.slice(bestEnd - from);
      this.sharedTokens += bestEnd - from;
    }
    return wait && own.length < limit;
  }

  /** The longest prompt chunk, at most `most` of `left` tokens, that fits beside `rows`/`outs`. */
  #chunk(left: number, most: number, rows: number, outs: number): number {
    const { fits } = this.#limits;
    const ok = (n: number) => n === 0 || fits(rows + n, outs + (n === left ? 1 : 0));
    if (ok(most)) return most;
    // Rows only add scratch: the largest chunk that fits is found by bisection.
    let lo = 0;
    let hi = most;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (ok(mid)) lo = mid;
      else hi = mid;
    }
    // A step with no row at all still takes one prompt token (a lone prefill always progresses).
    return lo === 0 && rows === 0 ? 1 : lo;
  }

  async #step(batch: { st: Stream; tokens: number[] }[], epoch: number): Promise<void> {
    const segs: StepSegment[] = batch.map(({ st, tokens }) => ({
      session: st.spec.session,
      tokens,
      nOut: tokens.length === st.pending.length ? 1 : 0,
      rng: st.spec.rng,
      gone: () => st.gone,
    }));
    let ran: Promise<StepOutcome[]>;
    try {
      ran = this.run(segs);
    } catch (error) {
      ran = Promise.reject(error);
    }
    const settled = ran.then(
      () => {},
      () => {},
    );
    const step: Step = { streams: batch.map((b) => b.st), settled, stale: false };
    this.#inFlight = step;
    for (const { st } of batch) st.step = step;
    let out: StepOutcome[];
    try {
      out = await ran;
    } catch (error) {
      out = segs.map(() => ({ ok: false, error }));
    }
    for (const { st } of batch) if (st.step === step) st.step = null;
    // Given up while it ran: its streams failed already and a fresh loop runs the others.
    if (step.stale || epoch !== this.#epoch) return;
    this.#inFlight = null;
    const rows = segs.reduce((n, g) => n + g.tokens.length, 0);
    this.steps++;
    this.rows += rows;
    this.segments += segs.length;
    this.observe?.(segs.length, rows, this.sharedTokens - this.#sharedSeen);
    this.#sharedSeen = this.sharedTokens;
    batch.forEach(({ st, tokens }, i) => {
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
    st.history.push(id);
    if (eos.has(id) || st.produced >= maxTokens) st.done = true;
    else st.pending = [id];
  }

  /**
   * Waits for a wake; false when the wait limit ran out first. The timer and the abort listener
   * are this request's own, and cleared here.
   */
  async #wait(st: Stream, signal?: AbortSignal): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let onAbort: (() => void) | undefined;
    try {
      return await new Promise<boolean>((resolve, reject) => {
        st.wake = () => resolve(true);
        timer = setTimeout(() => resolve(false), this.#limits.waitMs);
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
