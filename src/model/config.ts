/**
 * @module Hugging Face `config.json` → `ModelSpec`, the one description of a model's shape that the
 * rest of the code reads. Every field we use is validated here, at the boundary, and every error
 * names the field; configs that need features we do not implement are refused rather than served
 * wrongly. One parser per `model_type`, chosen from a table; each turns its family's field names
 * and defaults (those of the transformers config class) into the same data: layer kinds, attention
 * kind, router spec, shared experts, multipliers and RoPE. The forward pass reads only that data.
 *
 * Longer than the project's ~400-line guideline on purpose: the family parsers read best side by
 * side (a field's name, default and check per family in one place; a new family is one parser).
 */
import type { RouterSpec } from "../gating/router";
import { ModelFormatError } from "./errors";
import { yarnAttentionScale, type YarnSpec } from "./rope";
import { parseYarnScaling } from "./rope-scaling";

export type Architecture =
  | "mixtral"
  | "qwen2_moe"
  | "qwen3_moe"
  | "olmoe"
  | "granitemoe"
  | "granitemoeshared"
  | "deepseek_v2"
  | "deepseek_v3";

/** @deprecated name kept for existing imports; the router spec type lives in src/gating/router.ts. */

/** What the feed-forward half of a layer is: routed experts, or one dense SwiGLU MLP of size dFf. */
export type LayerKind = { readonly kind: "moe" } | { readonly kind: "dense"; readonly dFf: number };

/**
 * Grouped-query attention over q/k/v projections (MHA when nKvHeads = nHeads).
 * qkNorm: "per-head" = RMSNorm over each head's headDim values before RoPE (Qwen3-MoE);
 * "full" = RMSNorm over the whole q / k projection output before RoPE (OLMoE).
 */
export interface GqaAttentionSpec {
  readonly kind: "gqa";
  readonly nHeads: number;
  readonly nKvHeads: number;
  readonly headDim: number;
  readonly qkNorm: "none" | "per-head" | "full";
  /** q_proj, k_proj, v_proj carry a bias (Qwen2-MoE; `attention_bias` elsewhere). */
  readonly qkvBias: boolean;
  /** o_proj carries a bias (`attention_bias` in Qwen3-MoE, OLMoE, Granite). */
  readonly outBias: boolean;
  /** Softmax scale: headDim^-0.5, or Granite's attention_multiplier. */
  readonly scale: number;
}

/**
 * Multi-head latent attention (DeepSeek-V2/V3, HF DeepseekV3Attention semantics): q from q_proj
 * (qLoraRank null) or q_b_proj(rmsnorm(q_a_proj x)); keys and values from the compressed
 * kv_a_proj_with_mqa output. Per head, q and k are [nope | rope] and v is vHeadDim.
 */
export interface MlaAttentionSpec {
  readonly kind: "mla";
  readonly nHeads: number;
  readonly qLoraRank: number | null;
  readonly kvLoraRank: number;
  readonly qkNopeHeadDim: number;
  readonly qkRopeHeadDim: number;
  readonly vHeadDim: number;
  /** (qkNope + qkRope)^-0.5, times get_mscale(factor, mscale_all_dim)² under YaRN (src/model/rope.ts). */
  readonly scale: number;
}

export type AttentionSpec = GqaAttentionSpec | MlaAttentionSpec;

/**
 * Experts every token goes through, beside the routed ones, run in the Worker. `count` experts of
 * one size are stored fused as one MLP of `dFf` = count × size (DeepSeek `n_shared_experts`).
 * gated: output × sigmoid(x · shared_expert_gate) (Qwen2-MoE); else added as is.
 */
export interface SharedExpertSpec {
  readonly count: number;
  readonly dFf: number;
  readonly gated: boolean;
}

/** Granite's scalar multipliers (all 1 elsewhere): x₀ = embed · embedding; x += residual · block(x);
 * logits = lm_head(x) / logitsScale. */
export interface Multipliers {
  readonly embedding: number;
  readonly residual: number;
  readonly logitsScale: number;
}

/** RoPE over rotDim values of each head. interleaved: pairs (2i, 2i+1) (DeepSeek's stored layout);
 * else pairs (i, i + rotDim/2) (HF rotate_half). yarn: YaRN scaling (DeepSeek families only; null =
 * plain RoPE); `ropeFrequencies(rope)` in src/model/rope.ts turns it into inv_freq and cos/sin scale. */
