/**
 * @module The OpenAI-compatible surface: GET /v1/models, POST /v1/completions,
 * POST /v1/chat/completions (JSON or SSE), and GET /v1/placement (read-only view of where each
 * model's experts live — behind the API key like the rest, since it names hosts and traffic).
 * Every route passes the API key, the rate limit and the body guards first, and every size cap
 * (limits.ts) before the model is loaded or anything is tokenized.
 */
import { Hono, type Context } from "hono";
import { streamSSE } from "hono/streaming";
import type { z } from "zod";
import { ApiError } from "../errors";
import {
  startGeneration,
  type FinishReason,
  type GenerateRequest,
  type GenerateStats,
  type WaitUntil,
} from "../serving/generate";
import type { ModelRuntime } from "../serving/model-runtime";
import { getRuntime } from "../serving/runtime-cache";
import { isModelChanged, listModelIds, modelPrefix, ModelNotFoundError } from "../platform/model-store";
import { maxServableTokens, parseConfig } from "../model/config";
import { deploymentMaxLen, readStageBudgets } from "../serving/stage-budgets";
import { parseBody } from "./validate";
import { ChatBody, CompletionBody, type Sampling } from "./openai-schemas";
import { modelLayer } from "../coordinator/placement";
import { trackGeneration, type GenerationTracker } from "../observability/http";
import { apiKeyAuth, type AuthVariables } from "./api-keys";
import { bodyCap, rateLimit, requireJson } from "./guards";
import { admission, firstEventBeforeHeaders } from "./admission";
import {
  checkMaxTokens,
  checkMessages,
  checkPrompt,
  checkStop,
  COMPLETIONS_DEFAULT_MAX_TOKENS,
  readLimits,
} from "./limits";

export const openai = new Hono<{ Bindings: Env; Variables: AuthVariables }>();

openai.use("*", apiKeyAuth(), rateLimit(), requireJson(), bodyCap());
for (const path of ["/completions", "/chat/completions"]) openai.use(path, admission());

openai.get("/models", async (c) => {
  const ids = await listModelIds(c.env.MODELS);
  const data = await Promise.all(
    ids.map(async (id) => {
      const base = { id, object: "model", created: 0, owned_by: "edge-moe" };
      try {
        // Listing reads each config.json only: it must not load every model's weights.
        const obj = await c.env.MODELS.get(`${modelPrefix(id)}config.json`);
        if (!obj) throw new Error(`${modelPrefix(id)}config.json disappeared`);
        const spec = parseConfig(await obj.json());
        return {
          ...base,
          architecture: spec.arch,
          n_experts: spec.nExperts,
          top_k: spec.topK,
          n_layers: spec.nLayers,
          context_length: maxServableTokens(spec),
        };
      } catch (err) {
        return { ...base, error: err instanceof Error ? err.message : String(err) };
      }
    }),
  );
  return c.json({ object: "list", data });
});

openai.get("/placement", async (c) => {
  const rt = await runtimeFor(c, c.req.query("model"));
  const placement = await rt.placement(c.env);
  const perInstance = placement.instances.map((inst) => ({ ...inst, experts: [] as string[] }));
  placement.replicas.forEach((row, r) =>
    row.forEach((reps, expert) =>
      reps.forEach((rep) =>
        perInstance[rep.instance].experts.push(
          `${modelLayer(placement, r)}:${expert}${reps.length > 1 ? `@${rep.share.toFixed(2)}` : ""}`,
        ),
      ),
    ),
  );
  return c.json({
    model: placement.model,
    version: placement.version,
    n_moe_layers: placement.nLayers,
    moe_layers: placement.layers ?? placement.replicas.map((_, i) => i),
    // Sliced experts: the entries are units "layer:unit" (unit = expert · expert_slices + slice).
    n_experts: placement.nExperts / (placement.slices ?? 1),
    expert_slices: placement.slices ?? 1,
    instances: perInstance,
  });
});

