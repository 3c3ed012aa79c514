/**
 * @module The decode loop: prefill the prompt, then sample one token at a time until EOS, a stop
 * string or max_tokens; yields text deltas as they become final (stop strings are held back until
 * they can no longer match, so a streamed response never shows text a stop string cut off).
 */
import type { ModelRuntime, RuntimeSession } from "./model-runtime";
import type { SamplingParams } from "./sampling";
import { sampledTokens } from "./decode-loop";
import { flushLoad, flushLoadSoon } from "../experts/expert-client";

export interface GenerateRequest {
  promptIds: number[];
  maxTokens: number;
  sampling: SamplingParams;
  seed: number | null;
  stop: string[];
  /**
   * The client's: when it goes away the loop stops at once — no further expert, stage or head
   * call starts, a remote driver's stream is cancelled, and the session is freed.
   */
  signal?: AbortSignal;
}

export type FinishReason = "stop" | "length";

export interface GenerateEvent {
  /** Text that became final with this step (may be empty). */
  text: string;
  tokenIds: number[];
  finishReason: FinishReason | null;
}

export interface GenerateStats {
  promptTokens: number;
  completionTokens: number;
  prefillMs: number;
  decodeMs: number;
}

/** Keeps background work (load reports) alive after the response: the request's ctx.waitUntil. */
export type WaitUntil = (p: Promise<unknown>) => void;

/**
 * Reserves the request's KV caches (Worker and every pipeline stage) and returns the token stream.
 * Awaited before a response starts, so a full budget is a 429 with Retry-After, not an error
 * inside a 200 stream.
 */
export async function startGeneration(
  env: Env,
  rt: ModelRuntime,
  req: GenerateRequest,
  stats?: GenerateStats,
  waitUntil?: WaitUntil,
): Promise<AsyncGenerator<GenerateEvent>> {
  const session = await rt.openSession(env, req.promptIds.length + req.maxTokens);
  return generate(env, rt, req, stats, waitUntil, session);
}

/** The decode loop; without `opened` it opens (and always frees) its own session. */
export async function* generate(
  env: Env,
  rt: ModelRuntime,
  req: GenerateRequest,
  stats?: GenerateStats,
  waitUntil?: WaitUntil,
  opened?: RuntimeSession,
): AsyncGenerator<GenerateEvent> {
  const seed = req.seed ?? (Math.random() * 2 ** 32) >>> 0;
  const session = opened ?? (await rt.openSession(env, req.promptIds.length + req.maxTokens));
  const decoder = rt.tokenizer?.createStreamDecoder() ?? null;
  const eos = new Set(rt.spec.eosTokenIds);
  const longestStop = req.stop.reduce((m, s) => Math.max(m, s.length), 0);
  let held = ""; // decoded text not yet released (could still be the start of a stop string)
  let produced = 0;
  const loop = { promptIds: req.promptIds, maxTokens: req.maxTokens, sampling: req.sampling, seed };
  // Pipeline stages: the loop runs in the model's region and streams ids back; else right here.
  let tokens: AsyncGenerator<number> | null = null;
  try {
    // Inside the try: a driver that fails to start must still free the session on every stage.
    tokens = rt.drivenRemotely
      ? await rt.driveRemotely(env, session, loop, req.signal)
      : sampledTokens(env, rt, session, loop, req.signal);
    const t0 = Date.now();
    let t1 = t0;
    for await (const id of tokens) {
      produced++;
      if (produced === 1) {
        t1 = Date.now();
        if (stats) {
          stats.promptTokens = req.promptIds.length;
          stats.prefillMs = t1 - t0;
        }
      } else if (stats) {
        stats.completionTokens = produced;
        stats.decodeMs = Date.now() - t1;
      }
      if (waitUntil && produced > 1) flushLoad(env, rt.id, waitUntil);
      if (eos.has(id)) {
        yield { text: held + (decoder?.flush() ?? ""), tokenIds: [], finishReason: "stop" };
        return;
      }
      held += decoder?.push(id) ?? "";
      const hit = firstStop(held, req.stop);
      if (hit >= 0) {
        yield { text: held.slice(0, hit), tokenIds: [id], finishReason: "stop" };
        return;
      }
      if (produced >= req.maxTokens) {
        const rest = held + (decoder?.flush() ?? "");
        const cut = firstStop(rest, req.stop);
        yield {
          text: cut >= 0 ? rest.slice(0, cut) : rest,
          tokenIds: [id],
          finishReason: cut >= 0 ? "stop" : "length",
        };
        return;
      }
      const release = longestStop > 0 ? Math.max(0, held.length - (longestStop - 1)) : held.length;
      yield { text: held.slice(0, release), tokenIds: [id], finishReason: null };
      held = held.slice(release);
    }
    req.signal?.throwIfAborted();
    throw new Error(`the decode loop ended after ${produced} of ${req.maxTokens} tokens without EOS`);
  } finally {
    try {
      await tokens?.return(undefined);
    } finally {
      // Even when closing the token stream failed: the KV caches are freed (once no step writes them).
      if (stats) {
        stats.completionTokens = produced;
      }
      const freed = rt.endSession(session, env);
      if (waitUntil) waitUntil(freed);
      else await freed;
      if (waitUntil) flushLoadSoon(env, rt.id, waitUntil);
    }
  }
}

function firstStop(text: string, stops: string[]): number {
  let at = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  return at;
}