export interface RopeSpec {
  readonly theta: number;
  readonly interleaved: boolean;
  readonly rotDim: number;
  readonly yarn: YarnSpec | null;
}

export interface ModelSpec {
  readonly arch: Architecture;
  /** `model_type` as written in config.json. */
  readonly modelType: string;
  readonly vocabSize: number;
  readonly dModel: number;
  readonly nLayers: number;
  readonly nHeads: number;
  /** KV heads as cached: GQA num_key_value_heads; MLA (naive cache) nHeads. */
  readonly nKvHeads: number;
  /** Query/key head size: GQA head_dim (or hidden_size / heads); MLA qk_nope + qk_rope. */
  readonly headDim: number;
  /**
   * Routed expert intermediate size (Mixtral/OLMoE/Granite `intermediate_size`, Qwen/DeepSeek
   * `moe_intermediate_size`).
   */
  readonly dFf: number;
  /** Routed experts per MoE layer. */
  readonly nExperts: number;
  readonly topK: number;
  readonly rmsEps: number;
  readonly maxPositions: number;
  /** `tie_word_embeddings`: the output head reuses the embedding matrix (no lm_head tensor). */
  readonly tieEmbeddings: boolean;
  readonly bosTokenId: number | null;
  /** `eos_token_id` as a list (the config may hold one id or a list); empty when null. */
  readonly eosTokenIds: readonly number[];
  readonly router: RouterSpec;
  readonly torchDtype: string | null;
  /**
   * `sliding_window` (null = full attention). We implement full causal attention only, which equals
   * sliding-window attention while the sequence is ≤ slidingWindow tokens: refuse longer ones
   * (see `maxServableTokens`).
   */
  readonly slidingWindow: number | null;
  /** [nLayers] what each layer's feed-forward is. */
  readonly layers: readonly LayerKind[];
  /** Indices of the MoE layers (ascending): the only layers with routed experts to place. */
  readonly moeLayers: readonly number[];
  readonly attention: AttentionSpec;
  /** null when the family has none. */
  readonly sharedExperts: SharedExpertSpec | null;
  readonly multipliers: Multipliers;
  readonly rope: RopeSpec;
}

/** Longest sequence (prompt + generated) this engine computes exactly for the model. */
export function maxServableTokens(spec: ModelSpec): number {
  return spec.slidingWindow === null ? spec.maxPositions : Math.min(spec.maxPositions, spec.slidingWindow);
}

type ConfigObject = Record<string, unknown>;
type ConfigParser = (cfg: ConfigObject, file: string) => ModelSpec;

/** One parser per supported `model_type`. */
const PARSERS: Record<Architecture, ConfigParser> = {
  mixtral: parseMixtral,
  qwen2_moe: (cfg, file) => parseQwenMoe(cfg, file, "qwen2_moe"),
  qwen3_moe: (cfg, file) => parseQwenMoe(cfg, file, "qwen3_moe"),
  olmoe: parseOlmoe,
  granitemoe: (cfg, file) => parseGraniteMoe(cfg, file, "granitemoe"),
  granitemoeshared: (cfg, file) => parseGraniteMoe(cfg, file, "granitemoeshared"),
  deepseek_v2: (cfg, file) => parseDeepseek(cfg, file, "deepseek_v2"),
  deepseek_v3: (cfg, file) => parseDeepseek(cfg, file, "deepseek_v3"),
};

export const SUPPORTED_MODEL_TYPES: readonly string[] = Object.keys(PARSERS);

export function parseConfig(raw: unknown, file = "config.json"): ModelSpec {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ModelFormatError(`${file}: expected a JSON object, got ${describe(raw)}`, file);
  }
  const cfg = raw as ConfigObject;
  const modelType = cfg.model_type;
  if (typeof modelType !== "string") {
    throw fieldError(
      file,
      "model_type",
      `must be a string naming the architecture (one of ${SUPPORTED_MODEL_TYPES.join(", ")}), ` +
        `got ${describe(modelType)}`,
    );
  }
  const parser = Object.hasOwn(PARSERS, modelType) ? PARSERS[modelType as Architecture] : undefined;
  if (!parser) {
    throw fieldError(
      file,
      "model_type",
      `"${modelType}" is not supported (supported: ${SUPPORTED_MODEL_TYPES.join(", ")})`,
    );
  }
  return parser(cfg, file);
}

