/**
 * @module Admin surface (bearer ADMIN_TOKEN, an optional secret; refused when it is unset): inspect
 * expert hosts and run raw forward passes that return logits and routing (what `verify` checks
 * against golden fixtures through the real serving path), and release this isolate's kept
 * prefix-sharing donors. Fault injection answers only when ADMIN_FAULTS_ENABLED is "true";
 * /admin/forward returns a bounded number of logit values.
 */
import { Hono, type MiddlewareHandler } from "hono";
import { bearerAuth } from "hono/bearer-auth";
import { z } from "zod";
import { ApiError } from "../errors";
import { getRuntime, loadedRuntimes } from "../serving/runtime-cache";
import type { ForwardTrace } from "../serving/model-runtime";
import { createRng, argmax } from "../serving/sampling";
import { MODEL_ID_PATTERN, ModelNotFoundError, modelPrefix } from "../platform/model-store";
import { parseBody } from "./validate";
import { topLogits, type TopLogits } from "./top-logits";
import { PREFILL_CHUNK } from "../serving/stage-budgets";
import { boolVar, secretVar } from "../platform/env";
import { bodyCap, requireJson } from "./guards";
import { headStats } from "../head/head-client";

export const admin = new Hono<{ Bindings: Env }>();

/** Bearer ADMIN_TOKEN check (also guards /metrics and the dashboard's API). */
export const requireAdmin: MiddlewareHandler<{ Bindings: Env }> = async (c, next) => {
  const token = secretVar(c.env, "ADMIN_TOKEN");
  if (!token)
    throw new ApiError(403, "admin routes are disabled: set the ADMIN_TOKEN secret to enable them", "permission_error");
  return bearerAuth({
    token,
    noAuthenticationHeader: {
      message: {
        error: {
          message: "send Authorization: Bearer <ADMIN_TOKEN>",
          type: "authentication_error",
          param: null,
          code: null,
        },
      },
    },
    invalidAuthenticationHeader: {
      message: {
        error: { message: "malformed Authorization header", type: "authentication_error", param: null, code: null },
      },
    },
    invalidToken: {
      message: { error: { message: "invalid admin token", type: "authentication_error", param: null, code: null } },
    },
  })(c as never, next);
};

admin.use("*", requireAdmin);
admin.use("*", requireJson(), bodyCap());

/**
 * Logit values one /admin/forward may return (rows × vocabulary, or rows × top_k): a bounded JSON
 * answer (~5 MB) however long the prompt or large the vocabulary.
 */
export const MAX_FORWARD_LOGITS = 262_144;

const ForwardBody = z.strictObject({
  model: z.string().optional(),
  /** Prompt token ids: one forward pass over them, returning the routing of every layer. */
  tokens: z.array(z.number().int().min(0)).min(1).max(512),
  /** Greedy-decode this many tokens after the prompt (KV cache path), returning their ids and logits. */
  greedy: z.number().int().min(0).max(64).optional(),
  /** Prompt positions whose logits to return: "all" (default), "last", "none" or a list of indices. */
  positions: z
    .union(
      [z.enum(["all", "last", "none"]), z.array(z.number().int().min(0)).max(512)],
      'must be "all", "last", "none" or an array of positions',
    )
    .optional(),
  /** Return only the k largest logits of each row (ids and values) instead of whole rows. */
  top_k: z.number().int().min(1).max(1024).optional(),
});

