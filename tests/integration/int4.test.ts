/**
 * int4 experts through the real serving path: a checkpoint converted with
 * `scripts/convert.ts --quant int4` (4-bit groups of 32, bf16 scales) is served by ExpertHosts in
 * workerd (they detect the stored format), the hosts hold its real, ~7× smaller bytes, and the
 * logits stay within the bound measured on this fixture.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { convertModel } from "../../scripts/lib/convert-lib";
import { expertQ4gBytes } from "../../src/kernels/q4g-format";
import { ADMIN, FIXTURES, postJson, startWithModels } from "./helpers";

const F32_EXPERT_BYTES = 3 * 64 * 96 * 4;
let w: LocalWorker;
const golden = JSON.parse(readFileSync(join(FIXTURES, "mixtral-tiny", "golden.json"), "utf8")) as {
  prompt_ids: number[];
  greedy_ids: number[];
};

beforeAll(async () => {
  const out = join(mkdtempSync(join(tmpdir(), "edge-moe-int4-")), "model");
  await convertModel(join(FIXTURES, "mixtral-tiny"), out, { quant: "int4", log: () => {} });
  w = await startWithModels({ f32: join(FIXTURES, "mixtral-tiny"), q4: out }, { MIN_EXPERT_HOSTS: "2" });
});
afterAll(() => w?.dispose());

type Forward = { logits: number[][] };
const argmax = (row: number[]) => row.reduce((b, v, i) => (v > row[b] ? i : b), 0);

describe("int4 experts in workerd", () => {
  it("serves greedy completions and stays close to the f32 logits", async () => {
    const body = { model: "q4", prompt: golden.prompt_ids, max_tokens: 8, temperature: 0 };
    const r = await postJson(w, "/v1/completions", body);
    expect(r.status).toBe(200);
    const ids = r.json.choices[0].token_ids as number[];
    expect(ids).toHaveLength(golden.greedy_ids.length);
    // Teacher-forced over prompt + f32's greedy continuation: top-1 agreement and logit error.
    const tokens = [...golden.prompt_ids, ...golden.greedy_ids];
    const [q4, f32] = await Promise.all(
      ["q4", "f32"].map(async (model) => {
        return (await postJson(w, "/admin/forward", { model, tokens }, ADMIN)).json as Forward;
      }),
    );
    let max = 0;
    let agree = 0;
    q4.logits.forEach((row, t) => {
      row.forEach((v, j) => (max = Math.max(max, Math.abs(v - f32.logits[t][j]))));
      if (argmax(row) === argmax(f32.logits[t])) agree++;
    });
    expect(max).toBeGreaterThan(0); // really a different (quantized) computation
    expect(max).toBeLessThan(1.5); // fixtures' logits span about ±10; measured max ≈ 1 (int4-accuracy.test)
    expect(agree / q4.logits.length).toBeGreaterThanOrEqual(0.85);
  });

  it("holds int4 experts in their real bytes (about 1/7 of f32)", async () => {
    await postJson(w, "/v1/completions", { model: "q4", prompt: [1, 2, 3], max_tokens: 1 });
    const res = await w.fetch("/admin/hosts?model=q4", { headers: ADMIN });
    const hosts = (await res.json()) as { hosts: { loaded: unknown[]; bytesLoaded: number }[] };
    const bytes = hosts.hosts.reduce((s, h) => s + h.bytesLoaded, 0);
    const perExpert = bytes / hosts.hosts.reduce((s, h) => s + h.loaded.length, 0);
    expect(perExpert).toBe(expertQ4gBytes(64, 96, 32));
    // 0.5625 B a weight + 4 B a row (the row's power-of-two unit): 15.5% on these 64–96-wide rows.
    expect(perExpert).toBeLessThan(0.16 * F32_EXPERT_BYTES);
  });
});