/** Per-family defaults of the fields every family shares (the transformers config class defaults). */
interface CommonDefaults {
  ropeTheta: number;
  rmsEps: number;
  maxPositions: number;
}

/** The Llama-like fields: sizes, heads, norms, RoPE, token ids. Refuses what no family here implements. */
function common(f: Fields, cfg: ConfigObject, file: string, d: CommonDefaults, acceptsYarn = false) {
  const hiddenAct = f.optionalString("hidden_act") ?? "silu";
  if (hiddenAct !== "silu") {
    throw fieldError(file, "hidden_act", `"${hiddenAct}" is not supported (SwiGLU experts need silu)`);
  }
  if (!acceptsYarn && cfg.rope_scaling !== undefined && cfg.rope_scaling !== null) {
    throw fieldError(
      file,
      "rope_scaling",
      `is not supported yet (got ${JSON.stringify(cfg.rope_scaling)}); only plain RoPE with rope_theta for this ` +
        "family (YaRN is implemented for deepseek_v2 / deepseek_v3)",
    );
  }
  if (cfg.quantization_config !== undefined && cfg.quantization_config !== null) {
    throw fieldError(
      file,
      "quantization_config",
      "is not supported: convert the checkpoint to F32, BF16 or F16 first (e.g. DeepSeek-V3's fp8_cast_bf16.py)",
    );
  }
  const dModel = f.positiveInt("hidden_size");
  const nHeads = f.positiveInt("num_attention_heads");
  return {
    vocabSize: f.positiveInt("vocab_size"),
    dModel,
    nLayers: f.positiveInt("num_hidden_layers"),
    nHeads,
    ropeTheta: ropeTheta(f, cfg, file, d.ropeTheta),
    rmsEps: f.optionalPositiveNumber("rms_norm_eps") ?? d.rmsEps,
    maxPositions: f.optionalPositiveInt("max_position_embeddings") ?? d.maxPositions,
    tieEmbeddings: f.optionalBoolean("tie_word_embeddings") ?? false,
    bosTokenId: f.optionalTokenId("bos_token_id"),
    eosTokenIds: f.tokenIdList("eos_token_id"),
    torchDtype: f.optionalString("torch_dtype") ?? f.optionalString("dtype"),
  };
}

/** GQA head counts and sizes (num_key_value_heads = null means MHA; head_dim defaults to hidden / heads). */
function gqaHeads(f: Fields, file: string, dModel: number, nHeads: number) {
  const nKvHeads = f.optionalPositiveInt("num_key_value_heads") ?? nHeads;
  if (nHeads % nKvHeads !== 0) {
    throw fieldError(file, "num_key_value_heads", `must divide num_attention_heads (${nHeads}), got ${nKvHeads}`);
  }
  let headDim = f.optionalPositiveInt("head_dim");
  if (headDim === null) {
    if (dModel % nHeads !== 0) {
      throw fieldError(
        file,
        "hidden_size",
        `must be divisible by num_attention_heads (${nHeads}) when head_dim is absent, got ${dModel}`,
      );
    }
    headDim = dModel / nHeads;
  }
  if (headDim % 2 !== 0) {
    throw fieldError(file, "head_dim", `must be even for rotary embeddings, got ${headDim}`);
  }
  return { nKvHeads, headDim };
}

/** Routed experts and top-k under the family's field names. */
function experts(
  f: Fields,
  file: string,
  nExpertsField: string,
  topKField: string,
  defaults: { nExperts?: number; topK?: number } = {},
) {
  const nExperts =
    defaults.nExperts === undefined
      ? f.positiveInt(nExpertsField)
      : (f.optionalPositiveInt(nExpertsField) ?? defaults.nExperts);
  const topK =
    defaults.topK === undefined ? f.positiveInt(topKField) : (f.optionalPositiveInt(topKField) ?? defaults.topK);
  if (topK > nExperts) {
    throw fieldError(file, topKField, `must be ≤ ${nExpertsField} (${nExperts}), got ${topK}`);
  }
  return { nExperts, topK };
}

