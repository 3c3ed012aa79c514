/** Shared set-up for integration tests: the bundled Worker in workerd with seeded models. */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startLocalWorker, ADMIN_TOKEN_FOR_TESTS, ROOT, type LocalWorker } from "../../scripts/lib/local-worker";
import { seedModelDir } from "../../scripts/lib/seed-lib";
import { makeDemoModel } from "../../scripts/lib/demo-model";
import { LOGITS_ATOL, MOE_ATOL, type VerifyReport } from "../../scripts/lib/verify-lib";
import { expect } from "vitest";

export const FIXTURES = join(ROOT, "tests", "fixtures");
export const ADMIN = { authorization: `Bearer ${ADMIN_TOKEN_FOR_TESTS}` };

/** A small model with the demo's architecture and the real 32000-token vocabulary + chat template. */
export function makeSmallChatModel(): string {
  const dir = join(mkdtempSync(join(tmpdir(), "edge-moe-chat-")), "model");
  makeDemoModel(dir, { size: { dModel: 32, nLayers: 2, nHeads: 4, nKvHeads: 2, dFf: 48, nExperts: 4, topK: 2 } });
  return dir;
}

export async function startWithModels(
  models: Record<string, string>,
  vars: Record<string, string> = {},
): Promise<LocalWorker> {
  const w = await startLocalWorker({ vars });
  const bucket = await w.bucket();
  for (const [id, dir] of Object.entries(models))
    await seedModelDir(bucket, dir, id, { skip: (f) => f === "golden.json" });
  return w;
}

export { REPLICATION_VARS } from "../support/replication-vars";

/** Per instance, "layer:expert" of what `placement` assigns it, sorted (the fixtures' rows are model layers). */
export function assignedKeys(placement: {
  instances: readonly unknown[];
  replicas: readonly (readonly (readonly { instance: number }[])[])[];
}): string[][] {
  return placement.instances.map((_, i) =>
    placement.replicas
      .flatMap((row, layer) =>
        row.flatMap((reps, expert) => (reps.some((r) => r.instance === i) ? [`${layer}:${expert}`] : [])),
      )
      .sort(),
  );
}

