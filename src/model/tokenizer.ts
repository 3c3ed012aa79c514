/**
 * @module Text ⇄ token ids for a model directory's `tokenizer.json` + `tokenizer_config.json`, the
 * chat template, and incremental detokenisation for streaming. A thin face over
 * `@huggingface/tokenizers` and `@huggingface/jinja`; web-standard APIs only, so it runs in workerd.
 *
 * Encoding a chat prompt: the rendered template already contains the BOS text ("<s>"), so encode it
 * with `encode(rendered, { addSpecialTokens: false })`. Special-token text inside a string ("<s>",
 * "</s>") always maps to the special ids; "[INST]" in the Mistral/Llama 32000-token vocabulary is
 * not a special token and becomes ordinary pieces ("▁[", "INST", "]"), as it does in the reference.
 */
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import { ModelFormatError } from "./errors";

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string;
}

export interface StreamDecoder {
  /** Adds one generated id; returns the text it completed (often "", never a broken character). */
  push(id: number): string;
  /** Returns whatever text is still held back (an incomplete byte sequence decodes as U+FFFD). */
  flush(): string;
}

/** The chat template refused the conversation (e.g. roles do not alternate): a client error. */
export class ChatTemplateError extends Error {
  override name = "ChatTemplateError";
}

const TOKENIZER_FILE = "tokenizer.json";
const CONFIG_FILE = "tokenizer_config.json";
const REPLACEMENT_CHAR = "\uFFFD";
/** A UTF-8 character is at most 4 byte-fallback tokens; past this a U+FFFD is really in the text. */
const MAX_HELD_TOKENS = 8;

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A special token in tokenizer_config.json is a string, an AddedToken object, or null/absent. */
function specialTokenText(config: JsonObject, field: string): string | null {
  const v = config[field];
  if (v === undefined || v === null) return null;
  if (typeof v === "string") return v;
  if (isObject(v) && typeof v.content === "string") return v.content;
  throw new ModelFormatError(
    `${CONFIG_FILE}: ${field} must be a string or {"content": string}, got ${JSON.stringify(v)}`,
    CONFIG_FILE,
    undefined,
    field,
  );
}

/** `chat_template` is a string or a list of {name, template} (HF's named templates): take "default". */
function chatTemplateSource(config: JsonObject): string | null {
  const v = config.chat_template;
  if (v === undefined || v === null) return null;
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    const named = v.find(
      (t): t is { name: string; template: string } =>
        isObject(t) && t.name === "default" && typeof t.template === "string",
    );
    if (named) return named.template;
  }
  throw new ModelFormatError(
    `${CONFIG_FILE}: chat_template must be a string or a list with a {"name": "default", "template": string} entry`,
    CONFIG_FILE,
    undefined,
    "chat_template",
  );
}

export class TextTokenizer {
  readonly hasChatTemplate: boolean;
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: number[];

  readonly #tokenizer: Tokenizer;
  /** 1 for each id the vocabulary has a piece for, indexed by id. */
  readonly #known: Uint8Array;
  readonly #template: Template | null;
  readonly #specialText: Record<string, string>;

  private constructor(tokenizer: Tokenizer, config: JsonObject) {
    this.#tokenizer = tokenizer;
    const ids = [...tokenizer.get_vocab(true).values()];
    let maxId = -1;
    for (const id of ids) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
    this.#known = new Uint8Array(this.vocabSize);
    for (const id of ids) this.#known[id] = 1;

    this.#specialText = {};
    for (const field of ["bos_token", "eos_token", "unk_token", "pad_token"]) {
      const text = specialTokenText(config, field);
      if (text !== null) this.#specialText[field] = text;
    }
    const idOf = (field: string): number | null => {
      const text = this.#specialText[field];
      if (text === undefined) return null;
      const id = tokenizer.token_to_id(text);
      if (id === undefined) {
        throw new ModelFormatError(
          `${CONFIG_FILE}: ${field} ${JSON.stringify(text)} is not in ${TOKENIZER_FILE}'s vocabulary`,
          CONFIG_FILE,
          undefined,
          field,
        );
      }
      return id;
    };
    this.bosTokenId = idOf("bos_token");
    const eos = idOf("eos_token");
    this.eosTokenIds = eos === null ? [] : [eos];

    const source = chatTemplateSource(config);
    this.hasChatTemplate = source !== null;
    try {
      this.#template = source === null ? null : new Template(source);
    } catch (e) {
      throw new ModelFormatError(
        `${CONFIG_FILE}: chat_template does not parse: ${(e as Error).message}`,
        CONFIG_FILE,
        undefined,
        "chat_template",
      );
    }
  }