const NO_MULTIPLIERS: Multipliers = { embedding: 1, residual: 1, logitsScale: 1 };

/** The spec fields derived from the layer kinds. */
function layerFields(layers: LayerKind[]) {
  return { layers, moeLayers: layers.flatMap((l, i) => (l.kind === "moe" ? [i] : [])) };
}

function gqaAttention(
  nHeads: number,
  nKvHeads: number,
  headDim: number,
  rest: Partial<GqaAttentionSpec> = {},
): GqaAttentionSpec {
  return {
    kind: "gqa",
    nHeads,
    nKvHeads,
    headDim,
    qkNorm: "none",
    qkvBias: false,
    outBias: false,
    scale: 1 / Math.sqrt(headDim),
    ...rest,
  };
}

/**
 * Mixtral (HF `MixtralConfig`). Absent optional fields take MixtralConfig's defaults, so a config
 * means the same here as in transformers.
 */
function parseMixtral(cfg: ConfigObject, file: string): ModelSpec {
  const f = new Fields(cfg, file);
  const { ropeTheta, ...c } = common(f, cfg, file, { ropeTheta: 1e6, rmsEps: 1e-5, maxPositions: 4096 * 32 });
  const dFf = f.positiveInt("intermediate_size");
  const { nKvHeads, headDim } = gqaHeads(f, file, c.dModel, c.nHeads);
  const { nExperts, topK } = experts(f, file, "num_local_experts", "num_experts_per_tok");
  return {
    arch: "mixtral",
    modelType: "mixtral",
    ...c,
    nKvHeads,
    headDim,
    dFf,
    nExperts,
    topK,
    // MixtralSparseMoeBlock: softmax over all experts, top-k, renormalise the k.
    router: { kind: "softmax-topk", renormalize: true },
    slidingWindow: f.optionalPositiveInt("sliding_window"),
    ...layerFields(Array.from({ length: c.nLayers }, () => ({ kind: "moe" }) as const)),
    attention: gqaAttention(c.nHeads, nKvHeads, headDim),
    sharedExperts: null,
    multipliers: NO_MULTIPLIERS,
    rope: { theta: ropeTheta, interleaved: false, rotDim: headDim, yarn: null },
  };
}

/**
 * Qwen2-MoE (`Qwen2MoeConfig`) and Qwen3-MoE (`Qwen3MoeConfig`). A layer is MoE unless listed in
 * `mlp_only_layers` or skipped by `decoder_sparse_step` ((L + 1) % step ≠ 0); dense layers use
 * `intermediate_size`. Qwen2-MoE: q/k/v biases (`qkv_bias`, default true) and a sigmoid-gated
 * shared expert; Qwen3-MoE: per-head q/k RMSNorm, `attention_bias`, no shared expert.
 */
function parseQwenMoe(cfg: ConfigObject, file: string, arch: "qwen2_moe" | "qwen3_moe"): ModelSpec {
  const f = new Fields(cfg, file);
  const { ropeTheta, ...c } = common(f, cfg, file, { ropeTheta: 10000, rmsEps: 1e-6, maxPositions: 32768 });
  const { nKvHeads, headDim } = gqaHeads(f, file, c.dModel, c.nHeads);
  const qwen2 = arch === "qwen2_moe";
  const { nExperts, topK } = experts(
    f,
    file,
    "num_experts",
    "num_experts_per_tok",
    qwen2 ? { nExperts: 60, topK: 4 } : { nExperts: 128, topK: 8 },
  );
  const dFf = f.optionalPositiveInt("moe_intermediate_size") ?? (qwen2 ? 1408 : 768);
  const denseFf = f.optionalPositiveInt("intermediate_size") ?? (qwen2 ? 5632 : 6144);
  const step = f.optionalPositiveInt("decoder_sparse_step") ?? 1;
  const mlpOnly = new Set(f.layerList("mlp_only_layers", c.nLayers));
  const layers = Array.from(
    { length: c.nLayers },
    (_, L): LayerKind => (!mlpOnly.has(L) && (L + 1) % step === 0 ? { kind: "moe" } : { kind: "dense", dFf: denseFf }),
  );
  const attentionBias = f.optionalBoolean("attention_bias") ?? false;
  const sharedFf = qwen2 ? (f.optionalNonNegativeInt("shared_expert_intermediate_size") ?? 5632) : 0;
  return {
    arch,
    modelType: arch,
    ...c,
    nKvHeads,
    headDim,
    dFf,
    nExperts,
    topK,
    router: { kind: "softmax-topk", renormalize: f.optionalBoolean("norm_topk_prob") ?? false },
    slidingWindow: (f.optionalBoolean("use_sliding_window") ?? false) ? f.optionalPositiveInt("sliding_window") : null,
    ...layerFields(layers),
    attention: qwen2
      ? gqaAttention(c.nHeads, nKvHeads, headDim, { qkvBias: f.optionalBoolean("qkv_bias") ?? true })
      : gqaAttention(c.nHeads, nKvHeads, headDim, {
          qkNorm: "per-head",
          qkvBias: attentionBias,
          outBias: attentionBias,
        }),
    sharedExperts: sharedFf > 0 ? { count: 1, dFf: sharedFf, gated: true } : null,
    multipliers: NO_MULTIPLIERS,
    rope: { theta: ropeTheta, interleaved: false, rotDim: headDim, yarn: null },
  };
}

