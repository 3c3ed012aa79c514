/**
 * Continuous batching when the Worker runs every layer but the output head and the tied
 * embeddings live on HeadHost shards (HEAD_SHARDS, no pipeline stages: granite served locally).
 * Concurrent greedy requests share batched decode steps — one embedding lookup, the layers over
 * every row, one head call a step — and each gets exactly the tokens it gets alone with BATCHING
 * off (the per-request path: its own layers, its own head call).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { makeModel, resolveConfig } from "../../scripts/lib/make-model";
import { greedyIds, modelMetrics, postJson, startWithModels, waitFor } from "./helpers";

const PROMPTS = [
  [5, 200, 17, 88, 300, 41],
  [12, 7],
  [900, 3, 3, 61, 250, 18, 77, 402, 9, 11],
  [33, 150, 600],
];

let on: LocalWorker;
let off: LocalWorker;

beforeAll(async () => {
  // Granite's layout (tied bf16 embeddings, logits_scaling, GQA), small: 2 layers, a ragged vocabulary.
  const dir = join(mkdtempSync(join(tmpdir(), "edge-moe-head-steps-")), "model");
  makeModel(resolveConfig("granite-3.1-1b-a400m"), dir, {
    layers: 2,
    set: { hidden_size: 64, intermediate_size: 32, num_local_experts: 4, num_experts_per_tok: 2, vocab_size: 1003 },
  });
  const vars = { DEFAULT_MODEL: "g", HEAD_SHARDS: "2", MIN_EXPERT_HOSTS: "2" };
  [on, off] = await Promise.all([
    startWithModels({ g: dir }, { ...vars, BATCHING: "on" }),
    startWithModels({ g: dir }, { ...vars, BATCHING: "off" }),
  ]);
});
afterAll(async () => {
  await Promise.all([on?.dispose(), off?.dispose()]);
});

function complete(w: LocalWorker, prompt: number[], maxTokens: number): Promise<number[]> {
  return greedyIds(w, prompt, maxTokens);
}

/** Batched decode steps the Worker ran and the requests they carried (edge_moe_batch_requests). */
async function steps(w: LocalWorker): Promise<{ count: number; sum: number }> {
  const m = await modelMetrics(w, "g", ["edge_moe_batch_requests_count", "edge_moe_batch_requests_sum"]);
  return { count: m.edge_moe_batch_requests_count, sum: m.edge_moe_batch_requests_sum };
}

describe("BATCHING with the head on HeadHosts", () => {
  it("runs concurrent requests in shared steps, each getting the tokens it gets alone", async () => {
    const n = 10;
    const want: number[][] = [];
    for (const p of PROMPTS) want.push(await complete(off, p, n));
    for (const ids of want) expect(ids).toHaveLength(n);
    // The per-request path runs no batched step.
    expect((await steps(off)).count).toBe(0);

    expect(await complete(on, PROMPTS[0], n)).toEqual(want[0]);
    const before = await steps(on);
    const got = await Promise.all([...PROMPTS, ...PROMPTS].map((p) => complete(on, p, n)));
    expect(got).toEqual([...want, ...want]);
    // 8 requests × (prompt + 9 decode rows) went through batched steps, several requests a step.
    const after = await waitFor(
      "the batched steps' metric",
      () => steps(on),
      (v) => v.sum - before.sum >= 8 * n,
    );
    expect(after.sum - before.sum).toBeGreaterThan(after.count - before.count);
  });

  it("reads a prompt longer than a step's prefill budget beside seeded sampled requests, each as alone", async () => {
    // 300 tokens: read in two steps, the first a chunk that wants no logits (no head rows).
    const long = Array.from({ length: 300 }, (_, i) => 1 + ((i * 37) % 1000));
    const sampled = (p: number[]) => ({ prompt: p, max_tokens: 8, temperature: 0.9, top_p: 0.95, seed: 11 });
    const run = async (w: LocalWorker, body: object) => {
      const r = await postJson(w, "/v1/completions", body);
      expect(r.status, JSON.stringify(r.json)).toBe(200);
      return r.json.choices[0].token_ids as number[];
    };
    const bodies = [
      { prompt: long, max_tokens: 8, temperature: 0 },
      sampled(PROMPTS[0]),
      sampled(PROMPTS[2]),
      { prompt: PROMPTS[3], max_tokens: 8, temperature: 0 },
    ];
    const want: number[][] = [];
    for (const b of bodies) want.push(await run(off, b));
    expect(await Promise.all(bodies.map((b) => run(on, b)))).toEqual(want);
  });
});