openai.post("/completions", async (c) => {
  const body = await parseBody(c, CompletionBody);
  const lim = readLimits(c.env);
  checkPrompt(body.prompt, lim);
  checkStop(body, lim);
  checkMaxTokens(body.max_tokens, "max_tokens", lim);
  const rt = await runtimeFor(c, body.model);
  const promptIds = promptToIds(rt, body.prompt);
  const req = generateRequest(
    c.env,
    rt,
    body,
    promptIds,
    body.max_tokens ?? null,
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    "max_tokens",
  );
  const id = `cmpl-${crypto.randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const head = { id, object: "text_completion", created, model: rt.id };
  if (body.stream) {
    return await sse(
      c,
      rt,
      req,
      body.stream_options?.include_usage ?? false,
      (text, ids, finish) => ({
        ...head,
        choices: [{ index: 0, text, token_ids: ids, logprobs: null, finish_reason: finish }],
      }),
      head,
    );
  }
  const r = await collect(c.env, rt, { ...req, signal: c.req.raw.signal }, waitUntilOf(c), trackGeneration(c, rt.id));
  return c.json({
    ...head,
    choices: [{ index: 0, text: r.text, token_ids: r.ids, logprobs: null, finish_reason: r.finish }],
    usage: usage(r.stats),
  });
});

openai.post("/chat/completions", async (c) => {
  const body = await parseBody(c, ChatBody);
  const lim = readLimits(c.env);
  checkMessages(body.messages, lim);
  checkStop(body, lim);
  checkMaxTokens(body.max_tokens, "max_tokens", lim);
  checkMaxTokens(body.max_completion_tokens, "max_completion_tokens", lim);
  const rt = await runtimeFor(c, body.model);
  const tok = rt.tokenizer;
  if (!tok?.hasChatTemplate) {
    throw ApiError.invalid(
      "model",
      `model "${rt.id}" has no chat template (tokenizer_config.json chat_template); use /v1/completions`,
      "no_chat_template",
    );
  }
  const messages = body.messages.map((m) => ({
    role: m.role,
    content: typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join(""),
  }));
  let rendered: string;
  try {
    rendered = tok.applyChatTemplate(messages, {
      addGenerationPrompt: true,
      enableThinking: body.chat_template_kwargs?.enable_thinking,
    });
  } catch (err) {
    throw ApiError.invalid(
      "messages",
      `the chat template refused these messages: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  const promptIds = tok.encode(rendered, { addSpecialTokens: false });
  const maxField = body.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
  const req = generateRequest(
    c.env,
    rt,
    body,
    promptIds,
    body.max_completion_tokens ?? body.max_tokens ?? null,
    lim.defaultMaxTokens,
    maxField,
  );
  const id = `chatcmpl-${crypto.randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const head = { id, object: "chat.completion.chunk", created, model: rt.id };
  if (body.stream) {
    let first = true;
    return await sse(
      c,
      rt,
      req,
      body.stream_options?.include_usage ?? false,
      (text, _ids, finish) => {
        const delta: Record<string, string> = first
          ? { role: "assistant", content: text }
          : text
            ? { content: text }
            : {};
        first = false;
        return { ...head, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] };
      },
      head,
    );
  }
  const r = await collect(c.env, rt, { ...req, signal: c.req.raw.signal }, waitUntilOf(c), trackGeneration(c, rt.id));
  return c.json({
    id,
    object: "chat.completion",
    created,
    model: rt.id,
    choices: [{ index: 0, message: { role: "assistant", content: r.text }, logprobs: null, finish_reason: r.finish }],
    usage: usage(r.stats),
  });
});

async function runtimeFor(
  c: Context<{ Bindings: Env; Variables: AuthVariables }>,
  model: string | undefined,
): Promise<ModelRuntime> {
  const id = model ?? c.env.DEFAULT_MODEL;
  try {
    return await getRuntime(c.env, id);
  } catch (err) {
    if (err instanceof ModelNotFoundError)
      throw new ApiError(404, `The model \`${id}\` does not exist`, "not_found_error", "model", "model_not_found");
    throw err;
  }
}

function promptToIds(rt: ModelRuntime, prompt: z.infer<typeof CompletionBody>["prompt"]): number[] {
  const p =
    Array.isArray(prompt) && prompt.length === 1 && (typeof prompt[0] === "string" || Array.isArray(prompt[0]))
      ? prompt[0]
      : prompt;
  if (typeof p === "string") {
    if (!rt.tokenizer)
      throw ApiError.invalid(
        "prompt",
        `model "${rt.id}" has no tokenizer; send the prompt as an array of token ids`,
        "no_tokenizer",
      );
    if (p.length === 0) throw ApiError.invalid("prompt", "must not be empty");
    return rt.tokenizer.encode(p);
  }
  const ids = p as number[];
  const bad = ids.findIndex((t) => t >= rt.spec.vocabSize);
  if (bad >= 0)
    throw ApiError.invalid(
      `prompt[${bad}]`,
      `token id ${ids[bad]} is outside the vocabulary (size ${rt.spec.vocabSize})`,
    );
  return ids;
}

/** Per runtime (one upload of a model in this isolate): the longest request its placement serves. */
const servable = new WeakMap<ModelRuntime, number>();

/**
 * Prompt + generation one request of `rt` may have: the model's context, or less when a KV budget
 * binds (a session reserves its whole length up front: granite on default budgets, 512 positions).
 */
function servableLength(env: Env, rt: ModelRuntime): number {
  let n = servable.get(rt);
  if (n === undefined) {
    n = deploymentMaxLen(rt.spec, rt.pipeline.stages, readStageBudgets(env));
    servable.set(rt, n);
  }
  return n;
}

/**
 * `maxTokens` as sent (null: none), else `dflt` bounded by the room the prompt leaves under the
 * deployment's length: a default request takes what fits, an explicit one over it is a 400.
 */
