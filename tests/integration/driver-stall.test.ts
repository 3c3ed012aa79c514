/**
 * The session driver (a StageHost holding no layers) keeps streaming while the pipeline behind it is
 * slow — what a cold first request on a big model is (stages and ExpertHosts still loading): every
 * ExpertHost call of the first tokens is stalled for longer than an idle Durable Object lives, and
 * the streamed completion must still arrive whole, not cut with "ReadableStream received over RPC
 * disconnected prematurely".
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, makeSmallChatModel, sseData, startWithModels } from "./helpers";

const STALL_MS = 25_000;
const EXPERTS = 4; // makeSmallChatModel
const MAX_TOKENS = 6;

describe("session driver under a slow pipeline", () => {
  let w: LocalWorker;
  beforeAll(async () => {
    w = await startWithModels(
      { chat: makeSmallChatModel() },
      { PIPELINE_STAGES: "2", ADMIN_FAULTS_ENABLED: "true", EXPERT_RPC_TIMEOUT_MS: "120000", DENSE_QUANT: "f32" },
    );
  });
  afterAll(() => w?.dispose());

  it("streams every token of a completion whose expert calls stall for 25 s", { timeout: 180_000 }, async () => {
    const headers = { ...ADMIN, "content-type": "application/json" };
    for (let layer = 0; layer < 2; layer++) {
      for (let expert = 0; expert < EXPERTS; expert++) {
        const res = await w.fetch("/admin/fault", {
          method: "POST",
          headers,
          body: JSON.stringify({ model: "chat", instance: 0, layer, expert, ms: STALL_MS, kind: "stall" }),
        });
        expect(res.status).toBe(200);
      }
    }
    const t0 = Date.now();
    const res = await w.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "chat", prompt: [1, 415, 2936], max_tokens: MAX_TOKENS, stream: true, temperature: 0 }),
    });
    expect(res.status).toBe(200);
    const events = sseData(await res.text());
    expect(Date.now() - t0).toBeGreaterThanOrEqual(STALL_MS - 1000);
    expect(events[events.length - 1]).toBe("[DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as { choices?: { finish_reason: string | null }[] });
    expect(chunks.some((c) => "error" in c)).toBe(false);
    expect(["length", "stop"]).toContain(chunks.at(-1)?.choices?.[0]?.finish_reason);
  });
});
