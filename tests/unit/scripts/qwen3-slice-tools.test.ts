/**
 * The tools around the Qwen3-30B-A3B slice: the stage budgets a local run of its dense layers needs
 * (scripts/lib/serve-vars.ts), the 48-layer projection from a bench:e2e run of the first layers
 * (scripts/lib/plan-measured.ts), and make-model's choice of the family's real tokenizer.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../../src/model/config";
import { makeModel, resolveConfig } from "../../../scripts/lib/make-model";
import { projectFromMeasured, type E2eResult } from "../../../scripts/lib/plan-measured";
import { localRuntimeVars, serveVarsFor } from "../../../scripts/lib/serve-vars";

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
const published = (name: string) => JSON.parse(readFileSync(resolveConfig(name), "utf8")) as Record<string, unknown>;
const DEFAULTS = { STAGE_HOST_BUDGET_MB: "64", STAGE_KV_BUDGET_MB: "24", DENSE_QUANT: "f32" };

describe("serveVarsFor", () => {
  it("raises the stage budget to one f32 Qwen3-30B-A3B layer and lowers KV to fit the Wasm cap", () => {
    const spec = parseConfig({ ...published("qwen3-30b-a3b"), num_hidden_layers: 4 });
    const v = serveVarsFor(spec, DEFAULTS);
    expect(v.vars).toEqual({ STAGE_HOST_BUDGET_MB: "74", STAGE_KV_BUDGET_MB: "22" });
    expect(v.reasons[0]).toMatch(/73\.0 MiB as f32/);
  });
  it("changes nothing for Qwen3-30B-A3B with the default int8-group stages (about 19 MiB a layer)", () => {
    const spec = parseConfig({ ...published("qwen3-30b-a3b"), num_hidden_layers: 4 });
    expect(serveVarsFor(spec, { ...DEFAULTS, DENSE_QUANT: "int8-group" })).toEqual({ vars: {}, reasons: [] });
  });
  it("changes nothing for a model whose layers fit, and refuses a layer that leaves no room for KV", () => {
    expect(serveVarsFor(parseConfig(published("granite-3.1-1b-a400m")), DEFAULTS)).toEqual({ vars: {}, reasons: [] });
    const wide = parseConfig({ ...published("qwen3-30b-a3b"), hidden_size: 2560, num_hidden_layers: 1 });
    expect(() => serveVarsFor(wide, DEFAULTS)).toThrow(/leaves .* MiB of KV/);
  });
});

describe("localRuntimeVars", () => {
  it("keeps hosts loaded and waits for cold hosts longer than a deployment does, saying why", () => {
    const v = localRuntimeVars();
    expect(v.vars).toEqual({
      HOST_KEEPALIVE_MS: "900000",
      EXPERT_RPC_TIMEOUT_MS: "120000",
      PIPELINE_RPC_TIMEOUT_MS: "600000",
    });
    expect(v.reasons.join(" ")).toMatch(/HOST_KEEPALIVE_MS=900000.*EXPERT_RPC_TIMEOUT_MS=120000/s);
  });
});

describe("projectFromMeasured", () => {
  const spec = parseConfig(published("qwen3-30b-a3b"));
  const run: E2eResult = {
    date: "2026-12-06",
    model: { id: "q-4l", nLayers: 4, moeLayers: 4, dModel: 2048, nExperts: 128, topK: 8, vocabSize: 151936 },
    configurations: {
      distributed: { msPerToken: 400, decodeTokensPerSec: 2.5, measuredExpertRpcsPerToken: 28, expertHosts: 35 },
    },
  };
  it("scales per-layer time and expert RPCs per MoE layer to 48 layers", () => {
    const p = projectFromMeasured(spec, run, "e2e.json", { stages: 16, headShards: 7 });
    expect(p.projectedMsPerToken).toBe(4800);
    expect(p.projectedTokensPerSec).toBeCloseTo(1000 / 4800, 12);
    expect(p.projectedRpcsPerToken).toBe(7 * 48 + 16 + 7);
  });
  it("refuses a run of another model, naming the field", () => {
    const other = { ...run, model: { ...run.model, dModel: 1024 } };
    expect(() => projectFromMeasured(spec, other, "e2e.json", { stages: 1, headShards: 1 })).toThrow(/model\.dModel/);
    const deeper = { ...run, model: { ...run.model, nLayers: 60 } };
    expect(() => projectFromMeasured(spec, deeper, "e2e.json", { stages: 1, headShards: 1 })).toThrow(/nLayers/);
  });
});

describe("make-model tokenizer choice", () => {
  const SET = { hidden_size: 32, moe_intermediate_size: 16, head_dim: 8, num_experts: 4, num_experts_per_tok: 2 };
  it("writes Qwen3's real tokenizer and keeps the published token ids for qwen3_moe", () => {
    const dir = join(mkdtempSync(join(tmpdir(), "edge-moe-mm-tok-")), "m");
    dirs.push(dir);
    makeModel(resolveConfig("qwen3-30b-a3b"), dir, { layers: 1, set: SET });
    const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    expect([cfg.bos_token_id, cfg.eos_token_id, cfg.vocab_size]).toEqual([151643, 151645, 151936]);
    const tokCfg = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
    expect(tokCfg.eos_token).toBe("<|im_end|>");
    expect(tokCfg.chat_template).toMatch(/enable_thinking/);
    expect(JSON.parse(readFileSync(join(dir, "make-model.json"), "utf8")).tokenizer).toBe("qwen3");
  });
  it("keeps Mistral's on request, and refuses a tokenizer whose ids exceed the vocabulary", () => {
    const dir = join(mkdtempSync(join(tmpdir(), "edge-moe-mm-tok-")), "m");
    dirs.push(dir);
    makeModel(resolveConfig("qwen3-30b-a3b"), dir, { layers: 1, set: SET, tokenizer: "mistral" });
    expect(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")).eos_token_id).toBe(2);
    expect(() =>
      makeModel(resolveConfig("qwen3-30b-a3b"), join(dir, "x"), {
        layers: 1,
        set: { ...SET, vocab_size: 40000 },
        tokenizer: "qwen3",
      }),
    ).toThrow(/beyond the model's vocab_size 40000/);
  });
});
