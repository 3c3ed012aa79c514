/**
 * The Qwen3-30B-A3B slice's serving path at reduced size, through workerd: a make-model checkpoint
 * of qwen3-30b-a3b's layout with its real vocabulary (151936 rows, untied head) and its per-layer
 * proportions at 1/16 of the width (hidden 128, 128 experts top-8 of intermediate 48, 32 query / 4
 * KV heads of 8, q/k RMSNorm), one layer, int8 experts, the real Qwen3 tokenizer and ChatML
 * template. Deployed as the full-size slice is: a StageHost, the 151936-row head split over
 * HeadHosts, embeddings read from R2 by the session driver, experts on two ExpertHosts. The
 * streamed chats run 24 tokens with thinking on and off: the full-size slice's longer answers used
 * to be cut after 6.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { makeModel, resolveConfig } from "../../scripts/lib/make-model";
import { TextTokenizer, type ChatMessage } from "../../src/model/tokenizer";
import { ADMIN, postJson, sseData, startWithModels } from "./helpers";

const MODEL = "qwen3-slice";
/** 1/16 of qwen3-30b-a3b's widths: hidden 2048 → 128, expert 768 → 48, head_dim 128 → 8. */
const SET = { hidden_size: 128, moe_intermediate_size: 48, head_dim: 8, intermediate_size: 384 };
/** The bf16 head (151936 × 128 × 2 B = 37.1 MiB) needs 3 shards at this budget. */
const HEAD_MB = 16;
/** Tokens per streamed answer. */
const LONG = 24;
const CHAT: ChatMessage[] = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "What is 2+2?" },
];

let w: LocalWorker;
let tok: TextTokenizer;

beforeAll(async () => {
  const dir = join(mkdtempSync(join(tmpdir(), "edge-moe-qwen3-")), "model");
  makeModel(resolveConfig("qwen3-30b-a3b"), dir, { layers: 1, set: SET });
  const json = (f: string) => JSON.parse(readFileSync(join(dir, f), "utf8")) as unknown;
  tok = TextTokenizer.fromJson(json("tokenizer.json"), json("tokenizer_config.json"));
  w = await startWithModels(
    { [MODEL]: dir },
    { DEFAULT_MODEL: MODEL, PIPELINE_STAGES: "1", HEAD_HOST_BUDGET_MB: String(HEAD_MB), MIN_EXPERT_HOSTS: "2" },
  );
}, 120_000);
afterAll(() => w?.dispose());

const promptIds = (enableThinking?: boolean) =>
  tok.encode(tok.applyChatTemplate(CHAT, { enableThinking }), { addSpecialTokens: false });

