/**
 * @module The caller's side of the vocab-parallel head: the normed hidden states go to every
 * HeadHost shard in ONE parallel round (one RPC per shard), and the answers are combined in
 * vocabulary order.
 *
 * Exactness (greedy and sampling give the tokens an unsplit head gives):
 *  - each shard's logits are bit-identical to the same rows of the unsplit product (see
 *    head-store.ts and head-placement.ts: same kernel, row boundaries on the kernel's row blocks,
 *    token calls split on its token tiles, same logits_scaling expression);
 *  - "logits" concatenates the slices in vocabulary order, so the caller holds exactly the row an
 *    unsplit head produces and runs the ordinary sampler on it (temperature, top_p, seed: the same
 *    draw from the same PRNG on the same numbers — nothing about sampling is distributed);
 *  - "greedy" combines per-shard (max, argmax) pairs in vocabulary order, replacing only on a
 *    strictly greater max: the scan of `argmax` over the whole row, so ties go to the lowest id.
 *    (With NaN logits neither scan is meaningful; the model is broken then either way.)
 *
 * Bytes per generated token, M shards, dModel d, vocabulary V: greedy sends 4·d bytes to each shard
 * and gets 8 back (M·(4d + 8) in all: 8 KiB for granite-3.1-1b-a400m on its 2 bf16 shards);
 * sampling at temperature > 0 sends the same and gets the logits row back, 4·V bytes in all
 * (192 KiB for granite's 49155 ids). Exact top-p needs the global order of the whole row, and exact
 * equality with the single-host sampler needs its f64 sums in vocabulary order, so the row is
 * assembled once where the sampler runs rather than reduced inside the shards.
 */
import { pipelineRpcTimeoutMs, withDeadline } from "../platform/deadline";
import { ModelChangedError } from "../model/errors";
import { ApiError } from "../errors";
import { planHeadShards, type HeadPlacement, type HeadShard } from "../coordinator/head-placement";
import type { ModelSpec } from "../model/config";
import { headHostBudgetBytes } from "./budget";
import { HEAD_TOKEN_CHUNK, headShardBytes, type HeadRowFormat } from "./head-store";
import type { HeadFailureCode, HeadForwardResult, HeadHostStats, HeadMode, HeadShardRef } from "./protocol";

/** Logits bytes one shard returns per call at most (RPC payloads must stay ≤ 32 MiB). */
export const MAX_HEAD_PAYLOAD_BYTES = 16 * 1024 * 1024;

