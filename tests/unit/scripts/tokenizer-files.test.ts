/**
 * @module The real tokenizers of the served families, loaded offline through TextTokenizer: special
 * ids, encode/decode round trips, and each family's chat template rendered and tokenized.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { TextTokenizer, type ChatMessage } from "../../../src/model/tokenizer";
import {
  attachTokenizer,
  tokenizerFamilyFor,
  tokenizerFilesFor,
  type TokenizerFamily,
} from "../../../scripts/lib/tokenizer-files";

function load(family: TokenizerFamily): TextTokenizer {
  const files = tokenizerFilesFor(family);
  const json = (p: string) => JSON.parse(readFileSync(p, "utf8")) as unknown;
  return TextTokenizer.fromJson(json(files["tokenizer.json"]), json(files["tokenizer_config.json"]));
}

const TEXTS = ["Hello world", "héllo 日本語 🙂", "  two spaces\nnewline\tand tab", "def f(x):\n    return x ** 2"];
const CHAT: ChatMessage[] = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "What is 2+2?" },
];

/** What each family's template must produce around the messages (the published formats). */
/** vocab: the model's vocab_size (embedding rows, padded past the tokenizer's ids); marker: a
 * template token that must encode to one id. */
const CASES: { family: TokenizerFamily; vocab: number; eos: string; marker: string; rendered: string | null }[] = [
  {
    family: "qwen3",
    vocab: 151669,
    eos: "<|im_end|>",
    marker: "<|im_start|>",
    rendered:
      "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
  },
  {
    family: "deepseek_v3",
    vocab: 129280,
    eos: "<｜end▁of▁sentence｜>",
    marker: "<｜User｜>",
    rendered: "<｜begin▁of▁sentence｜>You are terse.<｜User｜>What is 2+2?<｜Assistant｜>",
  },
  {
    family: "llama3",
    vocab: 128256,
    eos: "<|end_of_text|>",
    marker: "<|start_header_id|>",
    rendered:
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>" +
      "<|start_header_id|>assistant<|end_header_id|>\n\n",
  },
  { family: "gpt_oss", vocab: 201088, eos: "<|return|>", marker: "<|start|>", rendered: null },
];

describe("shipped tokenizers of the served families", () => {
  for (const c of CASES) {
    it(`${c.family}: loads offline, round-trips text, renders its chat template`, () => {
      const tok = load(c.family);
      // Every id the tokenizer makes is a row of the model's embedding, and few rows are padding.
      expect(tok.vocabSize).toBeLessThanOrEqual(c.vocab);
      expect(tok.vocabSize).toBeGreaterThan(c.vocab * 0.99);
      expect(tok.encode(c.marker, { addSpecialTokens: false })).toHaveLength(1);
      expect(tok.decode(tok.eosTokenIds)).toBe(c.eos);
      for (const t of TEXTS) expect(tok.decode(tok.encode(t, { addSpecialTokens: false }))).toBe(t);
      expect(tok.hasChatTemplate).toBe(c.rendered !== null);
      if (c.rendered === null) return;
      const prompt = tok.applyChatTemplate(CHAT);
      expect(prompt).toBe(c.rendered);
      const ids = tok.encode(prompt, { addSpecialTokens: false });
      expect(tok.decode(ids)).toBe(prompt);
      expect(ids).toContain(tok.encode(c.marker, { addSpecialTokens: false })[0]);
      expect(ids.length).toBeLessThan(prompt.length / 2);
    });
  }

  it("renders a multi-turn conversation in each published format", () => {
    const turns: ChatMessage[] = [
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello!" },
      { role: "user", content: "2+2?" },
    ];
    const want: Record<string, string> = {
      qwen3:
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n" +
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
      deepseek_v3:
        "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜>",
      llama3:
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" +
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>" +
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    };
    for (const [family, text] of Object.entries(want)) {
      expect(load(family as TokenizerFamily).applyChatTemplate(turns)).toBe(text);
    }
  });

  it("qwen3: enable_thinking false closes an empty think block; undefined and true leave it to the model", () => {
    const tok = load("qwen3");
    const base = CASES[0].rendered;
    expect(tok.applyChatTemplate(CHAT)).toBe(base);
    expect(tok.applyChatTemplate(CHAT, { enableThinking: true })).toBe(base);
    const off = tok.applyChatTemplate(CHAT, { enableThinking: false });
    expect(off).toBe(`${base}<think>\n\n</think>\n\n`);
    // <think> and </think> are single added tokens of the Qwen3 vocabulary.
    const ids = tok.encode(off, { addSpecialTokens: false });
    expect(ids.slice(-4).map((id) => tok.decode([id]))).toEqual(["<think>", "\n\n", "</think>", "\n\n"]);
    // A template that does not read the variable is unchanged by it.
    const llama = load("llama3");
    expect(llama.applyChatTemplate(CHAT, { enableThinking: false })).toBe(CASES[2].rendered);
  });

  it("maps model types to families and copies the files into a model directory", () => {
    expect(tokenizerFamilyFor("qwen3_moe")).toBe("qwen3");
    expect(tokenizerFamilyFor("deepseek_v3")).toBe("deepseek_v3");
    expect(tokenizerFamilyFor("deepseek_v2")).toBeNull();
    const dir = mkdtempSync(join(tmpdir(), "edge-moe-tokfiles-"));
    try {
      writeFileSync(join(dir, "tokenizer_config.json"), "{}");
      expect(attachTokenizer(dir, "qwen3")).toEqual(["tokenizer.json"]);
      expect(readFileSync(join(dir, "tokenizer_config.json"), "utf8")).toBe("{}");
      expect(attachTokenizer(dir, "qwen3", true)).toEqual(["tokenizer.json", "tokenizer_config.json"]);
      expect(readdirSync(dir).sort()).toEqual(["tokenizer.json", "tokenizer_config.json"]);
      expect(() => tokenizerFilesFor("nope" as TokenizerFamily)).toThrow(/unknown tokenizer family/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
