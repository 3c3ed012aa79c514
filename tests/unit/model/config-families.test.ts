/**
 * config.json → ModelSpec for every MoE family: the data the forward pass reads (layer kinds,
 * attention kind, router spec, shared experts, multipliers, RoPE), HF defaults for absent fields,
 * and refusals that name the field.
 */
import { describe, expect, it } from "vitest";
import { parseConfig, SUPPORTED_MODEL_TYPES } from "../../../src/model/config";
import { expectModelError } from "./helpers";
import {
  DEEPSEEK_V2_LITE,
  DEEPSEEK_V3,
  DEEPSEEK_V3_ODD,
  GRANITE_MOE,
  GRANITE_MOE_SHARED,
  OLMOE,
  QWEN2_MOE,
  QWEN3_MOE,
} from "../../support/family-configs";

describe("parseConfig per family", () => {
  it("supports every family", () => {
    expect([...SUPPORTED_MODEL_TYPES].sort()).toEqual([
      "deepseek_v2",
      "deepseek_v3",
      "granitemoe",
      "granitemoeshared",
      "mixtral",
      "olmoe",
      "qwen2_moe",
      "qwen3_moe",
    ]);
  });

  it("qwen2_moe: sigmoid-gated shared expert, q/k/v biases, mlp_only_layers", () => {
    const s = parseConfig(QWEN2_MOE);
    expect(s).toMatchObject({
      arch: "qwen2_moe",
      dModel: 32,
      dFf: 16,
      nExperts: 6,
      topK: 2,
      nHeads: 4,
      nKvHeads: 2,
      headDim: 8,
      rmsEps: 1e-6,
      slidingWindow: null,
      bosTokenId: 95,
      eosTokenIds: [94],
    });
    expect(s.layers).toEqual([{ kind: "moe" }, { kind: "dense", dFf: 48 }, { kind: "moe" }]);
    expect(s.moeLayers).toEqual([0, 2]);
    expect(s.router).toEqual({ kind: "softmax-topk", renormalize: false });
    expect(s.attention).toEqual({
      kind: "gqa",
      nHeads: 4,
      nKvHeads: 2,
      headDim: 8,
      qkNorm: "none",
      qkvBias: true,
      outBias: false,
      scale: 1 / Math.sqrt(8),
    });
    expect(s.sharedExperts).toEqual({ count: 1, dFf: 40, gated: true });
    expect(s.rope).toEqual({ theta: 1e6, interleaved: false, rotDim: 8, yarn: null });
    // decoder_sparse_step 2: layers 1, 3, … are MoE ((L + 1) % 2 = 0).
    expect(parseConfig({ ...QWEN2_MOE, decoder_sparse_step: 2, mlp_only_layers: [] }).moeLayers).toEqual([1]);
    expect(parseConfig({ ...QWEN2_MOE, qkv_bias: false }).attention).toMatchObject({ qkvBias: false });
    expect(parseConfig({ ...QWEN2_MOE, use_sliding_window: true, sliding_window: 512 }).slidingWindow).toBe(512);
    expect(parseConfig({ ...QWEN2_MOE, shared_expert_intermediate_size: 0 }).sharedExperts).toBeNull();
  });

  it("qwen3_moe: per-head q/k norm, explicit head_dim, renormalised top-k", () => {
    const s = parseConfig(QWEN3_MOE);
    expect(s).toMatchObject({
      arch: "qwen3_moe",
      headDim: 12,
      dFf: 16,
      nExperts: 8,
      topK: 2,
      sharedExperts: null,
      moeLayers: [0, 1],
    });
    expect(s.attention).toEqual({
      kind: "gqa",
      nHeads: 4,
      nKvHeads: 2,
      headDim: 12,
      qkNorm: "per-head",
      qkvBias: false,
      outBias: false,
      scale: 1 / Math.sqrt(12),
    });
    expect(s.router).toEqual({ kind: "softmax-topk", renormalize: true });
    expect(parseConfig({ ...QWEN3_MOE, attention_bias: true }).attention).toMatchObject({
      qkvBias: true,
      outBias: true,
    });
  });

  it("olmoe: full-projection q/k norm, experts of intermediate_size", () => {
    const s = parseConfig(OLMOE);
    expect(s).toMatchObject({
      arch: "olmoe",
      dFf: 16,
      nExperts: 8,
      topK: 2,
      rmsEps: 1e-5,
      bosTokenId: null,
      sharedExperts: null,
    });
    expect(s.attention).toMatchObject({ kind: "gqa", qkNorm: "full", qkvBias: false, outBias: false });
    expect(s.router).toEqual({ kind: "softmax-topk", renormalize: false });
  });

  it("granitemoe: multipliers, attention_multiplier as the softmax scale, tied embeddings", () => {
    const s = parseConfig(GRANITE_MOE);
    expect(s).toMatchObject({
      arch: "granitemoe",
      tieEmbeddings: true,
      nExperts: 6,
      topK: 2,
      dFf: 16,
      sharedExperts: null,
    });
    expect(s.multipliers).toEqual({ embedding: 12, residual: 0.22, logitsScale: 6 });
    expect(s.attention).toMatchObject({ kind: "gqa", scale: 0.015625 });
    expect(s.router).toEqual({ kind: "softmax-topk", renormalize: true });
    // Absent multipliers default to 1 (GraniteMoeConfig).
    const plain = { ...GRANITE_MOE };
    for (const f of ["embedding_multiplier", "attention_multiplier", "residual_multiplier", "logits_scaling"])
      delete plain[f];
    expect(parseConfig(plain).multipliers).toEqual({ embedding: 1, residual: 1, logitsScale: 1 });
    expect(parseConfig(plain).attention.scale).toBe(1);
  });

  it("granitemoeshared: ungated shared MLP", () => {
    expect(parseConfig(GRANITE_MOE_SHARED).sharedExperts).toEqual({ count: 1, dFf: 24, gated: false });
    expect(parseConfig({ ...GRANITE_MOE_SHARED, shared_intermediate_size: 0 }).sharedExperts).toBeNull();
  });

  it("deepseek_v3 (the golden fixture): MLA, dense first layer, sigmoid group-limited router with bias", () => {
    const s = parseConfig(DEEPSEEK_V3);
    expect(s).toMatchObject({
      arch: "deepseek_v3",
      dModel: 64,
      dFf: 32,
      nExperts: 16,
      topK: 4,
      nLayers: 3,
      nHeads: 4,
      nKvHeads: 4,
      headDim: 24,
      rmsEps: 1e-6,
    });
    expect(s.layers).toEqual([{ kind: "dense", dFf: 128 }, { kind: "moe" }, { kind: "moe" }]);
    expect(s.moeLayers).toEqual([1, 2]);
    expect(s.attention).toEqual({
      kind: "mla",
      nHeads: 4,
      qLoraRank: 48,
      kvLoraRank: 32,
      qkNopeHeadDim: 16,
      qkRopeHeadDim: 8,
      vHeadDim: 12,
      scale: 1 / Math.sqrt(24),
    });
    expect(s.router).toEqual({
      kind: "group-limited-topk",
      scoring: "sigmoid",
      selectionBias: true,
      nGroup: 4,
      topkGroup: 2,
      groupScore: "top2-sum",
      renormalize: true,
      routedScale: 2.5,
    });
    expect(s.sharedExperts).toEqual({ count: 1, dFf: 32, gated: false });
    expect(s.rope).toEqual({ theta: 10000, interleaved: true, rotDim: 8, yarn: null });
    expect(s.multipliers).toEqual({ embedding: 1, residual: 1, logitsScale: 1 });
  });

  it("deepseek_v3 variants: q_lora_rank null, two shared experts, other groups and top-k", () => {
    const s = parseConfig(DEEPSEEK_V3_ODD);
    expect(s.attention).toMatchObject({
      kind: "mla",
      qLoraRank: null,
      kvLoraRank: 20,
      qkNopeHeadDim: 10,
      qkRopeHeadDim: 6,
      vHeadDim: 14,
    });
    expect(s.sharedExperts).toEqual({ count: 2, dFf: 48, gated: false });
    expect(s.router).toMatchObject({ nGroup: 3, topkGroup: 2, routedScale: 1.5 });
    expect(s.topK).toBe(3);
    expect(parseConfig({ ...DEEPSEEK_V3, first_k_dense_replace: 0 }).moeLayers).toEqual([0, 1, 2]);
    expect(parseConfig({ ...DEEPSEEK_V3, moe_layer_freq: 2, first_k_dense_replace: 0 }).moeLayers).toEqual([0, 2]);
    expect(parseConfig({ ...DEEPSEEK_V3, n_shared_experts: null }).sharedExperts).toEqual({
      count: 1,
      dFf: 32,
      gated: false,
    }); // default 1
    expect(parseConfig({ ...DEEPSEEK_V3, n_shared_experts: 0 }).sharedExperts).toBeNull();
    expect(parseConfig({ ...DEEPSEEK_V3, rope_interleave: false }).rope.interleaved).toBe(false);
    // rope_scaling null (as written) is plain RoPE.
    expect(parseConfig({ ...DEEPSEEK_V3, rope_scaling: null }).rope.theta).toBe(10000);
  });

  it("deepseek_v2: softmax routing; greedy or group-limited by max; scale only without renormalisation", () => {
    const s = parseConfig(DEEPSEEK_V2_LITE);
    expect(s.router).toEqual({
      kind: "group-limited-topk",
      scoring: "softmax",
      selectionBias: false,
      nGroup: 1,
      topkGroup: 1,
      groupScore: "max",
      renormalize: false,
      routedScale: 1,
    });
    expect(s.attention).toMatchObject({ kind: "mla", qLoraRank: null });
    expect(s.sharedExperts).toEqual({ count: 2, dFf: 32, gated: false });
    const grouped = parseConfig({
      ...DEEPSEEK_V2_LITE,
      topk_method: "group_limited_greedy",
      n_group: 4,
      topk_group: 2,
      routed_scaling_factor: 16,
    });
    expect(grouped.router).toMatchObject({
      nGroup: 4,
      topkGroup: 2,
      groupScore: "max",
      renormalize: false,
      routedScale: 16,
    });
    // DeepSeek-V2's modeling code: norm_topk_prob renormalises INSTEAD of scaling.
    expect(parseConfig({ ...DEEPSEEK_V2_LITE, norm_topk_prob: true, routed_scaling_factor: 16 }).router).toMatchObject({
      renormalize: true,
      routedScale: 1,
    });
  });

  describe("rejects", () => {
    const cases: [string, Record<string, unknown>, string[]][] = [
      [
        "a non-YaRN rope_scaling",
        { ...DEEPSEEK_V3, rope_scaling: { type: "linear", factor: 4 } },
        ["rope_scaling.type", "linear", "not supported"],
      ],
      [
        "an fp8 checkpoint",
        { ...DEEPSEEK_V3, quantization_config: { quant_method: "fp8" } },
        ["quantization_config", "F32, BF16 or F16"],
      ],
      ["an unknown topk_method", { ...DEEPSEEK_V3, topk_method: "greedy" }, ["topk_method", '"greedy"', "noaux_tc"]],
      [
        "softmax scoring for noaux_tc",
        { ...DEEPSEEK_V3, scoring_func: "softmax" },
        ["scoring_func", '"softmax"', "sigmoid"],
      ],
      [
        "n_group not dividing the experts",
        { ...DEEPSEEK_V3, n_group: 3 },
        ["n_group", "must divide n_routed_experts (16)", "got 3"],
      ],
      ["topk_group > n_group", { ...DEEPSEEK_V3, topk_group: 5 }, ["topk_group", "≤ n_group (4)", "got 5"]],
      [
        "top-k beyond the kept groups",
        { ...DEEPSEEK_V3, topk_group: 1, num_experts_per_tok: 5 },
        ["num_experts_per_tok", "1 × 4", "got 5"],
      ],
      ["MLA with attention_bias", { ...DEEPSEEK_V3, attention_bias: true }, ["attention_bias"]],
      ["odd qk_rope_head_dim", { ...DEEPSEEK_V3, qk_rope_head_dim: 7 }, ["qk_rope_head_dim", "even"]],
      ["OLMoE clip_qkv", { ...OLMOE, clip_qkv: 8 }, ["clip_qkv"]],
      ["a non-silu activation", { ...QWEN3_MOE, hidden_act: "gelu" }, ["hidden_act", "gelu"]],
      ["mlp_only_layers out of range", { ...QWEN2_MOE, mlp_only_layers: [3] }, ["mlp_only_layers", "[0, 3)"]],
      ["Granite without experts", { ...GRANITE_MOE, num_local_experts: 0 }, ["num_local_experts"]],
      [
        "Qwen top-k above the expert count",
        { ...QWEN3_MOE, num_experts_per_tok: 9 },
        ["num_experts_per_tok", "≤ num_experts (8)"],
      ],
    ];
    for (const [what, cfg, parts] of cases) {
      it(what, async () => {
        await expectModelError(() => parseConfig(cfg), ["config.json", ...parts]);
      });
    }
  });
});
