/**
 * Weights pinned to one upload (issue 12): a model re-uploaded with other weights while it is
 * served is picked up whole. Every answer during the re-upload is bit-identical to the old
 * upload's or to the new one's, or a clean retryable 503 `model_changed` — never a mix — and every
 * answer after it is the new upload's. Covers the Worker, the ExpertHosts and, with forced
 * pipeline stages and head shards, the StageHosts, the session driver and the HeadHosts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { makeDemoModel } from "../../scripts/lib/demo-model";
import { seedModelDir } from "../../scripts/lib/seed-lib";
import { ADMIN, postJson, startWithModels } from "./helpers";

const SIZE = { dModel: 32, nLayers: 2, nHeads: 4, nKvHeads: 2, dFf: 48, nExperts: 4, topK: 2 };
const PROMPT = [5, 17, 99, 3, 250, 7];
const root = mkdtempSync(join(tmpdir(), "edge-moe-reupload-"));
const dirA = join(root, "a");
const dirB = join(root, "b");

let plain: LocalWorker;
let piped: LocalWorker;

beforeAll(async () => {
  makeDemoModel(dirA, { size: SIZE, seed: 11 });
  makeDemoModel(dirB, { size: SIZE, seed: 12 });
  const models = { m: dirA, "ref-a": dirA, "ref-b": dirB };
  const common = { MIN_EXPERT_HOSTS: "2", RATE_LIMIT_ENABLED: "false", DEFAULT_MODEL: "m" };
  [plain, piped] = await Promise.all([
    startWithModels(models, common),
    startWithModels(models, { ...common, PIPELINE_STAGES: "2", HEAD_SHARDS: "2" }),
  ]);
});
afterAll(async () => {
  await Promise.all([plain?.dispose(), piped?.dispose()]);
});

interface Answer {
  status: number;
  key: string;
  retryAfter: string | null;
  code: string | null;
}

/** Logits of the prompt's last position and of 3 greedy steps (bit-exact, as JSON numbers). */
async function forward(w: LocalWorker, model: string): Promise<Answer> {
  const res = await w.fetch("/admin/forward", {
    method: "POST",
    headers: { "content-type": "application/json", ...ADMIN },
    body: JSON.stringify({ model, tokens: PROMPT, positions: "last", greedy: 3 }),
  });
  const json = (await res.json()) as { logits?: number[][]; greedy_logits?: number[][]; error?: { code: string } };
  const key = res.status === 200 ? JSON.stringify([json.logits, json.greedy_logits]) : "";
  return { status: res.status, key, retryAfter: res.headers.get("retry-after"), code: json.error?.code ?? null };
}

async function sampled(w: LocalWorker, model: string): Promise<{ status: number; ids: string; code: string | null }> {
  const r = await postJson(w, "/v1/completions", { model, prompt: PROMPT, max_tokens: 6, temperature: 1, seed: 3 });
  return { status: r.status, ids: JSON.stringify(r.json.choices?.[0]?.token_ids ?? null), code: r.json.error?.code };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function reuploadWhileServing(w: LocalWorker): Promise<void> {
  const a = await forward(w, "ref-a");
  const b = await forward(w, "ref-b");
  expect(a.status).toBe(200);
  expect(b.status).toBe(200);
  expect(a.key).not.toBe(b.key);
  const sa = await sampled(w, "ref-a");
  const sb = await sampled(w, "ref-b");
  expect((await forward(w, "m")).key).toBe(a.key);
  expect((await sampled(w, "m")).ids).toBe(sa.ids);

  // Clients keep asking while the new weights go up.
  let stop = false;
  const answers: Answer[] = [];
  const load = Promise.all(
    [0, 1].map(async () => {
      while (!stop) answers.push(await forward(w, "m"));
    }),
  );
  await sleep(200);
  const report = await seedModelDir(await w.bucket(), dirB, "m");
  // Same config and tokenizer: only the weights changed (config.json is skipped as unchanged).
  expect(report.files.filter((f) => f.action === "uploaded").every((f) => f.file.endsWith(".safetensors"))).toBe(true);
  await sleep(300);
  stop = true;
  await load;
  expect(answers.length).toBeGreaterThan(0);
  for (const r of answers) {
    if (r.status === 200) expect([a.key, b.key]).toContain(r.key);
    else {
      expect(r.status, JSON.stringify(r)).toBe(503);
      expect(r.code).toBe("model_changed");
      expect(r.retryAfter).not.toBeNull();
    }
  }

  // A second later (the isolate's check interval) every answer is the new upload's, whole.
  await sleep(1200);
  let first = await forward(w, "m");
  for (let i = 0; i < 5 && first.status === 503; i++) {
    await sleep(500);
    first = await forward(w, "m");
  }
  expect(first.key).toBe(b.key);
  for (let i = 0; i < 3; i++) expect((await forward(w, "m")).key).toBe(b.key);
  expect((await sampled(w, "m")).ids).toBe(sb.ids);
}

describe("a model re-uploaded while served", () => {
  it("is picked up whole by the Worker and the ExpertHosts, never mixed", async () => {
    await reuploadWhileServing(plain);
  });

  it("is picked up whole through pipeline stages, the session driver and head shards", async () => {
    await reuploadWhileServing(piped);
  });
});