admin.post("/forward", async (c) => {
  const body = await parseBody(c, ForwardBody);
  const n = body.tokens.length;
  const sel = body.positions ?? "all";
  const positions =
    sel === "all" ? Array.from({ length: n }, (_, i) => i) : sel === "last" ? [n - 1] : sel === "none" ? [] : sel;
  const badPos = positions.findIndex((p) => p >= n);
  if (badPos >= 0) throw ApiError.invalid(`positions[${badPos}]`, `must be < ${n} (the number of tokens)`);
  const rt = await runtime(c.env, body.model);
  const { vocabSize } = rt.spec;
  const bad = body.tokens.findIndex((t) => t >= vocabSize);
  if (bad >= 0)
    throw ApiError.invalid(
      `tokens[${bad}]`,
      `token id ${body.tokens[bad]} is outside the vocabulary (size ${vocabSize})`,
    );
  const greedy = body.greedy ?? 0;
  const perRow = Math.min(body.top_k ?? vocabSize, vocabSize);
  const values = (positions.length + greedy) * perRow;
  if (values > MAX_FORWARD_LOGITS) {
    throw ApiError.invalid(
      "positions",
      `${positions.length} positions + ${greedy} greedy steps × ${perRow} logits = ${values} values; ` +
        `at most ${MAX_FORWARD_LOGITS}: ask for fewer positions or set top_k`,
    );
  }
  const rows = (logits: Float32Array, t: number) => logits.subarray(t * vocabSize, (t + 1) * vocabSize);
  const out = (row: Float32Array) => (body.top_k ? topLogits(row, perRow) : Array.from(row));
  const rng = createRng(0);
  const session = rt.startSession(n + greedy);
  try {
    const trace: ForwardTrace = { routing: [], dispatch: [] };
    // The prompt goes through in pieces, each piece's rows reduced to what was asked for before
    // the next: the head computes at most MAX_FORWARD_LOGITS logits (or one row) per call, however
    // long the prompt or large the vocabulary. Without earlier positions, one piece per prefill chunk.
    const wanted = new Set(positions);
    const early = positions.some((p) => p < n - 1);
    const step = early ? Math.max(1, Math.min(PREFILL_CHUNK, Math.floor(MAX_FORWARD_LOGITS / vocabSize))) : n;
    const answered = new Map<number, number[] | TopLogits>();
    let last: Float32Array = new Float32Array(0);
    for (let at = 0; at < n; at += step) {
      const piece = body.tokens.slice(at, at + step);
      const end = at + piece.length;
      // Only the piece's last row is needed unless an earlier position in it was asked for.
      const allLogits = positions.some((p) => p >= at && p < end - 1);
      const logits = await rt.forward(c.env, session, piece, rng, { allLogits, trace });
      for (let p = allLogits ? at : end - 1; p < end; p++)
        if (wanted.has(p)) answered.set(p, out(rows(logits, allLogits ? p - at : 0)));
      if (end === n) last = rows(logits, allLogits ? piece.length - 1 : 0).slice();
    }
    const greedyIds: number[] = [];
    const greedyLogits: (number[] | TopLogits)[] = [];
    for (let i = 0; i < greedy; i++) {
      const id = argmax(last);
      greedyIds.push(id);
      greedyLogits.push(out(last));
      if (i + 1 < greedy) last = await rt.forward(c.env, session, [id], rng);
    }
    return c.json({
      model: rt.id,
      positions,
      logits: positions.map((p) => answered.get(p)!),
      greedy_ids: greedyIds,
      greedy_logits: greedyLogits,
      // Routing of the prompt tokens, keyed by MoE layer (the trace covers only the prompt pass).
      routing: Object.fromEntries(
        trace.routing.map(({ layer, routing: r }) => [
          layer,
          { expert_ids: chunk(Array.from(r.ids), r.topK), expert_weights: chunk(Array.from(r.weights), r.topK) },
        ]),
      ),
      rpcs_per_layer: trace.dispatch.map((d) => d.rpcs),
    });
  } finally {
    rt.endSession(session);
  }
});

const MoeBody = z.strictObject({
  model: z.string().optional(),
  layer: z.number().int().min(0),
  /** [n, dModel] MoE block inputs (the post-attention-norm activations). */
  input: z.array(z.array(z.number())).min(1).max(512),
});

