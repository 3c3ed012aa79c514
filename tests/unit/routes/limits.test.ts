/** Size caps on parsed bodies: each refusal names the field, its size and the var to raise. */
import { describe, expect, it } from "vitest";
import { ApiError } from "../../../src/errors";
import {
  checkMaxTokens,
  checkMessages,
  checkPrompt,
  checkStop,
  LIMIT_DEFAULTS,
  type Limits,
} from "../../../src/routes/limits";

const lim: Limits = {
  ...LIMIT_DEFAULTS,
  maxPromptChars: 10,
  maxPromptTokens: 3,
  maxMessageChars: 6,
  maxMessages: 2,
  maxContentParts: 2,
  maxStopChars: 4,
  maxTokensCap: 8,
};

function refusal(f: () => void): { param: string | null; code: string | null; message: string } {
  try {
    f();
  } catch (err) {
    if (err instanceof ApiError) return { param: err.param, code: err.code, message: err.message };
    throw err;
  }
  throw new Error("expected a refusal");
}

describe("limits", () => {
  it("caps prompts in characters and in token ids", () => {
    expect(() => checkPrompt("0123456789", lim)).not.toThrow();
    expect(refusal(() => checkPrompt("01234567890", lim))).toMatchObject({
      param: "prompt",
      code: "string_above_max_length",
    });
    expect(refusal(() => checkPrompt(["01234567890"], lim)).param).toBe("prompt[0]");
    expect(refusal(() => checkPrompt([1, 2, 3, 4], lim))).toMatchObject({
      param: "prompt",
      code: "array_above_max_length",
    });
    expect(refusal(() => checkPrompt([[1, 2, 3, 4]], lim)).message).toContain("MAX_PROMPT_TOKENS");
  });

  it("refuses empty and long stop strings, naming the one", () => {
    expect(refusal(() => checkStop({ stop: "" }, lim))).toMatchObject({ param: "stop" });
    expect(refusal(() => checkStop({ stop: ["ab", ""] }, lim)).param).toBe("stop[1]");
    expect(refusal(() => checkStop({ stop: ["abcde"] }, lim)).message).toContain("MAX_STOP_CHARS");
    expect(() => checkStop({ stop: ["abcd"] }, lim)).not.toThrow();
    expect(() => checkStop({ stop: null }, lim)).not.toThrow();
  });

  it("caps messages, content parts, characters per message and in total", () => {
    const m = (content: string | { text: string }[]) => ({ content });
    expect(refusal(() => checkMessages([m("a"), m("b"), m("c")], lim))).toMatchObject({
      param: "messages",
      code: "array_above_max_length",
    });
    expect(refusal(() => checkMessages([m([{ text: "a" }, { text: "b" }, { text: "c" }])], lim)).param).toBe(
      "messages[0].content",
    );
    expect(refusal(() => checkMessages([m("ok"), m("1234567")], lim)).param).toBe("messages[1].content");
    expect(refusal(() => checkMessages([m("123456"), m([{ text: "123" }, { text: "456" }])], lim))).toMatchObject({
      param: "messages",
      code: "string_above_max_length",
    });
  });

  it("caps max_tokens under the field's own name", () => {
    expect(() => checkMaxTokens(8, "max_tokens", lim)).not.toThrow();
    expect(refusal(() => checkMaxTokens(9, "max_completion_tokens", lim))).toMatchObject({
      param: "max_completion_tokens",
    });
  });
});
