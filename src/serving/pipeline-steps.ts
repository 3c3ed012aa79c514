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

/** What one step needs of the driver's runtime. */
export interface PipelineStepParts<S extends PipelineSession> {
  dModel: number;
  vocabSize: number;
  /** The rows' embeddings [n, dModel], scaled as the first layer wants them. */
  embed(tokens: number[]): Promise<Float32Array>;
  /**
   * Runs x [n, dModel] at positions start… of session `s` through every stage; answers its last
   * row's residual stream [1, dModel]. Throws SessionLostError when a stage lost the session.
   */
  chain(s: S, start: number, x: Float32Array): Promise<Float32Array>;
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

/**
 * One batched step through the stage chain. A failed lookup fails every segment (each failed alone
 * too); a segment whose chain call fails fails alone; a failed head call fails the segments that
 * wanted logits.
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
  // Every segment's first stage call starts in this turn (no await before it), so stage 0 gets
  // them together and runs them as one pass.
  const lasts = await Promise.allSettled(
    segs.map((g) => {
      const rows = x.subarray(at * dModel, (at + g.tokens.length) * dModel);
      at += g.tokens.length;
      return runSegment(parts, sessions.of(g.session), g, rows);
    }),
  );
  const want = segs.flatMap((g, i) => (g.nOut === 1 && lasts[i].status === "fulfilled" ? [i] : []));
  const logits = new Map<number, Float32Array>();
  let headError: unknown = null;
  if (want.length > 0) {
    const rows = new Float32Array(want.length * dModel);
    want.forEach((i, j) => rows.set((lasts[i] as PromiseFulfilledResult<Float32Array>).value, j * dModel));
    try {
      const all = await parts.head(rows, want.length);
      want.forEach((i, j) => logits.set(i, all.slice(j * vocabSize, (j + 1) * vocabSize)));
    } catch (error) {
      headError = error;
    }
  }
  const wanted = new Set(want);
  return lasts.map((r, i): StepOutcome => {
    if (r.status === "rejected") return { ok: false, error: r.reason };
    if (headError !== null && wanted.has(i)) return { ok: false, error: headError };
    return { ok: true, logits: logits.get(i) ?? new Float32Array(0) };
  });
}

/**
 * A segment's rows through the chain, in calls of at most PREFILL_CHUNK rows (a stage's per-call
 * scratch); the session and its stand-in advance after each call. Answers the last row.
 */
async function runSegment<S extends PipelineSession>(
  parts: PipelineStepParts<S>,
  s: S,
  g: StepSegment,
  x: Float32Array,
): Promise<Float32Array> {
  const { dModel } = parts;
  let last: Float32Array | null = null;
  for (let at = 0; at < g.tokens.length; at += PREFILL_CHUNK) {
    const tokens = g.tokens.slice(at, at + PREFILL_CHUNK);
    const rows = x.subarray(at * dModel, (at + tokens.length) * dModel);
    if (s.length + tokens.length > s.maxLen)
      throw new Error(`session holds ${s.maxLen} positions, asked for ${s.length + tokens.length}`);
    for (;;) {
      try {
        last = await parts.chain(s, s.length, rows);
        break;
      } catch (err) {
        if (!(err instanceof SessionLostError) || s.replays >= parts.maxReplays) throw err;
        await parts.replay(s, g.rng);
      }
    }
    s.length += tokens.length;
    s.fed.push(...tokens);
    g.session.length = s.length;
  }
  return last!;
}