admin.post("/moe", async (c) => {
  const body = await parseBody(c, MoeBody);
  const rt = await runtime(c.env, body.model);
  const { dModel, nLayers } = rt.spec;
  if (body.layer >= nLayers) throw ApiError.invalid("layer", `must be < ${nLayers}`);
  const bad = body.input.findIndex((r) => r.length !== dModel);
  if (bad >= 0) throw ApiError.invalid(`input[${bad}]`, `must have ${dModel} values, got ${body.input[bad].length}`);
  const { out, routing } = await rt.moeBlock(c.env, body.layer, Float32Array.from(body.input.flat()), createRng(0));
  return c.json({
    output: chunk(Array.from(out), dModel),
    expert_ids: chunk(Array.from(routing.ids), routing.topK),
    expert_weights: chunk(Array.from(routing.weights), routing.topK),
  });
});

admin.get("/hosts", async (c) => {
  const rt = await runtime(c.env, c.req.query("model"));
  const placement = await rt.placement(c.env);
  const hosts = await Promise.all(placement.instances.map((inst) => c.env.EXPERT_HOST.getByName(inst.name).stats()));
  // Pipeline stages (empty when the Worker runs every layer): bytes held vs budget, KV in use.
  const stages = await Promise.all(rt.pipeline.stages.map((s) => c.env.STAGE_HOST.getByName(s.name).stats()));
  const heads = rt.head ? await headStats(c.env, rt.head) : [];
  // Session drivers (StageHosts holding no layers) of a pipelined model.
  const names = rt.drivenRemotely ? rt.driverNames(c.env) : [];
  const drivers = await Promise.all(names.map((n) => c.env.STAGE_HOST.getByName(n).stats()));
  return c.json({
    model: rt.id,
    version: placement.version,
    hosts,
    pipeline_version: rt.pipeline.version,
    stages,
    heads,
    drivers,
    // This Worker isolate (the one answering): its dense weights, KV caches and Wasm memory.
    worker: rt.memory(c.env),
  });
});

admin.get("/placement", async (c) => {
  const rt = await runtime(c.env, c.req.query("model"));
  await rt.placement(c.env); // creates the first placement if there is none yet
  return c.json(await c.env.COORDINATOR.getByName(rt.id).status());
});

const ReplanBody = z.strictObject({ model: z.string().optional() });

admin.post("/replan", async (c) => {
  const body = await parseBody(c, ReplanBody);
  const rt = await runtime(c.env, body.model);
  await rt.placement(c.env);
  return c.json(await c.env.COORDINATOR.getByName(rt.id).replan("admin"));
});

const ResetBody = z.strictObject({ model: z.string().optional() });

/**
 * Releases the finished generations this isolate keeps as prefix-sharing donors (vLLM's
 * `POST /reset_prefix_cache`), of one model (`model`, in the body or the query) or of every model
 * it has loaded; live generations keep their KV caches. Only the isolate serving this call: a
 * deployment's other isolates keep theirs. `bench:load` calls it after its reference runs, so its
 * levels measure distinct users rather than copies of the references. The body may be empty.
 */
admin.post("/prefix-cache/reset", async (c) => {
  const raw = await c.req.arrayBuffer();
  const body = raw.byteLength === 0 ? {} : await parseBody(c, ResetBody);
  const query = c.req.query("model");
  if (body.model !== undefined && query !== undefined && body.model !== query)
    throw ApiError.invalid("model", `the body says "${body.model}", the query "${query}": send one`);
  const id = body.model ?? query;
  const loaded = await loadedRuntimes();
  const targets = id === undefined ? loaded : loaded.filter((rt) => rt.id === id);
  // A model this isolate has not loaded keeps nothing here; one that does not exist is the caller's error.
  if (id !== undefined && targets.length === 0) await requireModel(c.env, id);
  const models = targets.map((rt) => ({ model: rt.id, ...rt.resetPrefixCache() }));
  return c.json({
    released: models.reduce((n, m) => n + m.released, 0),
    bytes: models.reduce((n, m) => n + m.bytes, 0),
    models,
  });
});

