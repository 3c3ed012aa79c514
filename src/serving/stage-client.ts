/**
 * @module The Worker's side of the pipeline: one chain call per prompt chunk or decode token
 * (stage 0 passes the residual stream on to stage 1 and so on; see stage-protocol.ts), session
 * admission on every stage before a response starts (a full stage → 429 with Retry-After, never
 * a 500 mid-stream), and freeing the sessions' KV caches when a request ends.
 */
import { ApiError } from "../errors";
import { pipelineRpcTimeoutMs, withDeadline } from "../platform/deadline";
import type { PipelinePlacement } from "../coordinator/pipeline-placement";
import type { StageFailure, StageHop, StageLayerTrace } from "./stage-protocol";
import { STAGE_OVERLOAD_RETRY_MS } from "./stage-budgets";

export class StageChain {
  readonly route: StageHop[];

  constructor(
    readonly model: string,
    readonly pipeline: PipelinePlacement,
    /** The upload the caller read (every stage call names it). */
    readonly version?: string,
  ) {
    this.route = pipeline.stages.map((s) => ({ name: s.name, first: s.first, end: s.end }));
  }

  /** Reserves `maxLen` positions of KV cache for `session` on every stage (all in parallel). */
  async open(env: Env, session: string, maxLen: number): Promise<void> {
    const results = await Promise.all(
      this.route.map((hop) =>
        withDeadline(
          Promise.resolve(env.STAGE_HOST.getByName(hop.name).open(this.model, hop, session, maxLen, this.version)),
          pipelineRpcTimeoutMs(env),
          `StageHost ${hop.name}`,
        ),
      ),
    );
    const bad = results.find((r) => !r.ok);
    if (bad && !bad.ok) {
      await this.end(env, session);
      throw stageError(bad);
    }
  }

  /** Runs x [n, dModel] at positions start… through every stage; returns the last nOut rows. */
  async run(
    env: Env,
    session: string,
    maxLen: number,
    start: number,
    x: Float32Array,
    nOut: number,
    trace: boolean,
    signal?: AbortSignal,
  ): Promise<{ y: Float32Array; trace: StageLayerTrace[]; rpcs: number }> {
    signal?.throwIfAborted();
    const first = env.STAGE_HOST.getByName(this.route[0].name);
    const req = { model: this.model, version: this.version, session, maxLen, start, x, nOut, route: this.route, trace };
    const call = first.run(req);
    const hop = `StageHost ${this.route[0].name}`;
    const r = await withDeadline(Promise.resolve(call), pipelineRpcTimeoutMs(env), hop, signal);
    if (!r.ok) throw stageError(r);
    return { y: r.y, trace: r.trace, rpcs: r.rpcs + 1 };
  }

  /**
   * Runs several sessions' rows through every stage as ONE call per hop (a session driver's decode
   * step: each stage runs them in one pass). Each item gets its last row [1, dModel] or its own
   * error (`stageError`: SessionLostError when a stage lost it); a failed call throws.
   */
  async runMany(
    env: Env,
    items: readonly { session: string; maxLen: number; start: number; x: Float32Array }[],
  ): Promise<(Float32Array | Error)[]> {
    const reqs = items.map((it) => ({
      model: this.model,
      version: this.version,
      session: it.session,
      maxLen: it.maxLen,
      start: it.start,
      x: it.x,
      nOut: 1,
      route: this.route,
      trace: false,
    }));
    const call = env.STAGE_HOST.getByName(this.route[0].name).runMany(reqs);
    const rs = await withDeadline(Promise.resolve(call), pipelineRpcTimeoutMs(env), `StageHost ${this.route[0].name}`);
    return rs.map((r) => (r.ok ? r.y : stageError(r)));
  }

  /** Frees the session on every stage (completion, abort or failure); never throws. */
  async end(env: Env, session: string): Promise<void> {
    await Promise.all(
      this.route.map((hop) =>
        withDeadline(
          env.STAGE_HOST.getByName(hop.name).end(session),
          pipelineRpcTimeoutMs(env),
          `StageHost ${hop.name}`,
        ).catch((err: unknown) =>
          console.warn(`freeing session ${session} on ${hop.name} failed (its idle alarm will): ${String(err)}`),
        ),
      ),
    );
  }

  /** One MoE block of `layer` on the stage that holds it. */
  async moeBlock(env: Env, layer: number, input: Float32Array): Promise<{ out: Float32Array; trace: StageLayerTrace }> {
    const hop = this.route.find((h) => h.first <= layer && layer < h.end);
    if (!hop) throw ApiError.invalid("layer", `no stage holds layer ${layer}`);
    const call = env.STAGE_HOST.getByName(hop.name).moeBlock(this.model, hop, layer, input);
    const r = await withDeadline(Promise.resolve(call), pipelineRpcTimeoutMs(env), `StageHost ${hop.name}`);
    if (!r.ok) throw stageError(r);
    return { out: r.out, trace: r.trace };
  }
}

/** A stage lost a session's KV cache (its instance was evicted or reset): the caller may replay the session. */
export class SessionLostError extends Error {
  override name = "SessionLostError";
}

/** A stage's failure as the client sees it: full → 429, too long → 400, experts down or overloaded → 503. */
export function stageError(f: StageFailure): Error {
  switch (f.code) {
    case "busy":
      return new ApiError(
        429,
        `the model is at capacity: ${f.message}`,
        "service_unavailable",
        null,
        "kv_cache_full",
        ApiError.retryIn((f.retryAfterMs ?? 1000) / 1000),
      );
    case "overloaded":
      return new ApiError(
        503,
        `a pipeline stage is overloaded: ${f.message}`,
        "service_unavailable",
        null,
        "stage_overloaded",
        ApiError.retryIn((f.retryAfterMs ?? STAGE_OVERLOAD_RETRY_MS) / 1000),
      );
    case "too_long":
      return ApiError.invalid(
        "max_tokens",
        `the request is longer than this deployment serves: ${f.message}`,
        "context_length_exceeded",
      );
    case "expert_unavailable":
      return new ApiError(503, f.message, "service_unavailable", null, "expert_unavailable", ApiError.retryIn(1));
    case "session_lost":
      return new SessionLostError(f.message);
    case "upstream_timeout":
      return new ApiError(503, f.message, "service_unavailable", null, "upstream_timeout", ApiError.retryIn(1));
    case "model_changed":
      return ApiError.modelChanged(f.message);
    default:
      return new Error(`pipeline stage failed (${f.code}): ${f.message}`);
  }
}