/** OLMoE (`OlmoeConfig`): q/k RMSNorm over the whole projection, experts of `intermediate_size`. */
function parseOlmoe(cfg: ConfigObject, file: string): ModelSpec {
  const f = new Fields(cfg, file);
  const { ropeTheta, ...c } = common(f, cfg, file, { ropeTheta: 10000, rmsEps: 1e-5, maxPositions: 4096 });
  if (cfg.clip_qkv !== undefined && cfg.clip_qkv !== null) {
    throw fieldError(file, "clip_qkv", `is not supported yet (got ${JSON.stringify(cfg.clip_qkv)}); only null`);
  }
  const { nKvHeads, headDim } = gqaHeads(f, file, c.dModel, c.nHeads);
  const { nExperts, topK } = experts(f, file, "num_experts", "num_experts_per_tok", { nExperts: 64, topK: 8 });
  const attentionBias = f.optionalBoolean("attention_bias") ?? false;
  return {
    arch: "olmoe",
    modelType: "olmoe",
    ...c,
    nKvHeads,
    headDim,
    dFf: f.optionalPositiveInt("intermediate_size") ?? 2048,
    nExperts,
    topK,
    router: { kind: "softmax-topk", renormalize: f.optionalBoolean("norm_topk_prob") ?? false },
    slidingWindow: null,
    ...layerFields(Array.from({ length: c.nLayers }, () => ({ kind: "moe" }) as const)),
    attention: gqaAttention(c.nHeads, nKvHeads, headDim, {
      qkNorm: "full",
      qkvBias: attentionBias,
      outBias: attentionBias,
    }),
    sharedExperts: null,
    multipliers: NO_MULTIPLIERS,
    rope: { theta: ropeTheta, interleaved: false, rotDim: headDim, yarn: null },
  };
}

/**
 * Granite-MoE (`GraniteMoeConfig`) and Granite-MoE-Shared (`GraniteMoeSharedConfig`): the
 * embedding / attention / residual multipliers and logits_scaling; GraniteMoeTopKGating (top-k
 * over logits, softmax over the k) equals softmax → top-k → renormalise. The shared variant adds
 * an ungated shared MLP of `shared_intermediate_size` (0 = none).
 */
