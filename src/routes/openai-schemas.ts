/**
 * @module Request bodies of the OpenAI-compatible routes as zod schemas: every field a request may
 * send, with its type and bounds; unknown fields are refused (strict objects). Size caps that depend
 * on the deployment's vars (prompt characters, messages, stop strings) are checked in limits.ts.
 */
import { z } from "zod";
import { MODEL_ID_PATTERN } from "../platform/model-store";
import { MAX_STOP, SEED_MAX } from "./limits";

export const samplingFields = {
  model: z.string().regex(MODEL_ID_PATTERN, 'must be a model id such as "demo-mixtral"').optional(),
  max_tokens: z.number().int("must be an integer").min(1, "must be ≥ 1").nullish(),
  temperature: z.number().min(0, "must be ≥ 0").max(2, "must be ≤ 2").nullish(),
  top_p: z.number().gt(0, "must be > 0").max(1, "must be ≤ 1").nullish(),
  seed: z
    .number()
    .int("must be an integer")
    .min(0, `must be in [0, ${SEED_MAX}]`)
    .max(SEED_MAX, `must be in [0, ${SEED_MAX}] (the sampler's seed is 32 bits)`)
    .nullish(),
  stop: z
    .union(
      [z.string(), z.array(z.string()).max(MAX_STOP, `at most ${MAX_STOP} stop sequences`)],
      `must be a string or an array of at most ${MAX_STOP} strings`,
    )
    .nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  n: z.literal(1, "only n = 1 is supported").nullish(),
  user: z.string().max(256, "must be at most 256 characters").optional(),
  presence_penalty: z.literal(0, "penalties are not supported; send 0 or omit").nullish(),
  frequency_penalty: z.literal(0, "penalties are not supported; send 0 or omit").nullish(),
  logprobs: z.union([z.literal(false), z.null()], "logprobs are not supported yet").optional(),
};

const tokenArray = z
  .array(z.number().int("token ids must be integers").min(0, "token ids must be ≥ 0"))
  .min(1, "must not be empty");

export const CompletionBody = z.strictObject({
  ...samplingFields,
  prompt: z.union(
    [
      z.string(),
      tokenArray,
      z.array(z.string()).length(1, "only one prompt per request is supported"),
      z.array(tokenArray).length(1, "only one prompt per request is supported"),
    ],
    "must be a string or an array of token ids",
  ),
  echo: z.literal(false, "echo is not supported").optional(),
  best_of: z.literal(1, "only best_of = 1 is supported").nullish(),
  suffix: z.null("suffix is not supported").optional(),
});

const ContentPart = z.object({ type: z.literal("text", "only text content parts are supported"), text: z.string() });
const Message = z.object({
  role: z.enum(["system", "user", "assistant", "tool"], "must be one of system, user, assistant, tool"),
  content: z.union([z.string(), z.array(ContentPart)], "must be a string or an array of text parts"),
  name: z.string().max(256, "must be at most 256 characters").optional(),
});

export const ChatBody = z.strictObject({
  ...samplingFields,
  messages: z.array(Message).min(1, "must contain at least one message"),
  max_completion_tokens: z.number().int("must be an integer").min(1, "must be ≥ 1").nullish(),
  top_logprobs: z.null().optional(),
  // vLLM's and SGLang's field for template switches. Only the ones a served template reads are
  // accepted (Qwen3's `enable_thinking`): anything else would be a variable no template checks.
  chat_template_kwargs: z.strictObject({ enable_thinking: z.boolean("must be a boolean").optional() }).nullish(),
});

export type Sampling = z.infer<z.ZodObject<typeof samplingFields>>;