/** Fault injection answers 403 unless ADMIN_FAULTS_ENABLED is "true" (test and staging deployments). */
function requireFaultsEnabled(env: Env): void {
  if (boolVar(env, "ADMIN_FAULTS_ENABLED", false)) return;
  throw new ApiError(
    403,
    'fault injection is disabled: set the ADMIN_FAULTS_ENABLED var to "true" (test and staging deployments only)',
    "permission_error",
    null,
    "faults_disabled",
  );
}

const FaultBody = z.strictObject({
  model: z.string().optional(),
  /** Instance id in the placement. */
  instance: z.number().int().min(0),
  /** "fail" (default) / "stall": calls that include (layer, expert); "r2": every R2 read of the instance. */
  kind: z.enum(["fail", "stall", "r2"]).optional(),
  layer: z.number().int().min(0).optional(),
  expert: z.number().int().min(0).optional(),
  ms: z.number().int().min(0).max(600_000),
});

/**
 * Chaos testing: for `ms`, the instance fails ("fail") or does not answer ("stall") every call
 * that includes (layer, expert), or ("r2") every R2 read it makes fails.
 */
admin.post("/fault", async (c) => {
  requireFaultsEnabled(c.env);
  const body = await parseBody(c, FaultBody);
  const rt = await runtime(c.env, body.model);
  const placement = await rt.placement(c.env);
  const inst = placement.instances[body.instance];
  if (!inst) throw ApiError.invalid("instance", `must be < ${placement.instances.length}`);
  const kind = body.kind ?? "fail";
  const host = c.env.EXPERT_HOST.getByName(inst.name);
  if (kind === "r2") {
    await host.injectR2Fault(body.ms);
    return c.json({ instance: inst.name, kind, ms: body.ms });
  }
  if (body.layer === undefined) throw ApiError.invalid("layer", `is required with kind "${kind}"`);
  if (body.expert === undefined) throw ApiError.invalid("expert", `is required with kind "${kind}"`);
  await host.injectFault([{ layer: body.layer, expert: body.expert }], body.ms, kind);
  return c.json({ instance: inst.name, kind, layer: body.layer, expert: body.expert, ms: body.ms });
});

const StageFaultBody = z.strictObject({
  model: z.string().optional(),
  /** Index of the stage in the pipeline placement. */
  stage: z.number().int().min(0),
  /** The first run at a position ≥ this finds the stage evicted (layers and KV caches gone). */
  at: z.number().int().min(1),
});

/** Chaos testing: a StageHost loses everything it holds, as an eviction does, on a later call. */
admin.post("/fault/stage", async (c) => {
  requireFaultsEnabled(c.env);
  const body = await parseBody(c, StageFaultBody);
  const rt = await runtime(c.env, body.model);
  const hop = rt.pipeline.stages[body.stage];
  if (!hop) throw ApiError.invalid("stage", `must be < ${rt.pipeline.stages.length} (the model's pipeline stages)`);
  await c.env.STAGE_HOST.getByName(hop.name).injectReset(body.at);
  return c.json({ stage: hop.name, at: body.at });
});

async function runtime(env: Env, model: string | undefined) {
  const id = model ?? env.DEFAULT_MODEL;
  try {
    return await getRuntime(env, id);
  } catch (err) {
    if (err instanceof ModelNotFoundError) throw modelNotFound(id);
    throw err;
  }
}

/** 404 naming `model` when the bucket has no such model (without loading it). */
async function requireModel(env: Env, id: string): Promise<void> {
  const known = MODEL_ID_PATTERN.test(id) && (await env.MODELS.head(`${modelPrefix(id)}config.json`)) !== null;
  if (!known) throw modelNotFound(id);
}

function modelNotFound(id: string): ApiError {
  return new ApiError(404, `The model \`${id}\` does not exist`, "not_found_error", "model", "model_not_found");
}

function chunk<T>(xs: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += size) out.push(xs.slice(i, i + size));
  return out;
}
