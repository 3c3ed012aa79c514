/**
 * int8 experts through the real serving path: a checkpoint converted with
 * `scripts/convert.ts --quant int8` is served by ExpertHosts in workerd (they detect the stored
 * dtype), the placement counts its real, ~4× smaller bytes, and the fixture's greedy tokens and
 * routing survive quantization.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { convertModel } from "../../scripts/lib/convert-lib";
import { ADMIN, FIXTURES, postJson, startWithModels } from "./helpers";

const F32_EXPERT_BYTES = 3 * 64 * 96 * 4;
let w: LocalWorker;
const golden = JSON.parse(readFileSync(join(FIXTURES, "mixtral-tiny", "golden.json"), "utf8")) as {
  prompt_ids: number[];
  greedy_ids: number[];
  logits: number[][];
};

beforeAll(async () => {
  const out = join(mkdtempSync(join(tmpdir(), "edge-moe-int8-")), "model");
  await convertModel(join(FIXTURES, "mixtral-tiny"), out, { log: () => {} });
  w = await startWithModels({ f32: join(FIXTURES, "mixtral-tiny"), q8: out }, { MIN_EXPERT_HOSTS: "2" });
});
afterAll(() => w?.dispose());

describe("int8 experts in workerd", () => {
  it("serves the golden greedy tokens with int8 experts", async () => {
    const r = await postJson(w, "/v1/completions", {
      model: "q8",
      prompt: golden.prompt_ids,
      max_tokens: 8,
      temperature: 0,
    });
    expect(r.status).toBe(200);
    expect(r.json.choices[0].token_ids).toEqual(golden.greedy_ids);
  });

  it("stays close to the f32 logits and routes the same", async () => {
    const [q8, f32] = await Promise.all(
      ["q8", "f32"].map(
        async (model) =>
          (await postJson(w, "/admin/forward", { model, tokens: golden.prompt_ids }, ADMIN)).json as {
            logits: number[][];
            routing: Record<string, { expert_ids: number[][] }>;
          },
      ),
    );
    let max = 0;
    q8.logits.forEach((row, t) => row.forEach((v, j) => (max = Math.max(max, Math.abs(v - f32.logits[t][j])))));
    expect(max).toBeLessThan(0.1); // documented bound for 12/14-bit activations: README, int8 accuracy
    expect(max).toBeGreaterThan(0); // it really is a different (quantized) computation
    for (const layer of Object.keys(f32.routing)) {
      const sets = (r: typeof f32) => r.routing[layer].expert_ids.map((ids) => [...ids].sort().join(","));
      expect(sets(q8)).toEqual(sets(f32));
    }
  });

  it("holds int8 experts in about a quarter of the f32 bytes", async () => {
    await postJson(w, "/v1/completions", { model: "q8", prompt: [1, 2, 3], max_tokens: 1 });
    const hosts = (await (await w.fetch("/admin/hosts?model=q8", { headers: ADMIN })).json()) as {
      hosts: { loaded: unknown[]; bytesLoaded: number }[];
    };
    const perExpert =
      hosts.hosts.reduce((s, h) => s + h.bytesLoaded, 0) / hosts.hosts.reduce((s, h) => s + h.loaded.length, 0);
    expect(perExpert).toBeLessThan(0.3 * F32_EXPERT_BYTES);
    expect(perExpert).toBeGreaterThan(0.24 * F32_EXPERT_BYTES);
  });
});
