/**
 * A session ended while a StageHost `run` is still on it (the Worker's generation ends — a client
 * abort — while the stage's chunk waits on its experts) keeps its KV cache until that run ends, and
 * the run's K/V writes land in that cache: freeing it under the run sent them to address 0 of the
 * stage's Wasm memory, where they corrupted the weights every later session reads.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, makeSmallChatModel, postJson, startWithModels } from "./helpers";

const EXPERTS = 4; // makeSmallChatModel
const STALL_MS = 4000;
const SESSION = "ended-mid-run";

describe("a StageHost session ended while a run is on it", () => {
  let w: LocalWorker;
  let dModel = 0;
  beforeAll(async () => {
    const dir = makeSmallChatModel();
    dModel = (JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as { hidden_size: number }).hidden_size;
    w = await startWithModels(
      { chat: dir },
      { PIPELINE_STAGES: "2", ADMIN_FAULTS_ENABLED: "true", EXPERT_RPC_TIMEOUT_MS: "120000", DENSE_QUANT: "f32" },
    );
  });
  afterAll(() => w?.dispose());

  async function stall(ms: number): Promise<void> {
    for (let layer = 0; layer < 2; layer++) {
      for (let expert = 0; expert < EXPERTS; expert++) {
        const r = await postJson(
          w,
          "/admin/fault",
          { model: "chat", instance: 0, layer, expert, ms, kind: "stall" },
          ADMIN,
        );
        expect(r.status).toBe(200);
      }
    }
  }

  it("is freed when the run ends, not under it, and later sessions are unharmed", { timeout: 120_000 }, async () => {
    const body = { model: "chat", prompt: [1, 415, 2936], max_tokens: 8, temperature: 0 };
    const before = await postJson(w, "/v1/completions", body);
    expect(before.status, JSON.stringify(before.json)).toBe(200);

    await stall(STALL_MS);
    const env = (await w.worker.getEnv()) as unknown as Env;
    const hop = { name: "chat/s0-1", first: 0, end: 1 };
    const stub = env.STAGE_HOST.getByName(hop.name);
    const x = Float32Array.from({ length: 3 * dModel }, (_, i) => Math.sin(i * 0.37));
    const run = stub.run({
      model: "chat",
      session: SESSION,
      maxLen: 16,
      start: 0,
      x,
      nOut: 1,
      route: [hop],
      trace: false,
    });
    await new Promise((r) => setTimeout(r, 1000)); // the run now waits on its stalled experts
    await stub.end(SESSION);
    const during = await stub.stats();
    expect(during.sessions).toBe(1);
    expect(during.kvBytesUsed).toBeGreaterThan(0);

    const result = await run;
    expect(result.ok).toBe(true);
    const after = await stub.stats();
    expect(after.sessions).toBe(0);
    expect(after.kvBytesUsed).toBe(0);

    const again = await postJson(w, "/v1/completions", body);
    expect(again.status, JSON.stringify(again.json)).toBe(200);
    expect(again.json.choices[0].token_ids).toEqual(before.json.choices[0].token_ids);
  });
});