  /**
   * Builds a tokenizer from the parsed JSON of `tokenizer.json` and `tokenizer_config.json`.
   * Throws ModelFormatError naming the file (and field) that is wrong.
   */
  static fromJson(tokenizerJson: unknown, tokenizerConfig: unknown): TextTokenizer {
    if (!isObject(tokenizerJson))
      throw new ModelFormatError(`${TOKENIZER_FILE}: expected a JSON object`, TOKENIZER_FILE);
    if (!isObject(tokenizerJson.model)) {
      throw new ModelFormatError(
        `${TOKENIZER_FILE}: missing the "model" object (is this a tokenizers-library file?)`,
        TOKENIZER_FILE,
        undefined,
        "model",
      );
    }
    if (!isObject(tokenizerConfig)) throw new ModelFormatError(`${CONFIG_FILE}: expected a JSON object`, CONFIG_FILE);
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
    } catch (e) {
      throw new ModelFormatError(
        `${TOKENIZER_FILE}: cannot build the tokenizer: ${(e as Error).message}`,
        TOKENIZER_FILE,
      );
    }
    return new TextTokenizer(tokenizer, tokenizerConfig);
  }

  /**
   * Text → ids. `addSpecialTokens` (default true) applies the tokenizer's post-processor, which adds
   * BOS for Llama/Mistral. Pass false for text that already holds the BOS text, such as the output
   * of `applyChatTemplate`; special-token text in `text` maps to the special ids either way.
   */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[] {
    return this.#tokenizer.encode(text, { add_special_tokens: opts?.addSpecialTokens ?? true }).ids;
  }

  /**
   * Ids → text. `skipSpecialTokens` (default false) drops BOS/EOS/etc. from the output. Ids the
   * vocabulary has no piece for are skipped: a model's vocabulary can be larger than its
   * tokenizer's (scripts/make-model.ts pairs granite's 49155 ids with Mistral's 32000 pieces), and
   * the library would otherwise render them as its unknown token, which the model did not produce.
   */
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): string {
    const known = ids.every((id) => this.isDecodable(id)) ? ids : ids.filter((id) => this.isDecodable(id));
    if (known.length === 0) return ""; // the library refuses an empty list
    return this.#tokenizer.decode(known, { skip_special_tokens: opts?.skipSpecialTokens ?? false });
  }

  /** True when the vocabulary has a piece for `id` (else `decode` skips it). */
  isDecodable(id: number): boolean {
    return Number.isInteger(id) && id >= 0 && id < this.vocabSize && this.#known[id] === 1;
  }

  /**
   * Renders `chat_template` for `messages`. Throws ChatTemplateError when the template refuses the
   * conversation (its `raise_exception`), and ModelFormatError when the config has no template.
   * The result starts with the BOS text: encode it with `{ addSpecialTokens: false }`.
   * `enableThinking` is passed as the template variable `enable_thinking` only when given: Qwen3's
   * template tests `enable_thinking is defined and enable_thinking is false` (false appends an
   * empty `<think>\n\n</think>\n\n` block so the model answers directly); templates that do not
   * read it ignore it.
   */
  applyChatTemplate(
    messages: ChatMessage[],
    opts?: { addGenerationPrompt?: boolean; enableThinking?: boolean },
  ): string {
    if (this.#template === null) {
      throw new ModelFormatError(
        `${CONFIG_FILE}: no chat_template; this model cannot serve chat requests (use a completion prompt)`,
        CONFIG_FILE,
        undefined,
        "chat_template",
      );
    }
    // @huggingface/jinja defines `raise_exception(message)` itself (it throws Error(message)) and
    // refuses a second definition, so we do not pass one. The template parsed at load, so a render
    // failure is about this conversation: report it as the client's error, message unchanged.
    try {
      return this.#template.render({
        ...this.#specialText,
        messages: messages.map((m) => ({ role: m.role, content: m.content })),
        add_generation_prompt: opts?.addGenerationPrompt ?? true,
        ...(opts?.enableThinking === undefined ? {} : { enable_thinking: opts.enableThinking }),
      });
    } catch (e) {
      throw new ChatTemplateError((e as Error).message);
    }
  }

  /**
   * Incremental detokeniser for streaming (`skipSpecialTokens` defaults to true). The pieces it
   * returns concatenate to `decode(allIds, { skipSpecialTokens })`.
   *
   * Decoding one id at a time is wrong for SentencePiece (the decoder strips the leading "▁" of the
   * first piece) and for byte-fallback pieces (one character spans several ids). So, as in HF
   * text-generation-inference's `decode_token`, we decode the window since a checkpoint and emit
   * only what it adds to the decode of the window's already-emitted part, holding back text that
   * ends in U+FFFD (an incomplete UTF-8 sequence).
   */
  createStreamDecoder(opts?: { skipSpecialTokens?: boolean }): StreamDecoder {
    const decodeOpts = { skipSpecialTokens: opts?.skipSpecialTokens ?? true };
    let ids: number[] = []; // the window: ids of the last emission (context), then unemitted ids
    let readStart = 0; // ids[0, readStart) were emitted; prefixText is their decode
    let prefixText = "";

    const advance = (force: boolean): string => {
      if (readStart === ids.length) return "";
      const text = this.decode(ids, decodeOpts);
      const stable = text.length > prefixText.length && text.startsWith(prefixText) && !text.endsWith(REPLACEMENT_CHAR);
      if (!stable && !force && ids.length - readStart < MAX_HELD_TOKENS) return "";
      const out = text.slice(prefixText.length);
      // The emitted ids become the next window's context; older ids are no longer needed.
      ids = ids.slice(readStart);
      readStart = ids.length;
      prefixText = this.decode(ids, decodeOpts);
      return out;
    };

    return {
      push: (id: number) => {
        ids.push(id);
        return advance(false);
      },
      flush: () => advance(true),
    };
  }
}
