/**
 * @module Continuous batching on a pipeline's session driver: the generations of one model that
 * its driver runs share decode steps (./step-batcher.ts), each step ONE pass through the stage
 * chain instead of one per generation. A step embeds every row in one lookup, sends each
 * generation's rows into stage 0 in the same turn — the StageHosts merge calls that reach them
 * together into one pass over their layers and hand them on together (src/stages/stage-batcher.ts),
 * so the whole chain runs once a step with every row, one expert fan-out per MoE layer — and then
 * ONE head call for the rows that want logits. Every row gets what the per-request path gives it:
 * embedding rows, the stages' passes (`layersExact`), the final norm and the head rows are each
 * independent of the rows beside them.
 *
 * The stages hold the KV caches; the steps see each generation through a stand-in `Session` whose
 * length follows the stages' (advanced only once the chain has run its rows). A stage that lost a
 * session (evicted, reset) gets it replayed from position 0, as the per-request path does, and the
 * segment's rows run again; a generation that cannot be replayed fails alone.
 */
import { Session, type StepOutcome, type StepSegment } from "./forward";
import { PREFILL_CHUNK } from "./stage-budgets";
import { SessionLostError } from "./stage-client";

/** A pipeline generation as the driver tracks it (the fields of RuntimeSession the steps use). */
export interface PipelineSession {
  readonly id: string;
  readonly maxLen: number;
  length: number;
  /** Tokens run so far (what a replay runs again). */
  readonly fed: number[];
  replays: number;
}

/** One session's rows in a round: x [n, dModel] at positions start…. */
export interface ChainItem<S> {
  s: S;
  start: number;
  x: Float32Array;
}

/** What one step needs of the driver's runtime. */
export interface PipelineStepParts<S extends PipelineSession> {
  dModel: number;
  vocabSize: number;
  /** The rows' embeddings [n, dModel], scaled as the first layer wants them. */
  embed(tokens: number[]): Promise<Float32Array>;
  /**
   * Runs every item's rows through every stage in one call per hop: each item's last row's residual
   * stream [1, dModel], or its own error (SessionLostError: a stage lost the session). Throws when
   * the call as a whole fails.
   */
  chain(items: ChainItem<S>[]): Promise<(Float32Array | Error)[]>;
  /** Logits [n, vocab] of n last rows (final norm and head). */
  head(rows: Float32Array, n: number): Promise<Float32Array>;
  /**
   * Runs the session's fed tokens again from position 0 on every stage (at most `maxReplays` times);
   * `rng` is the generation's own source.
   */
  replay(s: S, rng: () => number): Promise<void>;
  maxReplays: number;
}

/** Stand-in sessions of the steps, one per pipeline generation. */
export class PipelineSessions<S extends PipelineSession> {
  readonly #of = new WeakMap<Session, S>();

  /** The steps' session for `s`: no K/V of its own (the stages hold them), its length kept in step. */
  stand(s: S): Session {
    const st = new Session(s.maxLen, [], []);
    st.length = s.length;
    this.#of.set(st, s);
    return st;
  }

  of(st: Session): S {
    const s = this.#of.get(st);
    if (!s) throw new Error("internal: a step segment without its pipeline session");
    return s;
  }
}

/** A segment on its way down the chain. */
interface Running<S> {
  g: StepSegment;
  s: S;
  /** Its rows [tokens, dModel]. */
  x: Float32Array;
  /** Rows run so far. */
  done: number;
  last: Float32Array | null;
  error: unknown;
}

/**
 * One batched step through the stage chain. A failed lookup fails every segment (each failed alone
 * too); a segment whose rows a stage refuses fails alone, and a failed chain call fails the
 * segments it carried; a failed head call fails the segments that wanted logits.
 */
export async function runPipelineStep<S extends PipelineSession>(
  parts: PipelineStepParts<S>,
  sessions: PipelineSessions<S>,
  segs: StepSegment[],
): Promise<StepOutcome[]> {
  const { dModel, vocabSize } = parts;
  let x: Float32Array;
  try {
    x = await parts.embed(segs.flatMap((g) => g.tokens));
  } catch (error) {
    return segs.map(() => ({ ok: false, error }));
  }
  let at = 0;
  const runs = segs.map((g): Running<S> => {
    const rows = x.subarray(at * dModel, (at + g.tokens.length) * dModel);
    at += g.tokens.length;
    return { g, s: sessions.of(g.session), x: rows, done: 0, last: null, error: null };
  });
  await runRounds(parts, runs);
  const want = runs.flatMap((r, i) => (r.g.nOut === 1 && r.error === null ? [i] : []));
  const logits = new Map<number, Float32Array>();
  let headError: unknown = null;
  if (want.length > 0) {
    const rows = new Float32Array(want.length * dModel);
    want.forEach((i, j) => rows.set(runs[i].last!, j * dModel));
    try {
      const all = await parts.head(rows, want.length);
      // Views, not copies: a step's logits are its largest allocation (sampling only reads them).
      want.forEach((i, j) => logits.set(i, all.subarray(j * vocabSize, (j + 1) * vocabSize)));
    } catch (error) {
      headError = error;
    }
  }
  const wanted = new Set(want);
  return runs.map((r, i): StepOutcome => {
    if (r.error !== null) return { ok: false, error: r.error };
    if (headError !== null && wanted.has(i)) return { ok: false, error: headError };
    return { ok: true, logits: logits.get(i) ?? new Float32Array(0) };
  });
}

/**
 * Every segment's rows down the chain, PREFILL_CHUNK at a time, all segments' next chunks in one
 * call a round; a session a stage lost is replayed and its chunk runs again in the next round.
 */
async function runRounds<S extends PipelineSession>(parts: PipelineStepParts<S>, runs: Running<S>[]): Promise<void> {
  const { dModel } = parts;
  for (;;) {
    const round: { r: Running<S>; n: number }[] = [];
    for (const r of runs) {
      const left = r.g.tokens.length - r.done;
      if (r.error !== null || left === 0) continue;
      const n = Math.min(PREFILL_CHUNK, left);
      if (r.s.length + n > r.s.maxLen) {
        r.error = new Error(`session holds ${r.s.maxLen} positions, asked for ${r.s.length + n}`);
        continue;
      }
      round.push({ r, n });
    }
    if (round.length === 0) return;
    let outs: (Float32Array | Error)[];
    try {
      outs = await parts.chain(
        round.map(({ r, n }) => ({
          s: r.s,
          start: r.s.length,
          x: r.x.subarray(r.done * dModel, (r.done + n) * dModel),
        })),
      );
    } catch (error) {
      for (const { r } of round) r.error = error;
      continue;
    }
    const lost: Running<S>[] = [];
    round.forEach(({ r, n }, i) => {
      const out = outs[i];
      if (out instanceof Float32Array) {
        const tokens = r.g.tokens.slice(r.done, r.done + n);
        r.s.length += n;
        r.s.fed.push(...tokens);
        r.g.session.length = r.s.length;
        r.done += n;
        r.last = out;
      } else if (out instanceof SessionLostError && r.s.replays < parts.maxReplays) lost.push(r);
      else r.error = out;
    });
    await Promise.all(
      lost.map((r) =>
        parts.replay(r.s, r.g.rng).catch((error: unknown) => {
          r.error = error;
        }),
      ),
    );
  }
}