function parseGraniteMoe(cfg: ConfigObject, file: string, arch: "granitemoe" | "granitemoeshared"): ModelSpec {
  const f = new Fields(cfg, file);
  const { ropeTheta, ...c } = common(f, cfg, file, { ropeTheta: 10000, rmsEps: 1e-6, maxPositions: 2048 });
  const { nKvHeads, headDim } = gqaHeads(f, file, c.dModel, c.nHeads);
  const { nExperts, topK } = experts(f, file, "num_local_experts", "num_experts_per_tok");
  const attentionBias = f.optionalBoolean("attention_bias") ?? false;
  const sharedFf = arch === "granitemoeshared" ? (f.optionalNonNegativeInt("shared_intermediate_size") ?? 0) : 0;
  return {
    arch,
    modelType: arch,
    ...c,
    nKvHeads,
    headDim,
    dFf: f.positiveInt("intermediate_size"),
    nExperts,
    topK,
    router: { kind: "softmax-topk", renormalize: true },
    slidingWindow: null,
    ...layerFields(Array.from({ length: c.nLayers }, () => ({ kind: "moe" }) as const)),
    attention: gqaAttention(c.nHeads, nKvHeads, headDim, {
      qkvBias: attentionBias,
      outBias: attentionBias,
      scale: f.optionalPositiveNumber("attention_multiplier") ?? 1,
    }),
    sharedExperts: sharedFf > 0 ? { count: 1, dFf: sharedFf, gated: false } : null,
    multipliers: {
      embedding: f.optionalPositiveNumber("embedding_multiplier") ?? 1,
      residual: f.optionalPositiveNumber("residual_multiplier") ?? 1,
      logitsScale: f.optionalPositiveNumber("logits_scaling") ?? 1,
    },
    rope: { theta: ropeTheta, interleaved: false, rotDim: headDim, yarn: null },
  };
}

/**
 * DeepSeek-V3 (`DeepseekV3Config`, checked against DeepSeek's inference/model.py) and DeepSeek-V2
 * (`DeepseekV2Config` / the original modeling_deepseek.py). MLA attention with interleaved RoPE on
 * the rope part (`rope_interleave`, default true); layers < first_k_dense_replace (and layers with
 * L % moe_layer_freq ≠ 0) are dense MLPs of `intermediate_size`; `n_shared_experts` ungated shared
 * experts of `moe_intermediate_size` each. `rope_scaling` YaRN is accepted (src/model/rope-scaling.ts).
 *
 * Routers: V3 (`topk_method` "noaux_tc", `scoring_func` "sigmoid"): bias for selection, groups by
 * top-2 sum, weights renormalised when norm_topk_prob, then × routed_scaling_factor. V2
 * ("greedy" / "group_limited_greedy", softmax): groups by max; as in DeepSeek's modeling code,
 * the weights are renormalised (norm_topk_prob and top-k > 1) OR scaled by routed_scaling_factor.
 */
