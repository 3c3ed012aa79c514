/**
 * Pipeline stages and head shards on the real runtime: every golden fixture with one layer per
 * StageHost and the head on two HeadHost shards (logits ≤ 1e-4, greedy tokens and expert ids
 * exact); KV budgets that refuse new sessions with 429 + Retry-After — never a 500 — and free
 * sessions when requests complete, in the stages and in the Worker's own fast path.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { verifyFixture } from "../../scripts/lib/verify-lib";
import { parseConfig } from "../../src/model/config";
import { kvBytesPerPosition } from "../../src/serving/stage-budgets";
import {
  ADMIN,
  expectMatchesReference,
  FIXTURES,
  makeSmallChatModel,
  postJson,
  sseData,
  startWithModels,
} from "./helpers";

const MIB = 2 ** 20;
const PROMPT = [29, 192, 173, 88, 189, 139, 156, 188, 151, 153];
const MAX_TOKENS = 200;

describe.each(["mixtral-tiny", "mixtral-tiny-bf16", "deepseek-v3-tiny"])(
  "golden fixture %s on stages and head shards",
  (name) => {
    it("matches the reference with one layer per StageHost and the head on 2 HeadHosts", async () => {
      const layers = parseConfig(JSON.parse(readFileSync(join(FIXTURES, name, "config.json"), "utf8"))).nLayers;
      const r = await verifyFixture(join(FIXTURES, name), { hosts: 2, stages: layers, headShards: 2 });
      expect(r.stageHosts.map((s) => [s.first, s.end])).toEqual(Array.from({ length: layers }, (_, l) => [l, l + 1]));
      expect(r.headHosts).toHaveLength(2);
      expectMatchesReference(r);
    });
  },
);

/** Fires `n` completions at once; returns status, Retry-After and body of each. */
async function burst(w: LocalWorker, n: number, maxTokens = MAX_TOKENS) {
  return Promise.all(
    Array.from({ length: n }, async () => {
      const res = await w.fetch("/v1/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "tiny", prompt: PROMPT, max_tokens: maxTokens, temperature: 0 }),
      });
      return {
        status: res.status,
        retryAfter: res.headers.get("retry-after"),
        json: (await res.json()) as { error?: { code: string; param: string | null } },
      };
    }),
  );
}

const spec = parseConfig(JSON.parse(readFileSync(join(FIXTURES, "mixtral-tiny", "config.json"), "utf8")));
const sessionBytes = (first: number, end: number) =>
  kvBytesPerPosition(spec, first, end) * (PROMPT.length + MAX_TOKENS);

describe("StageHost KV budget", () => {
  let w: LocalWorker;
  beforeAll(async () => {
    // Room for two sessions per stage (one layer each).
    const kv = (2.5 * sessionBytes(0, 1)) / MIB;
    w = await startWithModels(
      { tiny: join(FIXTURES, "mixtral-tiny") },
      { PIPELINE_STAGES: "2", STAGE_KV_BUDGET_MB: String(kv), ADMIN_FAULTS_ENABLED: "true" },
    );
  });
  afterAll(() => w?.dispose());

  type StageStats = {
    sessions: number;
    kvBytesUsed: number;
    kvBytesPeak: number;
    kvBudgetBytes: number;
    bytesHeld: number;
    budgetBytes: number;
  };
  const stages = async () =>
    ((await (await w.fetch("/admin/hosts?model=tiny", { headers: ADMIN })).json()) as { stages: StageStats[] }).stages;

  /** Every expert call of the model stalls for `ms` on every instance (the sessions stay open meanwhile). */
  async function stallExperts(ms: number): Promise<void> {
    const placement = (await (await w.fetch("/admin/placement?model=tiny", { headers: ADMIN })).json()) as {
      placement: { instances: unknown[] };
    };
    for (let instance = 0; instance < placement.placement.instances.length; instance++)
      for (let layer = 0; layer < spec.nLayers; layer++)
        for (let expert = 0; expert < spec.nExperts; expert++) {
          const body = { model: "tiny", instance, layer, expert, ms, kind: "stall" };
          expect((await postJson(w, "/admin/fault", body, ADMIN)).status).toBe(200);
        }
  }

  it("answers 429 with Retry-After when the stages are full, completes the rest, and frees every session", async () => {
    // Two requests fill the stages' KV budget and are held open there by stalled expert calls, so
    // the later ones are bound to meet a full budget (without the stall, six concurrent requests on
    // a busy machine may each finish before the next arrives, and none is refused).
    expect((await burst(w, 1))[0].status).toBe(200); // loads the stages and experts first
    await stallExperts(8000);
    const held = burst(w, 2);
    const t0 = Date.now();
    while (Math.max(...(await stages()).map((s) => s.sessions)) < 2) {
      expect(Date.now() - t0, "two sessions admitted during the stall").toBeLessThan(6000);
      await new Promise((r) => setTimeout(r, 50));
    }
    const refused = await burst(w, 4);
    for (const r of refused) {
      expect(r.status).toBe(429);
      expect(Number(r.retryAfter)).toBeGreaterThan(0);
      expect(r.json.error?.code).toBe("kv_cache_full");
    }
    for (const r of await held) expect(r.status).toBe(200);
    const after = await stages();
    expect(after).toHaveLength(2);
    for (const s of after) {
      expect(s.sessions).toBe(0);
      expect(s.kvBytesUsed).toBe(0);
      expect(s.kvBytesPeak).toBeLessThanOrEqual(s.kvBudgetBytes);
      expect(s.bytesHeld).toBeLessThanOrEqual(s.budgetBytes);
    }
    // Room again once the others finished.
    const again = await burst(w, 1);
    expect(again[0].status).toBe(200);
  });

  it("refuses a request longer than a whole stage's KV budget with a 400 naming max_tokens", async () => {
    const [r] = await burst(w, 1, 4000);
    expect(r.status).toBe(400);
    expect(r.json.error?.param).toBe("max_tokens");
  });
});