describe("Qwen3-30B-A3B layout at reduced width: real tokenizer, template and vocabulary", () => {
  // Well past the 6 tokens after which the full-size slice's answers used to be cut.
  it.each([false, true])(
    `streams a ${LONG}-token chat completion rendered with Qwen3's ChatML template (enable_thinking %s)`,
    async (thinking) => {
      const res = await w.fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          messages: CHAT,
          max_tokens: LONG,
          temperature: 0,
          stream: true,
          stream_options: { include_usage: true },
          chat_template_kwargs: { enable_thinking: thinking },
        }),
      });
      expect(res.status).toBe(200);
      const events = sseData(await res.text());
      expect(events.at(-1)).toBe("[DONE]");
      const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
      expect(chunks.some((c) => "error" in c)).toBe(false);
      expect(chunks[0].model).toBe(MODEL);
      expect(chunks[0].choices[0].delta.role).toBe("assistant");
      const usage = chunks.at(-1).usage;
      // The prompt is Qwen3's own rendering: enable_thinking false closes an empty think block (4 more
      // ids); true renders as the template's default (the model opens its own think block).
      expect(usage.prompt_tokens).toBe(promptIds(thinking).length);
      expect(promptIds(false).length).toBe(promptIds().length + 4);
      expect(promptIds(true)).toEqual(promptIds());
      const finish = chunks.map((c) => c.choices?.[0]?.finish_reason).find((f) => f != null);
      // Seeded random weights: the greedy path meets no EOS within LONG tokens, so the whole answer streams.
      expect(finish).toBe("length");
      expect(usage.completion_tokens).toBe(LONG);
      const streamed = chunks.map((c) => c.choices?.[0]?.delta?.content ?? "").join("");

      // The same prompt ids through /v1/completions give the same greedy ids, and the streamed text
      // is exactly their decode (ids past the tokenizer's 151669 pieces are skipped, not "<unk>").
      const done = await postJson(w, "/v1/completions", {
        prompt: promptIds(thinking),
        max_tokens: LONG,
        temperature: 0,
      });
      expect(done.status).toBe(200);
      const ids: number[] = done.json.choices[0].token_ids;
      expect(ids.length).toBe(usage.completion_tokens);
      expect(ids.every((id) => id >= 0 && id < 151936)).toBe(true);
      const eos = tok.eosTokenIds[0];
      const shown = ids.filter((id) => id !== eos);
      expect(streamed).toBe(tok.decode(shown, { skipSpecialTokens: true }));
      expect(done.json.choices[0].text).toBe(streamed);
    },
    90_000,
  );

  it("serves ids the tokenizer has no piece for, and refuses ids beyond the vocabulary", async () => {
    expect(tok.isDecodable(151700)).toBe(false);
    const ok = await postJson(w, "/v1/completions", { prompt: [151700, 151935, 9707], max_tokens: 2, temperature: 0 });
    expect(ok.status).toBe(200);
    expect(ok.json.usage.prompt_tokens).toBe(3);
    const bad = await postJson(w, "/v1/completions", { prompt: [151936], max_tokens: 2 });
    expect(bad.status).toBe(400);
    expect(bad.json.error.param).toMatch(/^prompt/);
  }, 60_000);

  it("refuses chat_template_kwargs it does not know, naming the field", async () => {
    const wrongType = await postJson(w, "/v1/chat/completions", {
      messages: CHAT,
      max_tokens: 1,
      chat_template_kwargs: { enable_thinking: "no" },
    });
    expect(wrongType.status).toBe(400);
    expect(wrongType.json.error.param).toBe("chat_template_kwargs.enable_thinking");
    const unknown = await postJson(w, "/v1/chat/completions", {
      messages: CHAT,
      max_tokens: 1,
      chat_template_kwargs: { tools: [] },
    });
    expect(unknown.status).toBe(400);
    expect(unknown.json.error.param).toMatch(/^chat_template_kwargs/);
  });

  it("holds the 151936-row head on HeadHosts within their budget, the layer on a StageHost", async () => {
    const res = await w.fetch(`/admin/hosts?model=${MODEL}`, { headers: ADMIN });
    expect(res.status).toBe(200);
    const h = (await res.json()) as {
      hosts: { bytesLoaded: number; budgetBytes: number }[];
      stages: { first: number; end: number; bytesHeld: number; budgetBytes: number }[];
      heads: { rowStart: number; rowEnd: number; format: string; bytesLoaded: number; budgetBytes: number }[];
    };
    expect(h.stages.map((s) => [s.first, s.end])).toEqual([[0, 1]]);
    expect(h.heads.length).toBe(3); // sized as bf16, the format the rows are held in (f32 sizing made 5)
    expect(h.heads[0].rowStart).toBe(0);
    expect(h.heads.at(-1)?.rowEnd).toBe(151936);
    for (const s of h.heads) {
      expect(s.format).toBe("bf16");
      expect(s.rowStart % 4).toBe(0);
      expect(s.bytesLoaded).toBeGreaterThan(0);
      expect(s.bytesLoaded).toBeLessThanOrEqual(s.budgetBytes);
    }
    expect(h.hosts.length).toBe(2);
    for (const x of h.hosts) expect(x.bytesLoaded).toBeLessThanOrEqual(x.budgetBytes);
  });
});