function parseDeepseek(cfg: ConfigObject, file: string, arch: "deepseek_v2" | "deepseek_v3"): ModelSpec {
  const f = new Fields(cfg, file);
  const v3 = arch === "deepseek_v3";
  const { ropeTheta, ...c } = common(
    f,
    cfg,
    file,
    { ropeTheta: 10000, rmsEps: 1e-6, maxPositions: v3 ? 4096 : 2048 },
    true,
  );
  const yarn = parseYarnScaling(cfg.rope_scaling, file);
  if (f.optionalBoolean("attention_bias") === true) {
    throw fieldError(
      file,
      "attention_bias",
      "true is not supported for MLA attention yet (published DeepSeek models use false)",
    );
  }
  if (f.optionalBoolean("mlp_bias") === true) {
    throw fieldError(file, "mlp_bias", "true is not supported (SwiGLU MLPs without bias only)");
  }
  const qLoraRank = f.nullablePositiveInt("q_lora_rank", 1536);
  const kvLoraRank = f.optionalPositiveInt("kv_lora_rank") ?? 512;
  const qkNope = f.optionalPositiveInt("qk_nope_head_dim") ?? 128;
  const qkRope = f.optionalPositiveInt("qk_rope_head_dim") ?? 64;
  const vHeadDim = f.optionalPositiveInt("v_head_dim") ?? 128;
  if (qkRope % 2 !== 0) throw fieldError(file, "qk_rope_head_dim", `must be even for rotary embeddings, got ${qkRope}`);

  const { nExperts, topK } = experts(
    f,
    file,
    "n_routed_experts",
    "num_experts_per_tok",
    v3 ? { nExperts: 256, topK: 8 } : { nExperts: 64 },
  );
  const dFf = f.optionalPositiveInt("moe_intermediate_size") ?? (v3 ? 2048 : 1407);
  const denseFf = f.optionalPositiveInt("intermediate_size") ?? (v3 ? 18432 : 11008);
  const firstDense = f.optionalNonNegativeInt("first_k_dense_replace") ?? (v3 ? 3 : 0);
  const freq = f.optionalPositiveInt("moe_layer_freq") ?? 1;
  const layers = Array.from(
    { length: c.nLayers },
    (_, L): LayerKind => (L >= firstDense && L % freq === 0 ? { kind: "moe" } : { kind: "dense", dFf: denseFf }),
  );
  const nShared = f.optionalNonNegativeInt("n_shared_experts") ?? (v3 ? 1 : 2);

  const scoring = f.optionalString("scoring_func") ?? (v3 ? "sigmoid" : "softmax");
  const method = f.optionalString("topk_method") ?? (v3 ? "noaux_tc" : "greedy");
  const METHODS: Record<string, { scoring: string; grouped: boolean; bias: boolean }> = v3
    ? { noaux_tc: { scoring: "sigmoid", grouped: true, bias: true } }
    : {
        greedy: { scoring: "softmax", grouped: false, bias: false },
        group_limited_greedy: { scoring: "softmax", grouped: true, bias: false },
      };
  const m = Object.hasOwn(METHODS, method) ? METHODS[method] : undefined;
  if (!m)
    throw fieldError(
      file,
      "topk_method",
      `"${method}" is not supported for ${arch} (supported: ${Object.keys(METHODS).join(", ")})`,
    );
  if (scoring !== m.scoring)
    throw fieldError(
      file,
      "scoring_func",
      `"${scoring}" is not supported with topk_method "${method}" (expected "${m.scoring}")`,
    );
  let nGroup = 1;
  let topkGroup = 1;
  if (m.grouped) {
    nGroup = f.optionalPositiveInt("n_group") ?? (v3 ? 8 : 1);
    topkGroup = f.optionalPositiveInt("topk_group") ?? (v3 ? 4 : 1);
    if (nExperts % nGroup !== 0)
      throw fieldError(file, "n_group", `must divide n_routed_experts (${nExperts}), got ${nGroup}`);
    if (topkGroup > nGroup) throw fieldError(file, "topk_group", `must be ≤ n_group (${nGroup}), got ${topkGroup}`);
    if (topK > topkGroup * (nExperts / nGroup)) {
      throw fieldError(
        file,
        "num_experts_per_tok",
        `must be ≤ topk_group × experts per group (${topkGroup} × ${nExperts / nGroup}), got ${topK}`,
      );
    }
  }
  const normTopk = f.optionalBoolean("norm_topk_prob") ?? !!v3;
  const routedScale = f.optionalPositiveNumber("routed_scaling_factor") ?? (v3 ? 2.5 : 1);
  const v2Renorm = normTopk && topK > 1;
  const router: RouterSpec = {
    kind: "group-limited-topk",
    scoring: m.scoring as "sigmoid" | "softmax",
    selectionBias: m.bias,
    nGroup,
    topkGroup,
    groupScore: v3 ? "top2-sum" : "max",
    renormalize: v3 ? normTopk : v2Renorm,
    routedScale: v3 || !v2Renorm ? routedScale : 1,
  };
  const qkHead = qkNope + qkRope;
  // The mscale² covers the whole q·k (nope and rope parts), as in DeepSeek's MLA.
  const softmaxScale = (1 / Math.sqrt(qkHead)) * (yarn === null ? 1 : yarnAttentionScale(yarn));
  return {
    arch,
    modelType: arch,
    ...c,
    nKvHeads: c.nHeads,
    headDim: qkHead,
    dFf,
    nExperts,
    topK,
    router,
    slidingWindow: null,
    ...layerFields(layers),
    attention: {
      kind: "mla",
      nHeads: c.nHeads,
      qLoraRank,
      kvLoraRank,
      qkNopeHeadDim: qkNope,
      qkRopeHeadDim: qkRope,
      vHeadDim,
      scale: softmaxScale,
    },
    sharedExperts: nShared > 0 ? { count: nShared, dFf: nShared * dFf, gated: false } : null,
    multipliers: NO_MULTIPLIERS,
    rope: { theta: ropeTheta, interleaved: f.optionalBoolean("rope_interleave") ?? true, rotDim: qkRope, yarn },
  };
}

/**
 * `rope_theta`, or transformers v5's `rope_parameters: { rope_type, rope_theta }`. Only the
 * default rope type is implemented.
 */
