/**
 * @module Admin surface (bearer ADMIN_TOKEN; refused when the token is unset): inspect expert
 * hosts and run raw forward passes that return logits and routing (what `verify` checks against
 * golden fixtures through the real serving path).
 */
import { Hono } from "hono";
import { bearerAuth } from "hono/bearer-auth";
import { z } from "zod";
import { ApiError } from "../errors";
import { getRuntime } from "../serving/model-runtime";
import type { ForwardTrace } from "../serving/model-runtime";
import { createRng, argmax } from "../serving/sampling";
import { ModelNotFoundError } from "../platform/model-store";
import { parseBody } from "./validate";
import { headStats } from "../head/head-client";

export const admin = new Hono<{ Bindings: Env }>();

admin.use("*", async (c, next) => {
  const token = c.env.ADMIN_TOKEN;
  if (!token) throw new ApiError(403, "admin routes are disabled: set the ADMIN_TOKEN secret to enable them", "permission_error");
  return bearerAuth({
    token,
    noAuthenticationHeader: { message: { error: { message: "send Authorization: Bearer <ADMIN_TOKEN>", type: "authentication_error", param: null, code: null } } },
    invalidAuthenticationHeader: { message: { error: { message: "malformed Authorization header", type: "authentication_error", param: null, code: null } } },
    invalidToken: { message: { error: { message: "invalid admin token", type: "authentication_error", param: null, code: null } } },
  })(c as never, next);
});

const ForwardBody = z.strictObject({
  model: z.string().optional(),
  /** Prompt token ids: returns logits for every position and the routing of every layer. */
  tokens: z.array(z.number().int().min(0)).min(1).max(512),
  /** Greedy-decode this many tokens after the prompt (KV cache path), returning their ids and logits. */
  greedy: z.number().int().min(0).max(64).optional(),
});

admin.post("/forward", async (c) => {
  const body = await parseBody(c, ForwardBody);
  const rt = await runtime(c.env, body.model);
  const { vocabSize } = rt.spec;
  const bad = body.tokens.findIndex((t) => t >= vocabSize);
  if (bad >= 0) throw ApiError.invalid(`tokens[${bad}]`, `token id ${body.tokens[bad]} is outside the vocabulary (size ${vocabSize})`);
  const greedy = body.greedy ?? 0;
  const rng = createRng(0);
  const session = rt.startSession(body.tokens.length + greedy);
  try {
    const trace: ForwardTrace = { routing: [], dispatch: [] };
    const logits = await rt.forward(c.env, session, body.tokens, rng, { allLogits: true, trace });
    const rows: number[][] = [];
    for (let t = 0; t < body.tokens.length; t++) rows.push(Array.from(logits.subarray(t * vocabSize, (t + 1) * vocabSize)));
    const greedyIds: number[] = [];
    const greedyLogits: number[][] = [];
    let last = logits.subarray((body.tokens.length - 1) * vocabSize);
    for (let i = 0; i < greedy; i++) {
      const id = argmax(last);
      greedyIds.push(id);
      greedyLogits.push(Array.from(last));
      if (i + 1 < greedy) last = await rt.forward(c.env, session, [id], rng);
    }
    return c.json({
      model: rt.id,
      logits: rows,
      greedy_ids: greedyIds,
      greedy_logits: greedyLogits,
      // Routing of the prompt tokens, keyed by MoE layer (the trace covers only the prompt pass).
      routing: Object.fromEntries(
        trace.routing.map(({ layer, routing: r }) => [layer, { expert_ids: chunk(Array.from(r.ids), r.topK), expert_weights: chunk(Array.from(r.weights), r.topK) }]),
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
  return c.json({ model: rt.id, version: placement.version, hosts, pipeline_version: rt.pipeline.version, stages, heads });
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

const FaultBody = z.strictObject({
  model: z.string().optional(),
  /** Instance id in the placement. */
  instance: z.number().int().min(0),
  layer: z.number().int().min(0),
  expert: z.number().int().min(0),
  ms: z.number().int().min(0).max(600_000),
});

/** Chaos testing: the instance fails every call that includes (layer, expert) for `ms`. */
admin.post("/fault", async (c) => {
  const body = await parseBody(c, FaultBody);
  const rt = await runtime(c.env, body.model);
  const placement = await rt.placement(c.env);
  const inst = placement.instances[body.instance];
  if (!inst) throw ApiError.invalid("instance", `must be < ${placement.instances.length}`);
  await c.env.EXPERT_HOST.getByName(inst.name).injectFault([{ layer: body.layer, expert: body.expert }], body.ms);
  return c.json({ instance: inst.name, layer: body.layer, expert: body.expert, ms: body.ms });
});

async function runtime(env: Env, model: string | undefined) {
  const id = model ?? env.DEFAULT_MODEL;
  try {
    return await getRuntime(env, id);
  } catch (err) {
    if (err instanceof ModelNotFoundError) throw new ApiError(404, `The model \`${id}\` does not exist`, "not_found_error", "model", "model_not_found");
    throw err;
  }
}

function chunk<T>(xs: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += size) out.push(xs.slice(i, i + size));
  return out;
}
