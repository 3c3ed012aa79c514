/**
 * `POST /admin/prefix-cache/reset` in real workerd: a prompt run twice copies its K/V from the first
 * run's kept donor the second time; after a reset the same prompt copies nothing, the reset having
 * released the kept donors through the KV ledger (the isolate's KV bytes back to 0). Without a model
 * it resets every model the isolate has loaded. Admin only; a bad `model` is a 4xx naming it.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, greedyIds, makeSmallChatModel, modelMetrics, postJson, startWithModels, waitFor } from "./helpers";

let w: LocalWorker;

beforeAll(async () => {
  const dir = makeSmallChatModel();
  w = await startWithModels(
    { chat: dir, other: dir },
    { DEFAULT_MODEL: "chat", MIN_EXPERT_HOSTS: "2", RATE_LIMIT_ENABLED: "false" },
  );
});
afterAll(() => w?.dispose());

const PROMPT = Array.from({ length: 90 }, (_, i) => 1 + ((i * 71) % 900));
const RESET = "/admin/prefix-cache/reset";

/** A greedy completion of `model`: its token ids. */
function complete(model: string, prompt: number[]): Promise<number[]> {
  return greedyIds(w, prompt, 30, model);
}

/** The model's prompt tokens and prompt tokens copied from donors so far (/metrics). */
async function counts(model: string): Promise<{ prompt: number; shared: number }> {
  const m = await modelMetrics(w, model, ["edge_moe_prompt_tokens_total", "edge_moe_prefix_shared_tokens_total"]);
  return { prompt: m.edge_moe_prompt_tokens_total, shared: m.edge_moe_prefix_shared_tokens_total };
}

/** KV-budget bytes the isolate holds for `model` (live sessions and kept donors). */
async function kvUsed(model: string): Promise<number> {
  const res = await w.fetch(`/admin/hosts?model=${model}`, { headers: ADMIN });
  expect(res.status).toBe(200);
  return ((await res.json()) as { worker: { kvBytesUsed: number } }).worker.kvBytesUsed;
}

/**
 * Runs PROMPT on `model` and waits until /metrics counts its prompt tokens; the tokens copied then
 * are counted too (they are recorded during its steps, before its end records the prompt's).
 */
async function runCounted(model: string, want: number[]): Promise<number> {
  const before = await counts(model);
  expect(await complete(model, PROMPT)).toEqual(want);
  const after = await waitFor(
    "the prompt tokens' metric",
    () => counts(model),
    (c) => c.prompt - before.prompt >= PROMPT.length,
  );
  return after.shared - before.shared;
}

describe("POST /admin/prefix-cache/reset", () => {
  it("releases the kept donors: a repeated prompt then copies nothing", async () => {
    const want = await complete("chat", PROMPT);
    // Kept as a donor: the repeat copies every prompt position but the last.
    expect(await runCounted("chat", want)).toBeGreaterThanOrEqual(PROMPT.length - 1);
    expect(await kvUsed("chat")).toBeGreaterThan(0);

    const reset = await postJson(w, RESET, { model: "chat" }, ADMIN);
    expect(reset.status, JSON.stringify(reset.json)).toBe(200);
    expect(reset.json.released).toBeGreaterThanOrEqual(1);
    expect(reset.json.bytes).toBeGreaterThan(0);
    expect(reset.json.models).toEqual([{ model: "chat", released: reset.json.released, bytes: reset.json.bytes }]);
    // Every byte the donors held is back in the ledger (no live session now).
    expect(await kvUsed("chat")).toBe(0);
    expect(await runCounted("chat", want)).toBe(0);

    // A reset with nothing kept releases nothing.
    await postJson(w, RESET, { model: "chat" }, ADMIN);
    const again = await postJson(w, `${RESET}?model=chat`, "", ADMIN);
    expect(again.status).toBe(200);
    expect(again.json).toMatchObject({ released: 0, bytes: 0 });
  });

  it("resets every loaded model when no model is named (an empty body)", async () => {
    await complete("chat", PROMPT);
    await complete("other", PROMPT);
    expect(await kvUsed("other")).toBeGreaterThan(0);
    const reset = await postJson(w, RESET, "", ADMIN);
    expect(reset.status, JSON.stringify(reset.json)).toBe(200);
    const models = reset.json.models as { model: string; released: number; bytes: number }[];
    expect(models.map((m) => m.model).sort()).toEqual(["chat", "other"]);
    for (const m of models) expect(m.released, m.model).toBeGreaterThanOrEqual(1);
    expect(reset.json.bytes).toBe(models.reduce((n, m) => n + m.bytes, 0));
    expect(await kvUsed("chat")).toBe(0);
    expect(await kvUsed("other")).toBe(0);
  });

  it("is admin only, and a bad model is a 4xx naming the field", async () => {
    const noToken = await postJson(w, RESET, {});
    expect(noToken.status).toBe(401);
    const wrong = await postJson(w, RESET, {}, { authorization: "Bearer nope" });
    expect(wrong.status).toBe(401);
    for (const [body, path, status] of [
      [{ model: 7 }, RESET, 400],
      [{ model: "no-such-model" }, RESET, 404],
      ["", `${RESET}?model=no-such-model`, 404],
      [{ model: "../x" }, RESET, 404],
      [{ model: "chat" }, `${RESET}?model=other`, 400],
    ] as const) {
      const r = await postJson(w, path, body, ADMIN);
      expect(r.status, `${path} ${JSON.stringify(body)}`).toBe(status);
      expect(r.json.error.param).toBe("model");
    }
    const extra = await postJson(w, RESET, { models: "chat" }, ADMIN);
    expect(extra.status).toBe(400);
    expect(extra.json.error.param).toBe("models");
  });
});