function ropeTheta(f: Fields, cfg: ConfigObject, file: string, fallback: number): number {
  const params = cfg.rope_parameters;
  if (params !== undefined && params !== null) {
    if (typeof params !== "object" || Array.isArray(params)) {
      throw fieldError(file, "rope_parameters", `must be an object, got ${describe(params)}`);
    }
    const p = params as ConfigObject;
    if (p.rope_type !== undefined && p.rope_type !== "default") {
      throw fieldError(
        file,
        "rope_parameters.rope_type",
        `${JSON.stringify(p.rope_type)} is not supported yet (only "default")`,
      );
    }
    if (p.rope_theta !== undefined) {
      return new Fields(p, file, "rope_parameters.").optionalPositiveNumber("rope_theta") ?? fallback;
    }
  }
  return f.optionalPositiveNumber("rope_theta") ?? fallback;
}

/** Typed accessors that name the field (with an optional prefix for nested objects) on failure. */
class Fields {
  constructor(
    private readonly obj: ConfigObject,
    private readonly file: string,
    private readonly prefix = "",
  ) {}

  private fail(name: string, message: string): never {
    throw fieldError(this.file, this.prefix + name, message);
  }

  private present(name: string): unknown {
    const v = this.obj[name];
    return v === null ? undefined : v;
  }

  positiveInt(name: string): number {
    const v = this.optionalPositiveInt(name);
    if (v === null) this.fail(name, "is missing (required: an integer > 0)");
    return v;
  }

  optionalPositiveInt(name: string): number | null {
    const v = this.present(name);
    if (v === undefined) return null;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0)
      this.fail(name, `must be an integer > 0, got ${describe(v)}`);
    return v;
  }

  optionalNonNegativeInt(name: string): number | null {
    const v = this.present(name);
    if (v === undefined) return null;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0)
      this.fail(name, `must be an integer ≥ 0, got ${describe(v)}`);
    return v;
  }

  /** A positive integer, explicit null (returned as null), or absent (→ fallback). */
  nullablePositiveInt(name: string, fallback: number): number | null {
    if (this.obj[name] === null) return null;
    return this.optionalPositiveInt(name) ?? fallback;
  }

  /** A list of layer indices in [0, nLayers) (absent or null = empty). */
  layerList(name: string, nLayers: number): number[] {
    const v = this.present(name);
    if (v === undefined) return [];
    if (
      !Array.isArray(v) ||
      !v.every((x) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0 && x < nLayers)
    ) {
      this.fail(name, `must be a list of layer indices in [0, ${nLayers}), got ${describe(v)}`);
    }
    return v as number[];
  }

  optionalPositiveNumber(name: string): number | null {
    const v = this.present(name);
    if (v === undefined) return null;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0)
      this.fail(name, `must be a finite number > 0, got ${describe(v)}`);
    return v;
  }

  optionalBoolean(name: string): boolean | null {
    const v = this.present(name);
    if (v === undefined) return null;
    if (typeof v !== "boolean") this.fail(name, `must be true or false, got ${describe(v)}`);
    return v;
  }

  optionalString(name: string): string | null {
    const v = this.present(name);
    if (v === undefined) return null;
    if (typeof v !== "string") this.fail(name, `must be a string, got ${describe(v)}`);
    return v;
  }

  optionalTokenId(name: string): number | null {
    const v = this.present(name);
    if (v === undefined) return null;
    if (!isTokenId(v)) this.fail(name, `must be a token id (integer ≥ 0) or null, got ${describe(v)}`);
    return v;
  }

  /** A single id or a list of ids (HF allows both for eos_token_id). */
  tokenIdList(name: string): number[] {
    const v = this.present(name);
    if (v === undefined) return [];
    if (isTokenId(v)) return [v];
    if (Array.isArray(v) && v.every(isTokenId)) return [...v];
    this.fail(name, `must be a token id (integer ≥ 0), a list of them, or null, got ${describe(v)}`);
  }
}

function isTokenId(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function fieldError(file: string, field: string, message: string): ModelFormatError {
  return new ModelFormatError(`${file}: ${field} ${message}`, file, undefined, field);
}

function describe(v: unknown): string {
  if (v === undefined) return "nothing";
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}