describe("Worker KV budget (the Worker runs every layer)", () => {
  let w: LocalWorker;
  beforeAll(async () => {
    const kv = (2.5 * sessionBytes(0, spec.nLayers)) / MIB;
    w = await startWithModels({ tiny: join(FIXTURES, "mixtral-tiny") }, { WORKER_KV_BUDGET_MB: String(kv) });
  });
  afterAll(() => w?.dispose());

  it("answers 429 with Retry-After past the budget, never a 500", async () => {
    const results = await burst(w, 6);
    for (const r of results) expect([200, 429]).toContain(r.status);
    expect(results.some((r) => r.status === 429 && Number(r.retryAfter) > 0)).toBe(true);
    expect((await burst(w, 1))[0].status).toBe(200);
  });
});

describe("session driver (the decode loop in the model's region)", () => {
  let staged: LocalWorker;
  let plain: LocalWorker;
  beforeAll(async () => {
    const dir = makeSmallChatModel();
    // f32 stages: the same arithmetic as the Worker's own (f32) layers, so the same samples.
    staged = await startWithModels({ chat: dir }, { PIPELINE_STAGES: "2", HEAD_SHARDS: "2", DENSE_QUANT: "f32" });
    plain = await startWithModels({ chat: dir });
  });
  afterAll(async () => {
    await staged?.dispose();
    await plain?.dispose();
  });

  const body = {
    model: "chat",
    prompt: [1, 415, 2936, 9060, 285, 1142],
    max_tokens: 16,
    temperature: 0.9,
    top_p: 0.9,
    seed: 42,
  };

  it("samples the same tokens as the Worker-only placement (temperature, top_p, seed)", async () => {
    const a = await postJson(staged, "/v1/completions", body);
    const b = await postJson(plain, "/v1/completions", body);
    expect(a.status).toBe(200);
    expect(a.json.choices[0].token_ids.length).toBeGreaterThan(0);
    expect(a.json.choices[0].token_ids).toEqual(b.json.choices[0].token_ids);
  });

  it("streams a chat completion, stops on a stop string, and frees every stage's session", async () => {
    const full = await postJson(staged, "/v1/completions", { ...body, temperature: 0 });
    const text: string = full.json.choices[0].text;
    const stop = text.slice(3, 5);
    const res = await staged.fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "chat",
        messages: [{ role: "user", content: "hello" }],
        max_tokens: 12,
        stream: true,
      }),
    });
    expect(res.status).toBe(200);
    const events = sseData(await res.text());
    expect(events[events.length - 1]).toBe("[DONE]");
    expect(events.some((e) => e.includes('"finish_reason":"length"') || e.includes('"finish_reason":"stop"'))).toBe(
      true,
    );
    if (stop.trim().length > 0) {
      const cut = await postJson(staged, "/v1/completions", { ...body, temperature: 0, stop: [stop] });
      expect(cut.json.choices[0].finish_reason).toBe("stop");
      expect(cut.json.choices[0].text).toBe(text.slice(0, text.indexOf(stop)));
    }
    // A request cut by a stop string cancels its token stream; the driver then frees the session on
    // every stage after the response has gone out, so the count reaches 0 shortly after, not at once.
    const sessions = async () => {
      const hosts = (await (await staged.fetch("/admin/hosts?model=chat", { headers: ADMIN })).json()) as {
        stages: { sessions: number }[];
      };
      return hosts.stages.map((s) => s.sessions);
    };
    let held = await sessions();
    for (let i = 0; i < 50 && held.some((n) => n > 0); i++) {
      await new Promise((r) => setTimeout(r, 100));
      held = await sessions();
    }
    expect(held).toEqual([0, 0]);
  });
});
