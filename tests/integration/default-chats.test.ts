/**
 * Chats without max_tokens (issue 9): a default chat takes DEFAULT_MAX_TOKENS only as far as the
 * deployment's length allows (the KV budget binds below the model's context), an explicit
 * max_tokens over it stays a 400 naming the field, and 16 concurrent default chats against a
 * deliberately small Worker KV budget and admission queue each complete or are refused with
 * 429/503 + Retry-After — no 500 — with every instance's peak memory within its budget (the
 * short form of `npm run bench:load -- --tokens default --no-reference --memory`).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN_TOKEN_FOR_TESTS } from "../../scripts/lib/local-worker";
import { runLoad } from "../../scripts/lib/bench-load";
import { makeSmallChatModel, postJson, startWithModels } from "./helpers";

const MIB = 2 ** 20;
/** KV bytes per position of makeSmallChatModel: 2 layers × 2 KV heads × (8 + 8) dims × 4 bytes. */
const KV_PER_POSITION = 2 * 2 * (8 + 8) * 4;
const CHAT = { model: "chat", messages: [{ role: "user", content: "Tell me a story." }], temperature: 0 };

describe("a chat without max_tokens on a deployment shorter than the default", () => {
  const LIMIT = 150; // positions the Worker's KV budget admits per request (< prompt + 256)
  let w: LocalWorker;
  beforeAll(async () => {
    w = await startWithModels(
      { chat: makeSmallChatModel() },
      { WORKER_KV_BUDGET_MB: String((LIMIT * KV_PER_POSITION) / MIB), RATE_LIMIT_ENABLED: "false" },
    );
  });
  afterAll(() => w?.dispose());

  it("takes the room left under the deployment's length instead of a 400", async () => {
    const r = await postJson(w, "/v1/chat/completions", CHAT);
    expect(r.status).toBe(200);
    const { prompt_tokens: p, completion_tokens: n } = r.json.usage;
    expect(p + n).toBeLessThanOrEqual(LIMIT);
    if (r.json.choices[0].finish_reason === "length") expect(p + n).toBe(LIMIT);
  });

  it("refuses an explicit max_tokens over it with a 400 naming the field", async () => {
    for (const field of ["max_tokens", "max_completion_tokens"]) {
      const r = await postJson(w, "/v1/chat/completions", { ...CHAT, [field]: LIMIT });
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe(field);
      expect(r.json.error.code).toBe("context_length_exceeded");
      expect(r.json.error.message).toMatch(/KV budget/);
    }
  });
});

describe("16 concurrent default chats against a small budget", () => {
  // Room for ~4 default chats (prompt + 256 positions each) at once in the Worker's KV budget, and
  // an admission queue that fills: refusals of both kinds, and completions.
  const SESSIONS = 4;
  let w: LocalWorker;
  beforeAll(async () => {
    w = await startWithModels(
      { chat: makeSmallChatModel() },
      {
        DEFAULT_MODEL: "chat",
        RATE_LIMIT_ENABLED: "false",
        WORKER_KV_BUDGET_MB: String((SESSIONS * 300 * KV_PER_POSITION) / MIB),
        MAX_INFLIGHT_REQUESTS: "8",
        MAX_QUEUED_REQUESTS: "4",
        ADMISSION_QUEUE_TIMEOUT_MS: "3000",
      },
    );
  });
  afterAll(() => w?.dispose());

  it("completes or refuses with Retry-After every request; every instance within budget", {
    timeout: 90_000,
  }, async () => {
    const report = await runLoad({
      url: w.url.href,
      concurrency: [16],
      requests: 16,
      maxTokens: null,
      references: false,
      memory: true,
      levelMs: 45_000,
      graceMs: 15_000,
      phaseMs: 1000,
      adminToken: ADMIN_TOKEN_FOR_TESTS,
    });
    const [level] = report.levels;
    expect(level.requests).toBe(16);
    expect(level.cutByTimeLimit).toBe(0);
    expect(level.unexpected, level.errors.join("\n")).toBe(0);
    expect(level.completed).toBeGreaterThan(0);
    const refused = level.refusals.reduce((n, r) => n + r.count, 0);
    expect(level.completed + refused).toBe(16);
    expect(refused).toBeGreaterThan(0);
    for (const r of level.refusals) {
      expect([429, 503]).toContain(r.status);
      expect(r.retryAfter).toBe(true);
    }
    const memory = level.memory ?? [];
    expect(memory.map((m) => m.kind)).toContain("worker");
    expect(memory.filter((m) => m.kind === "expert").length).toBeGreaterThan(0);
    for (const m of memory) {
      expect(m.withinBudget, m.name).toBe(true);
      expect(m.under128MB, m.name).toBe(true);
      expect(m.wasmMemoryPeakBytes, m.name).toBeGreaterThan(0);
    }
    const worker = memory.find((m) => m.kind === "worker");
    // The KV budget was used to the full by concurrent sessions, and never past it.
    expect(worker?.bytesHeldPeak).toBeGreaterThan(0);
  });
});
