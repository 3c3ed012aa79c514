/**
 * @module Bounded work per request: the configurable caps (env vars with defaults) and the checks
 * that apply them to a parsed body. Every check here runs before the model is loaded or a
 * character is tokenized, so a hostile request costs a JSON parse at most — never seconds of
 * tokenizer time on the isolate that also answers everyone else.
 */
import { ApiError } from "../errors";
import { boolVar, ConfigError, intVar, perEnv } from "../platform/env";

/**
 * The sampler's seed is 32 bits (`createRng` keeps `seed >>> 0`): seeds are accepted exactly in
 * [0, 2³² − 1] so that two different accepted seeds never silently mean the same stream.
 */
export const SEED_MAX = 2 ** 32 - 1;
/** OpenAI's limit on stop sequences per request. */
export const MAX_STOP = 4;
/** OpenAI's default `max_tokens` for /v1/completions. */
export const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;

export interface Limits {
  /** Request body bytes (413 above it). */
  maxBodyBytes: number;
  /** Characters of a text prompt, or of all chat messages together. */
  maxPromptChars: number;
  /** Token ids of a prompt sent as ids. */
  maxPromptTokens: number;
  /** Characters of one chat message (its content parts together). */
  maxMessageChars: number;
  maxMessages: number;
  /** Content parts of one chat message. */
  maxContentParts: number;
  /** Characters of one stop sequence. */
  maxStopChars: number;
  /** max_tokens of a chat request that sends none (bounded by the room left in the context). */
  defaultMaxTokens: number;
  /** The most tokens one request may ask for. */
  maxTokensCap: number;
}

/** Defaults, also the values wrangler.toml ships (the deploy-config test keeps them in step). */
export const LIMIT_DEFAULTS: Limits = {
  maxBodyBytes: 1024 * 1024,
  maxPromptChars: 16_384,
  maxPromptTokens: 8192,
  maxMessageChars: 16_384,
  maxMessages: 256,
  maxContentParts: 64,
  maxStopChars: 128,
  defaultMaxTokens: 256,
  maxTokensCap: 2048,
};

/** The var that sets each limit (named in error messages so an operator knows what to raise). */
export const LIMIT_VARS: Record<keyof Limits, string> = {
  maxBodyBytes: "MAX_BODY_BYTES",
  maxPromptChars: "MAX_PROMPT_CHARS",
  maxPromptTokens: "MAX_PROMPT_TOKENS",
  maxMessageChars: "MAX_MESSAGE_CHARS",
  maxMessages: "MAX_MESSAGES",
  maxContentParts: "MAX_CONTENT_PARTS",
  maxStopChars: "MAX_STOP_CHARS",
  defaultMaxTokens: "DEFAULT_MAX_TOKENS",
  maxTokensCap: "MAX_TOKENS_CAP",
};

export const readLimits: (env: object) => Limits = perEnv((env) => {
  const out = {} as Limits;
  for (const k of Object.keys(LIMIT_DEFAULTS) as (keyof Limits)[])
    out[k] = intVar(env, LIMIT_VARS[k], LIMIT_DEFAULTS[k], { min: 1 });
  if (out.defaultMaxTokens > out.maxTokensCap) {
    throw new ConfigError("DEFAULT_MAX_TOKENS", `≤ MAX_TOKENS_CAP (${out.maxTokensCap})`, String(out.defaultMaxTokens));
  }
  return out;
});

/** Whether Cloudflare's Rate Limiting binding is consulted (`RATE_LIMIT_ENABLED`, default true). */
export const rateLimitEnabled: (env: object) => boolean = perEnv((env) => boolVar(env, "RATE_LIMIT_ENABLED", true));

interface SamplingLimitsInput {
  stop?: string | string[] | null;
}

/** Stop sequences: each non-empty (an empty one would end every output at once) and within MAX_STOP_CHARS. */
export function checkStop(body: SamplingLimitsInput, lim: Limits): void {
  if (body.stop == null) return;
  const stops = typeof body.stop === "string" ? [body.stop] : body.stop;
  stops.forEach((s, i) => {
    const param = typeof body.stop === "string" ? "stop" : `stop[${i}]`;
    if (s.length === 0) throw ApiError.invalid(param, "must not be empty");
    if (s.length > lim.maxStopChars)
      throw tooLong(param, `has ${s.length} characters; at most ${lim.maxStopChars} (MAX_STOP_CHARS)`);
  });
}

/** max_tokens (or max_completion_tokens) within MAX_TOKENS_CAP. */
export function checkMaxTokens(value: number | null | undefined, field: string, lim: Limits): void {
  if (value != null && value > lim.maxTokensCap) {
    throw ApiError.invalid(
      field,
      `must be ≤ ${lim.maxTokensCap} (this server's MAX_TOKENS_CAP), got ${value}`,
      "invalid_value",
    );
  }
}

/** A completions prompt: a string within MAX_PROMPT_CHARS, or ids within MAX_PROMPT_TOKENS. */
export function checkPrompt(prompt: string | number[] | string[] | number[][], lim: Limits): void {
  const inner =
    Array.isArray(prompt) && prompt.length === 1 && (typeof prompt[0] === "string" || Array.isArray(prompt[0]));
  const p = inner ? (prompt as string[] | number[][])[0] : prompt;
  const param = inner ? "prompt[0]" : "prompt";
  if (typeof p === "string") {
    if (p.length > lim.maxPromptChars)
      throw tooLong(param, `has ${p.length} characters; at most ${lim.maxPromptChars} (MAX_PROMPT_CHARS)`);
  } else if (p.length > lim.maxPromptTokens) {
    throw new ApiError(
      400,
      `${param}: has ${p.length} token ids; at most ${lim.maxPromptTokens} (MAX_PROMPT_TOKENS)`,
      "invalid_request_error",
      param,
      "array_above_max_length",
    );
  }
}

interface ChatMessageInput {
  content: string | { text: string }[];
  name?: string;
}

/** Chat messages: count, parts per message, characters per message and in total. */
export function checkMessages(messages: ChatMessageInput[], lim: Limits): void {
  if (messages.length > lim.maxMessages) {
    throw new ApiError(
      400,
      `messages: has ${messages.length} messages; at most ${lim.maxMessages} (MAX_MESSAGES)`,
      "invalid_request_error",
      "messages",
      "array_above_max_length",
    );
  }
  let total = 0;
  messages.forEach((m, i) => {
    let chars = m.name?.length ?? 0;
    if (typeof m.content === "string") chars += m.content.length;
    else {
      if (m.content.length > lim.maxContentParts) {
        const param = `messages[${i}].content`;
        throw new ApiError(
          400,
          `${param}: has ${m.content.length} parts; at most ${lim.maxContentParts} (MAX_CONTENT_PARTS)`,
          "invalid_request_error",
          param,
          "array_above_max_length",
        );
      }
      for (const part of m.content) chars += part.text.length;
    }
    if (chars > lim.maxMessageChars)
      throw tooLong(
        `messages[${i}].content`,
        `has ${chars} characters; at most ${lim.maxMessageChars} (MAX_MESSAGE_CHARS)`,
      );
    total += chars;
  });
  if (total > lim.maxPromptChars)
    throw tooLong("messages", `have ${total} characters together; at most ${lim.maxPromptChars} (MAX_PROMPT_CHARS)`);
}

function tooLong(param: string, message: string): ApiError {
  return new ApiError(400, `${param}: ${message}`, "invalid_request_error", param, "string_above_max_length");
}