/** Polls `get` every `ms` until `ok` (at most `tries` times); throws naming `what` with the last value. */
export async function waitFor<T>(
  what: string,
  get: () => Promise<T>,
  ok: (v: T) => boolean,
  tries = 150,
  ms = 200,
): Promise<T> {
  let v = await get();
  for (let i = 0; i < tries && !ok(v); i++) {
    await new Promise((r) => setTimeout(r, ms));
    v = await get();
  }
  if (!ok(v)) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(v).slice(0, 600)}`);
  return v;
}

/** startWithModels, then one 1-token completion of the default model: loaded and warm. */
export async function startWarm(models: Record<string, string>, vars: Record<string, string>): Promise<LocalWorker> {
  const w = await startWithModels(models, vars);
  const res = await w.fetch("/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt: "warm up", max_tokens: 1 }),
  });
  await res.arrayBuffer();
  expect(res.status).toBe(200);
  return w;
}

/**
 * Skewed load on `w` (one token repeated: most positions route to the same few experts per layer)
 * until `stop()`; every request must succeed (`stop()` rethrows the first failure).
 */
export function skewedLoad(w: LocalWorker, what = "the skewed load") {
  const statuses: number[] = [];
  let stopped = false;
  const done = (async () => {
    while (!stopped) {
      const r = await postJson(w, "/v1/completions", { prompt: new Array(24).fill(42), max_tokens: 4, temperature: 0 });
      statuses.push(r.status);
      if (r.status !== 200) throw new Error(`request failed during ${what}: ${JSON.stringify(r.json)}`);
    }
  })();
  return {
    statuses,
    stop: async () => {
      stopped = true;
      await done;
    },
  };
}

export async function postJson(
  w: LocalWorker,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
  // biome-ignore lint/suspicious/noExplicitAny: tests read whatever JSON a route answers, field by field.
): Promise<{ status: number; json: any }> {
  const res = await w.fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, json };
}

/** A greedy completion of token ids (`/v1/completions`, temperature 0): its token ids; 200 required. */
export async function greedyIds(
  w: LocalWorker,
  prompt: number[],
  maxTokens: number,
  model?: string,
): Promise<number[]> {
  const body = { ...(model === undefined ? {} : { model }), prompt, max_tokens: maxTokens, temperature: 0 };
  const r = await postJson(w, "/v1/completions", body);
  expect(r.status, JSON.stringify(r.json)).toBe(200);
  return r.json.choices[0].token_ids;
}

/** The value of each of `names` for `model` in /metrics (0 for a series not recorded yet). */
export async function modelMetrics<N extends string>(
  w: LocalWorker,
  model: string,
  names: readonly N[],
): Promise<Record<N, number>> {
  const res = await w.fetch("/metrics", { headers: ADMIN });
  expect(res.status).toBe(200);
  const lines = (await res.text()).split("\n");
  const value = (name: string) => {
    const line = lines.find((l) => l.startsWith(`${name}{`) && l.includes(`model="${model}"`));
    return line === undefined ? 0 : Number(line.split(" ").at(-1));
  };
  return Object.fromEntries(names.map((n) => [n, value(n)])) as Record<N, number>;
}

/** Parses an SSE body into its `data:` payloads. */
export function sseData(text: string): string[] {
  return text
    .split(/\r?\n\r?\n/)
    .map((block) =>
      block
        .split(/\r?\n/)
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart())
        .join("\n"),
    )
    .filter((d) => d.length > 0);
}

/**
 * A streamed completion or chat completion (`body` without `stream`): 200, no chunk carrying an
 * error, and the text its chunks carry (`text` of a completion, `delta.content` of a chat).
 */
export async function streamedText(w: LocalWorker, path: string, body: Record<string, unknown>): Promise<string> {
  const res = await w.fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
  });
  const raw = await res.text();
  expect(res.status, raw).toBe(200);
  let text = "";
  for (const d of sseData(raw)) {
    if (d === "[DONE]") continue;
    const chunk = JSON.parse(d);
    expect(chunk.error, d).toBeUndefined();
    const choice = chunk.choices[0];
    text += choice?.delta?.content ?? choice?.text ?? "";
  }
  return text;
}

/**
 * What a golden fixture served through workerd must match (scripts/lib/verify-lib.ts): logits
 * within LOGITS_ATOL, greedy tokens (direct and through the API), routing, MoE ids and output exact
 * or within MOE_ATOL.
 */
export function expectMatchesReference(r: VerifyReport): void {
  expect(r.maxLogitDiff).toBeLessThanOrEqual(LOGITS_ATOL);
  expect(r.maxGreedyLogitDiff).toBeLessThanOrEqual(LOGITS_ATOL);
  expect(r.greedyMatch).toBe(true);
  expect(r.apiGreedyMatch).toBe(true);
  for (const layer of r.routingAgreement) expect(layer.agree).toBe(layer.total);
  expect(r.moeIdsMatch).toBe(true);
  expect(r.moeOutputDiff).toBeLessThanOrEqual(MOE_ATOL);
  expect(r.pass).toBe(true);
}

/** The mixtral-tiny fixture's prompt; its golden greedy continuation is GOLDEN_TINY_IDS. */
export const GOLDEN_TINY_PROMPT = [29, 192, 173, 88, 189, 139, 156, 188, 151, 153];
export const GOLDEN_TINY_IDS = [209, 91, 45, 118, 199, 228, 217, 157];

/** Greedy token ids of `maxTokens` tokens of the golden prompt from model `tiny` (the fixture). */
export function greedyTinyIds(w: LocalWorker, maxTokens: number): Promise<number[]> {
  return greedyIds(w, GOLDEN_TINY_PROMPT, maxTokens, "tiny");
}