function generateRequest(
  env: Env,
  rt: ModelRuntime,
  body: Sampling,
  promptIds: number[],
  maxTokens: number | null,
  dflt: number,
  maxField: string,
): GenerateRequest {
  const context = maxServableTokens(rt.spec);
  const limit = servableLength(env, rt);
  const what =
    limit < context
      ? `this deployment serves ${limit} positions per request (context ${context}; the KV budget binds)`
      : `this model's context is ${limit}`;
  if (promptIds.length >= limit) {
    throw ApiError.invalid(
      "messages" in body ? "messages" : "prompt",
      `the prompt has ${promptIds.length} tokens; ${what}`,
      "context_length_exceeded",
    );
  }
  const room = limit - promptIds.length;
  const max = maxTokens ?? Math.min(dflt, room);
  if (max > room) {
    throw ApiError.invalid(
      maxField,
      `${max} + ${promptIds.length} prompt tokens exceeds what fits: ${what} (at most ${room})`,
      "context_length_exceeded",
    );
  }
  const stop = body.stop == null ? [] : typeof body.stop === "string" ? [body.stop] : body.stop;
  if (stop.length > 0 && !rt.tokenizer)
    throw ApiError.invalid("stop", `model "${rt.id}" has no tokenizer, so stop strings cannot match`);
  return {
    promptIds,
    maxTokens: max,
    sampling: { temperature: body.temperature ?? 1, topP: body.top_p ?? 1 },
    seed: body.seed ?? null,
    stop,
  };
}

interface Collected {
  text: string;
  ids: number[];
  finish: FinishReason;
  stats: GenerateStats;
}

/** The request's waitUntil (absent when the app is driven without an execution context). */
function waitUntilOf(c: Context<{ Bindings: Env; Variables: AuthVariables }>): WaitUntil | undefined {
  try {
    const ctx = c.executionCtx;
    return (p) => ctx.waitUntil(p);
  } catch {
    return undefined;
  }
}

async function collect(
  env: Env,
  rt: ModelRuntime,
  req: GenerateRequest,
  waitUntil?: WaitUntil,
  track?: GenerationTracker,
): Promise<Collected> {
  const stats: GenerateStats = { promptTokens: 0, completionTokens: 0, prefillMs: 0, decodeMs: 0 };
  let text = "";
  const ids: number[] = [];
  let finish: FinishReason = "length";
  try {
    for await (const ev of await startGeneration(env, rt, req, stats, waitUntil)) {
      track?.event();
      text += ev.text;
      ids.push(...ev.tokenIds);
      if (ev.finishReason) finish = ev.finishReason;
    }
  } catch (err) {
    track?.end(stats, "error");
    throw err;
  }
  track?.end(stats, finish);
  return { text, ids, finish, stats };
}

function usage(s: GenerateStats) {
  return {
    prompt_tokens: s.promptTokens,
    completion_tokens: s.completionTokens,
    total_tokens: s.promptTokens + s.completionTokens,
  };
}

async function sse(
  c: Context<{ Bindings: Env; Variables: AuthVariables }>,
  rt: ModelRuntime,
  req: GenerateRequest,
  includeUsage: boolean,
  chunk: (text: string, ids: number[], finish: FinishReason | null) => object,
  head: object,
) {
  const stats: GenerateStats = { promptTokens: 0, completionTokens: 0, prefillMs: 0, decodeMs: 0 };
  // The client going away cancels the response stream (and, where the runtime reports it, the
  // request's signal): either stops the generation's work at once, not at the next token.
  const gone = new AbortController();
  const signal = AbortSignal.any([c.req.raw.signal, gone.signal]);
  // Admission (KV budgets, then the prefill and first token) before the headers go out: a full
  // model or a failing host is a 429/503, not an in-band error.
  const generation = await startGeneration(c.env, rt, { ...req, signal }, stats, waitUntilOf(c));
  const tokens = await firstEventBeforeHeaders(generation);
  return streamSSE(c, async (stream) => {
    stream.onAbort(() => gone.abort(new DOMException("the client went away", "AbortError")));
    const track = trackGeneration(c, rt.id);
    try {
      let finish: FinishReason | "aborted" = "length";
      for await (const ev of tokens) {
        track.event();
        if (ev.finishReason) finish = ev.finishReason;
        if (stream.aborted) {
          finish = "aborted";
          break;
        }
        await stream.writeSSE({ data: JSON.stringify(chunk(ev.text, ev.tokenIds, ev.finishReason)) });
      }
      track.end(stats, finish);
      if (includeUsage) await stream.writeSSE({ data: JSON.stringify({ ...head, choices: [], usage: usage(stats) }) });
    } catch (err) {
      if (signal.aborted) {
        track.end(stats, "aborted");
        return;
      }
      track.end(stats, "error");
      // Headers are gone: report the failure in-band, as OpenAI does, then end the stream.
      const e =
        err instanceof ApiError
          ? err
          : isModelChanged(err)
            ? ApiError.modelChanged((err as Error).message)
            : new ApiError(500, "generation failed on the server", "server_error");
      if (!(err instanceof ApiError) && !isModelChanged(err)) console.error("stream failed", err);
      await stream.writeSSE({ data: JSON.stringify(e.toBody()) });
    }
    await stream.writeSSE({ data: "[DONE]" });
  });
}