/** A shard failed: `code` says whether it is the deployment's budget or the model's fault. */
export class HeadError extends Error {
  override name = "HeadError";
  constructor(
    readonly code: HeadFailureCode,
    readonly shard: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The head placement for a model from the deployment's HEAD_HOST_BUDGET_MB: the fewest shards that
 * fit (or exactly `shards`, e.g. verify's --head-shards). `format`: how the HeadHosts hold rows —
 * `headRowFormat(ckpt, spec)`; "f32" (the default) never under-counts.
 */
export function headPlacementFor(
  env: Env,
  model: string,
  spec: ModelSpec,
  opts: { shards?: number; minShards?: number; format?: HeadRowFormat } = {},
): HeadPlacement {
  return planHeadShards({
    model,
    vocabSize: spec.vocabSize,
    dModel: spec.dModel,
    bytesPerRow: headShardBytes(spec.dModel, 1, opts.format ?? "f32"),
    budgetBytes: headHostBudgetBytes(env),
    shards: opts.shards,
    minShards: opts.minShards,
  });
}

export function ref(p: HeadPlacement, s: HeadShard): HeadShardRef {
  return { model: p.model, rowStart: s.rowStart, rowEnd: s.rowEnd, version: p.version };
}

/** A shard's failure as an error: a re-uploaded model is the retryable ModelChangedError. */
export function shardError(code: HeadFailureCode, shard: string, message: string): Error {
  if (code === "model_changed") return new ModelChangedError(message);
  // A shard's queue is full: the client may retry shortly.
  if (code === "overloaded")
    return new ApiError(503, `HeadHost ${shard}: ${message}`, "service_unavailable", null, "head_overloaded", {
      "Retry-After": "1",
    });
  return new HeadError(code, shard, message);
}

function stub(env: Env, s: HeadShard) {
  return env.HEAD_HOST.getByName(s.name);
}

/** Loads every shard's rows (in parallel); throws HeadError naming the first shard that failed. */
export async function loadHead(env: Env, p: HeadPlacement): Promise<HeadHostStats[]> {
  const ms = pipelineRpcTimeoutMs(env);
  const results = await Promise.all(
    p.shards.map((s) => withDeadline(Promise.resolve(stub(env, s).load(ref(p, s))), ms, `HeadHost ${s.name}`)),
  );
  return results.map((r, i) => {
    if (!r.ok) throw shardError(r.code, p.shards[i].name, r.message);
    return r.stats;
  });
}

/** Every shard's stats (admin reads). */
export async function headStats(env: Env, p: HeadPlacement): Promise<HeadHostStats[]> {
  return Promise.all(p.shards.map((s) => stub(env, s).stats()));
}

/**
 * Runs the output head over the shards. `hidden` [n, dModel] is after the final norm.
 *  - "logits" → Float32Array [n, vocabSize] (÷ logits_scaling), bit-identical to the unsplit head;
 *  - "greedy" → Int32Array [n] of token ids, identical to argmax over those logits.
 * Throws HeadError when a shard fails (code "budget_exceeded" → the caller answers 503).
 */
export async function runHead(
  env: Env,
  p: HeadPlacement,
  hidden: Float32Array,
  n: number,
  mode: "logits",
): Promise<Float32Array>;
export async function runHead(
  env: Env,
  p: HeadPlacement,
  hidden: Float32Array,
  n: number,
  mode: "greedy",
): Promise<Int32Array>;
export async function runHead(
  env: Env,
  p: HeadPlacement,
  hidden: Float32Array,
  n: number,
  mode: HeadMode,
): Promise<Float32Array | Int32Array> {
  if (hidden.length !== n * p.dModel)
    throw new RangeError(`hidden must be [${n}, ${p.dModel}], got ${hidden.length} floats`);
  const ms = pipelineRpcTimeoutMs(env);
  const logits = mode === "logits" ? new Float32Array(n * p.vocabSize) : null;
  const best = mode === "greedy" ? new GreedyMerge(n) : null;
  for (const [t0, m] of tokenCalls(p, n, mode)) {
    const x = hidden.subarray(t0 * p.dModel, (t0 + m) * p.dModel);
    const results = await Promise.all(
      p.shards.map((s) =>
        withDeadline(
          Promise.resolve(stub(env, s).forward({ ...ref(p, s), mode, n: m, hidden: x })),
          ms,
          `HeadHost ${s.name}`,
        ),
      ),
    );
    // Shards in vocabulary order: the merge below depends on it.
    results.forEach((r, i) => {
      const s = p.shards[i];
      const got = checked(r, s, mode);
      if (got.mode === "logits") placeSlice(logits!, got.logits, t0, m, p.vocabSize, s);
      else best!.add(got.max, got.argmax, t0);
    });
  }
  return logits ?? best!.tokens;
}

/** [firstToken, count] of each round of calls: the logits payload bounded, split on 4-token tiles. */
export function tokenCalls(p: HeadPlacement, n: number, mode: HeadMode): [number, number][] {
  const widest = Math.max(...p.shards.map((s) => s.rowEnd - s.rowStart));
  const perToken = 4 * (mode === "logits" ? widest : 2) + 4 * p.dModel;
  const fit = Math.max(
    HEAD_TOKEN_CHUNK,
    Math.floor(MAX_HEAD_PAYLOAD_BYTES / perToken / HEAD_TOKEN_CHUNK) * HEAD_TOKEN_CHUNK,
  );
  const out: [number, number][] = [];
  for (let t = 0; t < n; t += fit) out.push([t, Math.min(fit, n - t)]);
  return out;
}

function checked(r: HeadForwardResult, s: HeadShard, mode: HeadMode): Exclude<HeadForwardResult, { ok: false }> {
  if (!r.ok) throw shardError(r.code, s.name, r.message);
  if (r.mode !== mode)
    throw new HeadError("model_error", s.name, `HeadHost ${s.name} answered "${r.mode}" to a "${mode}" call`);
  return r;
}

/** Copies a shard's [m, rows] slice into the [*, vocab] logits at tokens t0…, columns rowStart…. */
export function placeSlice(
  dst: Float32Array,
  slice: Float32Array,
  t0: number,
  m: number,
  vocab: number,
  s: { rowStart: number; rowEnd: number },
): void {
  const rows = s.rowEnd - s.rowStart;
  for (let t = 0; t < m; t++) dst.set(slice.subarray(t * rows, (t + 1) * rows), (t0 + t) * vocab + s.rowStart);
}

/** Folds per-shard (max, argmax) answers, added in vocabulary order, into the whole-row argmax. */
export class GreedyMerge {
  readonly tokens: Int32Array;
  readonly #max: Float32Array;
  readonly #seen: Uint8Array;

  constructor(n: number) {
    this.tokens = new Int32Array(n);
    this.#max = new Float32Array(n);
    this.#seen = new Uint8Array(n);
  }

  add(max: Float32Array, argmax: Int32Array, t0 = 0): void {
    for (let t = 0; t < max.length; t++) {
      const i = t0 + t;
      if (!this.#seen[i] || max[t] > this.#max[i]) {
        this.#max[i] = max[t];
        this.tokens[i] = argmax[t];
        this.#seen[i] = 1;
      }
    }
  }
}
