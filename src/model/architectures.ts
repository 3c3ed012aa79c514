/**
 * @module Where each architecture keeps its weights, as data: one table of Hugging Face tensor-name
 * templates per architecture ({L} = layer, {E} = expert), plus the loaders that read them with
 * shapes checked against the config. Which tensors a layer needs follows from the spec's data
 * (attention kind, layer kind, shared experts, router bias), never from the architecture name.
 *
 * Two routed-expert layouts are recognised, chosen per layer from the names present:
 *  - "per-expert" (transformers ≤ 4.x files): one nn.Linear weight per expert and projection.
 *  - "packed" (transformers v5, and Granite-MoE's ParallelExperts in every version): a gate-up
 *    tensor [E, 2·I, H] and a down tensor [E, H, I]. In transformers' conversion mapping, w1 and w3
 *    (each stacked to [E, I, H]) are concatenated on dim 1 — gate (w1) first, then up (w3) — and the
 *    experts module splits `linear(x, gate_up_proj[e]).chunk(2, dim=-1)` back into (gate, up);
 *    GraniteMoeMoE chunks `input_linear` the same way (silu on the first half). down_proj is w2
 *    stacked on a new dim 0 and applied as `linear(h, down_proj[e])`, the nn.Linear [out, in]
 *    orientation, so nothing is transposed. Mixtral's router moves from `block_sparse_moe.gate` to
 *    `mlp.gate`. (huggingface/transformers src/transformers/conversion_mapping.py,
 *    models/mixtral/modeling_mixtral.py, models/granitemoe/modeling_granitemoe.py.)
 *
 * Longer than the project's ~400-line guideline on purpose: most of it is the per-family name
 * tables and their shape checks, which read best side by side (a new family is one more table).
 */
import type { ModelSpec, Architecture, AttentionSpec } from "./config";
import { parseConfig } from "./config";
import { ModelFormatError } from "./errors";
import { Checkpoint, fmtShape, sameShape } from "./safetensors";
import type { FileStore } from "./safetensors";
import { quantView } from "./quant-names";

/** Experts of one layer stored as one tensor per expert and projection. */
interface PerExpertLayout {
  kind: "per-expert";
  router: string;
  /** gate projection [dFf, dModel] */
  w1: string;
  /** up projection [dFf, dModel] */
  w3: string;
  /** down projection [dModel, dFf] */
  w2: string;
}

/** Experts of one layer stacked along a leading expert dimension. */
interface PackedLayout {
  kind: "packed";
  router: string;
  /** [nExperts, 2·dFf, dModel]: per expert, dFf gate rows then dFf up rows. */
  gateUp: string;
  /** [nExperts, dModel, dFf] */
  down: string;
}

type ExpertLayout = PerExpertLayout | PackedLayout;

/** A SwiGLU MLP (dense layer or shared expert): separate gate/up, or one fused [2·dFf, dModel] gate-up. */
type MlpNames = { kind: "split"; w1: string; w3: string; w2: string } | { kind: "fused"; gateUp: string; w2: string };

/** Grouped-query attention tensors; norm and bias names are used only when the spec says so. */
interface GqaNames {
  kind: "gqa";
  wq: string;
  wk: string;
  wv: string;
  wo: string;
  bq: string;
  bk: string;
  bv: string;
  bo: string;
  qNorm: string;
  kNorm: string;
}

/** MLA tensors (HF DeepseekV2/V3Attention). */
interface MlaNames {
  kind: "mla";
  /** q_proj, when q_lora_rank is null. */
  wq: string;
  wqA: string;
  qANorm: string;
  wqB: string;
  wkvA: string;
  kvANorm: string;
  wkvB: string;
  wo: string;
}

interface ArchitectureAdapter {
  embed: string;
  finalNorm: string;
  lmHead: string;
  attnNorm: string;
  mlpNorm: string;
  attention: GqaNames | MlaNames;
  /** The MLP of dense layers (DeepSeek first_k_dense_replace, Qwen mlp_only_layers). */
  denseMlp: MlpNames;
  /** Shared expert MLP, and its sigmoid gate weight [1, dModel] (used when the spec says gated). */
  shared: { mlp: MlpNames; gate: string | null } | null;
  /** Per-layer selection bias [nExperts] (DeepSeek-V3 e_score_correction_bias). */
  routerBias: string;
  /** Tried in order; the first whose probe tensor exists (layer L, expert 0) is used for layer L. */
  expertLayouts: ExpertLayout[];
}

const SELF_ATTN = "model.layers.{L}.self_attn.";
const GQA_HF: GqaNames = {
  kind: "gqa",
  wq: `${SELF_ATTN}q_proj.weight`,
  wk: `${SELF_ATTN}k_proj.weight`,
  wv: `${SELF_ATTN}v_proj.weight`,
  wo: `${SELF_ATTN}o_proj.weight`,
  bq: `${SELF_ATTN}q_proj.bias`,
  bk: `${SELF_ATTN}k_proj.bias`,
  bv: `${SELF_ATTN}v_proj.bias`,
  bo: `${SELF_ATTN}o_proj.bias`,
  qNorm: `${SELF_ATTN}q_norm.weight`,
  kNorm: `${SELF_ATTN}k_norm.weight`,
};
const MLA_HF: MlaNames = {
  kind: "mla",
  wq: `${SELF_ATTN}q_proj.weight`,
  wqA: `${SELF_ATTN}q_a_proj.weight`,
  qANorm: `${SELF_ATTN}q_a_layernorm.weight`,
  wqB: `${SELF_ATTN}q_b_proj.weight`,
  wkvA: `${SELF_ATTN}kv_a_proj_with_mqa.weight`,
  kvANorm: `${SELF_ATTN}kv_a_layernorm.weight`,
  wkvB: `${SELF_ATTN}kv_b_proj.weight`,
  wo: `${SELF_ATTN}o_proj.weight`,
};
const splitMlp = (prefix: string): MlpNames => ({
  kind: "split",
  w1: `${prefix}gate_proj.weight`,
  w3: `${prefix}up_proj.weight`,
  w2: `${prefix}down_proj.weight`,
});
const MLP = "model.layers.{L}.mlp.";
/** mlp.gate + mlp.experts.{E}.{gate,up,down}_proj (Qwen-MoE, OLMoE, DeepSeek), or the v5 packed form. */
const HF_EXPERTS: ExpertLayout[] = [
  {
    kind: "per-expert",
    router: `${MLP}gate.weight`,
    w1: `${MLP}experts.{E}.gate_proj.weight`,
    w3: `${MLP}experts.{E}.up_proj.weight`,
    w2: `${MLP}experts.{E}.down_proj.weight`,
  },
  {
    kind: "packed",
    router: `${MLP}gate.weight`,
    gateUp: `${MLP}experts.gate_up_proj`,
    down: `${MLP}experts.down_proj`,
  },
];
const BASE = {
  embed: "model.embed_tokens.weight",
  finalNorm: "model.norm.weight",
  lmHead: "lm_head.weight",
  attnNorm: "model.layers.{L}.input_layernorm.weight",
  mlpNorm: "model.layers.{L}.post_attention_layernorm.weight",
  denseMlp: splitMlp(MLP),
  routerBias: `${MLP}gate.e_score_correction_bias`,
};
const QWEN: ArchitectureAdapter = {
  ...BASE,
  attention: GQA_HF,
  shared: { mlp: splitMlp(`${MLP}shared_expert.`), gate: `${MLP}shared_expert_gate.weight` },
  expertLayouts: HF_EXPERTS,
};
const GRANITE: ArchitectureAdapter = {
  ...BASE,
  attention: GQA_HF,
  shared: {
    mlp: {
      kind: "fused",
      gateUp: "model.layers.{L}.shared_mlp.input_linear.weight",
      w2: "model.layers.{L}.shared_mlp.output_linear.weight",
    },
    gate: null,
  },
  expertLayouts: [
    {
      kind: "packed",
      router: "model.layers.{L}.block_sparse_moe.router.layer.weight",
      gateUp: "model.layers.{L}.block_sparse_moe.input_linear.weight",
      down: "model.layers.{L}.block_sparse_moe.output_linear.weight",
    },
  ],
};
const DEEPSEEK: ArchitectureAdapter = {
  ...BASE,
  attention: MLA_HF,
  shared: { mlp: splitMlp(`${MLP}shared_experts.`), gate: null },
  expertLayouts: HF_EXPERTS,
};

const ADAPTERS: Record<Architecture, ArchitectureAdapter> = {
  mixtral: {
    ...BASE,
    attention: GQA_HF,
    shared: null,
    expertLayouts: [
      {
        kind: "per-expert",
        router: "model.layers.{L}.block_sparse_moe.gate.weight",
        w1: "model.layers.{L}.block_sparse_moe.experts.{E}.w1.weight",
        w3: "model.layers.{L}.block_sparse_moe.experts.{E}.w3.weight",
        w2: "model.layers.{L}.block_sparse_moe.experts.{E}.w2.weight",
      },
      {
        kind: "packed",
        router: "model.layers.{L}.mlp.gate.weight",
        gateUp: "model.layers.{L}.mlp.experts.gate_up_proj",
        down: "model.layers.{L}.mlp.experts.down_proj",
      },
    ],
  },
  qwen2_moe: QWEN,
  qwen3_moe: QWEN,
  olmoe: { ...QWEN, shared: null },
  granitemoe: GRANITE,
  granitemoeshared: GRANITE,
  deepseek_v2: DEEPSEEK,
  deepseek_v3: DEEPSEEK,
};

function name(template: string, layer: number, expert = 0): string {
  return template.replaceAll("{L}", String(layer)).replaceAll("{E}", String(expert));
}

function probe(layout: ExpertLayout): string {
  return layout.kind === "per-expert" ? layout.w1 : layout.gateUp;
}

/** The expert layout of `layer`, detected from which tensor names the checkpoint has. */
function expertLayout(ckpt: Checkpoint, spec: ModelSpec, layer: number): ExpertLayout {
  const layouts = ADAPTERS[spec.arch].expertLayouts;
  const view = quantView(ckpt); // an int8 checkpoint's `.qweight` names the same layout
  const found = layouts.find((l) => view.has(name(probe(l), layer)));
  if (!found) {
    const tried = layouts.map((l) => `"${name(probe(l), layer)}"`).join(" or ");
    throw new ModelFormatError(
      `${ckpt.source}: layer ${layer} has no experts: expected tensor ${tried}`,
      ckpt.source,
      name(probe(layouts[0]), layer),
    );
  }
  return found;
}

/** Tensor `tensorName` must exist and have `shape`; the error names its file and the config's shape. */
function checkedInfo(ckpt: Checkpoint, tensorName: string, shape: readonly number[]) {
  const t = ckpt.info(tensorName);
  if (!sameShape(t.shape, shape)) {
    throw new ModelFormatError(
      `${t.file}: tensor "${tensorName}" has shape ${fmtShape(t.shape)}, config expects ${fmtShape(shape)}`,
      t.file,
      tensorName,
    );
  }
  return t;
}

/** One tensor (or a row range of one) the Worker reads, with the shape the config implies. */
export interface Slot {
  tensor: string;
  /** The whole tensor's shape as the config implies it. */
  shape: readonly number[];
  /** Rows [first, first + n) of the tensor viewed as [rows, last dim]; the whole tensor when absent. */
  rows?: readonly [number, number];
}

/** A SwiGLU MLP: out = w2 · (silu(w1 · x) ⊙ (w3 · x)). */
export interface MlpWeights {
  w1: Float32Array; // [dFf, dModel] gate
  w3: Float32Array; // [dFf, dModel] up
  w2: Float32Array; // [dModel, dFf] down
}

export interface GqaWeights {
  kind: "gqa";
  wq: Float32Array; // [nHeads*headDim, dModel]
  wk: Float32Array; // [nKvHeads*headDim, dModel]
  wv: Float32Array; // [nKvHeads*headDim, dModel]
  wo: Float32Array; // [dModel, nHeads*headDim]
  bq: Float32Array | null; // [nHeads*headDim]
  bk: Float32Array | null; // [nKvHeads*headDim]
  bv: Float32Array | null; // [nKvHeads*headDim]
  bo: Float32Array | null; // [dModel]
  qNorm: Float32Array | null; // [headDim] per-head, [nHeads*headDim] full
  kNorm: Float32Array | null; // [headDim] per-head, [nKvHeads*headDim] full
}

export interface MlaWeights {
  kind: "mla";
  wq: Float32Array | null; // [nHeads*(nope+rope), dModel] when q_lora_rank is null
  wqA: Float32Array | null; // [qLoraRank, dModel]
  qANorm: Float32Array | null; // [qLoraRank]
  wqB: Float32Array | null; // [nHeads*(nope+rope), qLoraRank]
  wkvA: Float32Array; // [kvLoraRank + rope, dModel]
  kvANorm: Float32Array; // [kvLoraRank]
  wkvB: Float32Array; // [nHeads*(nope+v), kvLoraRank]
  wo: Float32Array; // [dModel, nHeads*v]
}

export type AttentionWeights = GqaWeights | MlaWeights;

/** Shared experts (fused to one MLP) and their optional sigmoid gate. */
export interface SharedWeights extends MlpWeights {
  gate: Float32Array | null; // [1, dModel]
}

export type FfnWeights =
  | { kind: "dense"; mlp: MlpWeights }
  | {
      kind: "moe";
      router: Float32Array; // [nExperts, dModel]
      routerBias: Float32Array | null; // [nExperts], selection only
      shared: SharedWeights | null;
    };

export interface DenseLayerWeights {
  attnNorm: Float32Array; // [dModel]
  mlpNorm: Float32Array; // [dModel]
  attention: AttentionWeights;
  ffn: FfnWeights;
}

/** Everything the Worker holds: all weights but the routed experts. */
export interface DenseWeights {
  embed: Float32Array; // [vocabSize, dModel]
  finalNorm: Float32Array; // [dModel]
  /** [vocabSize, dModel]; null when tied to `embed`. */
  lmHead: Float32Array | null;
  layers: DenseLayerWeights[];
}

/** The weight tree with a Slot where each array will be. */
type PlanOf<V> = V extends Float32Array ? Slot : V extends null ? null : V extends object ? Planned<V> : V;
export type Planned<T> = { [K in keyof T]: PlanOf<T[K]> };

function slot(template: string, layer: number, shape: readonly number[], rows?: readonly [number, number]): Slot {
  return rows ? { tensor: name(template, layer), shape, rows } : { tensor: name(template, layer), shape };
}

function mlpPlan(names: MlpNames, L: number, dFf: number, H: number): Planned<MlpWeights> {
  switch (names.kind) {
    case "split":
      return { w1: slot(names.w1, L, [dFf, H]), w3: slot(names.w3, L, [dFf, H]), w2: slot(names.w2, L, [H, dFf]) };
    case "fused":
      return {
        w1: slot(names.gateUp, L, [2 * dFf, H], [0, dFf]),
        w3: slot(names.gateUp, L, [2 * dFf, H], [dFf, dFf]),
        w2: slot(names.w2, L, [H, dFf]),
      };
  }
}

function attentionPlan(spec: ModelSpec, names: GqaNames | MlaNames, L: number): Planned<AttentionWeights> {
  const H = spec.dModel;
  const at: AttentionSpec = spec.attention;
  if (at.kind !== names.kind)
    throw new Error(`internal: ${spec.arch} adapter names ${names.kind} tensors for ${at.kind} attention`);
  if (at.kind === "gqa" && names.kind === "gqa") {
    const qDim = at.nHeads * at.headDim;
    const kvDim = at.nKvHeads * at.headDim;
    const norm = { none: null, "per-head": [at.headDim, at.headDim], full: [qDim, kvDim] }[at.qkNorm];
    return {
      kind: "gqa",
      wq: slot(names.wq, L, [qDim, H]),
      wk: slot(names.wk, L, [kvDim, H]),
      wv: slot(names.wv, L, [kvDim, H]),
      wo: slot(names.wo, L, [H, qDim]),
      bq: at.qkvBias ? slot(names.bq, L, [qDim]) : null,
      bk: at.qkvBias ? slot(names.bk, L, [kvDim]) : null,
      bv: at.qkvBias ? slot(names.bv, L, [kvDim]) : null,
      bo: at.outBias ? slot(names.bo, L, [H]) : null,
      qNorm: norm ? slot(names.qNorm, L, [norm[0]]) : null,
      kNorm: norm ? slot(names.kNorm, L, [norm[1]]) : null,
    };
  }
  if (at.kind === "mla" && names.kind === "mla") {
    const qDim = at.nHeads * (at.qkNopeHeadDim + at.qkRopeHeadDim);
    const r = at.qLoraRank;
    return {
      kind: "mla",
      wq: r === null ? slot(names.wq, L, [qDim, H]) : null,
      wqA: r === null ? null : slot(names.wqA, L, [r, H]),
      qANorm: r === null ? null : slot(names.qANorm, L, [r]),
      wqB: r === null ? null : slot(names.wqB, L, [qDim, r]),
      wkvA: slot(names.wkvA, L, [at.kvLoraRank + at.qkRopeHeadDim, H]),
      kvANorm: slot(names.kvANorm, L, [at.kvLoraRank]),
      wkvB: slot(names.wkvB, L, [at.nHeads * (at.qkNopeHeadDim + at.vHeadDim), at.kvLoraRank]),
      wo: slot(names.wo, L, [H, at.nHeads * at.vHeadDim]),
    };
  }
  throw new Error("unreachable");
}

/** Whether the router reads a per-layer selection bias tensor. */
function usesSelectionBias(spec: ModelSpec): boolean {
  return spec.router.kind === "group-limited-topk" && spec.router.selectionBias;
}

function ffnPlan(spec: ModelSpec, a: ArchitectureAdapter, L: number, routerTemplate: string): Planned<FfnWeights> {
  const { dModel: H, nExperts: E } = spec;
  const kind = spec.layers[L];
  if (kind.kind === "dense") return { kind: "dense", mlp: mlpPlan(a.denseMlp, L, kind.dFf, H) };
  const s = spec.sharedExperts;
  if (s && !a.shared) throw new Error(`internal: ${spec.arch} has shared experts but its adapter names none`);
  if (s?.gated && !a.shared?.gate)
    throw new Error(`internal: ${spec.arch} has gated shared experts but its adapter names no gate`);
  return {
    kind: "moe",
    router: slot(routerTemplate, L, [E, H]),
    routerBias: usesSelectionBias(spec) ? slot(a.routerBias, L, [E]) : null,
    shared:
      s && a.shared
        ? {
            ...mlpPlan(a.shared.mlp, L, s.dFf, H),
            gate: s.gated && a.shared.gate ? slot(a.shared.gate, L, [1, H]) : null,
          }
        : null,
  };
}

/** Every dense tensor, shaped by the config. `routerTemplate(L)` names layer L's router tensor. */
function densePlan(spec: ModelSpec, routerTemplate: (L: number) => string): Planned<DenseWeights> {
  const a = ADAPTERS[spec.arch];
  const { vocabSize: V, dModel: H } = spec;
  return {
    embed: slot(a.embed, 0, [V, H]),
    finalNorm: slot(a.finalNorm, 0, [H]),
    lmHead: spec.tieEmbeddings ? null : slot(a.lmHead, 0, [V, H]),
    layers: Array.from({ length: spec.nLayers }, (_, L) => ({
      attnNorm: slot(a.attnNorm, L, [H]),
      mlpNorm: slot(a.mlpNorm, L, [H]),
      attention: attentionPlan(spec, a.attention, L),
      ffn: ffnPlan(spec, a, L, spec.layers[L].kind === "moe" ? routerTemplate(L) : ""),
    })),
  };
}

/** The plan with router names from the layouts present in `ckpt`. */
function densePlanFor(ckpt: Checkpoint, spec: ModelSpec): Planned<DenseWeights> {
  return densePlan(spec, (L) => expertLayout(ckpt, spec, L).router);
}

export function isSlot(v: unknown): v is Slot {
  return (
    typeof v === "object" && v !== null && typeof (v as Slot).tensor === "string" && Array.isArray((v as Slot).shape)
  );
}

/** Every slot of a plan tree, in order. */
function slots(plan: unknown, out: Slot[] = []): Slot[] {
  if (isSlot(plan)) out.push(plan);
  else if (typeof plan === "object" && plan !== null) for (const v of Object.values(plan)) slots(v, out);
  return out;
}

export function slotFloats(s: Slot): number {
  return s.rows ? s.rows[1] * s.shape[s.shape.length - 1] : s.shape.reduce((a, b) => a * b, 1);
}

async function readTree(ckpt: Checkpoint, plan: unknown): Promise<unknown> {
  if (isSlot(plan))
    return plan.rows ? ckpt.readF32Rows(plan.tensor, plan.rows[0], plan.rows[1]) : ckpt.readF32(plan.tensor);
  if (Array.isArray(plan)) {
    const out: unknown[] = [];
    for (const v of plan) out.push(await readTree(ckpt, v)); // layer by layer: bounded concurrency
    return out;
  }
  if (typeof plan === "object" && plan !== null) {
    const entries = await Promise.all(
      Object.entries(plan).map(async ([k, v]) => [k, await readTree(ckpt, v)] as const),
    );
    return Object.fromEntries(entries);
  }
  return plan;
}

/** Reads all dense weights as f32, each shape-checked against the config. */
export async function loadDenseWeights(ckpt: Checkpoint, spec: ModelSpec): Promise<DenseWeights> {
  const plan = densePlanFor(ckpt, spec);
  // Check every shape before reading any data, so a bad file fails fast.
  validateDense(ckpt, spec, plan);
  return (await readTree(ckpt, plan)) as DenseWeights;
}

function validateDense(ckpt: Checkpoint, spec: ModelSpec, plan: Planned<DenseWeights>): void {
  if (plan.lmHead && !ckpt.has(plan.lmHead.tensor)) {
    const t = plan.lmHead.tensor;
    throw new ModelFormatError(
      `${ckpt.source}: tensor "${t}" not found ` +
        "(config.json has tie_word_embeddings false, so the output head must be stored)",
      ckpt.source,
      t,
    );
  }
  if (usesSelectionBias(spec)) {
    for (const l of plan.layers) {
      if (l.ffn.kind === "moe" && l.ffn.routerBias && !ckpt.has(l.ffn.routerBias.tensor)) {
        const t = l.ffn.routerBias.tensor;
        throw new ModelFormatError(
          `${ckpt.source}: tensor "${t}" not found ` +
            `(the ${spec.modelType} router adds e_score_correction_bias for expert selection)`,
          ckpt.source,
          t,
        );
      }
    }
  }
  for (const s of slots(plan)) checkedInfo(ckpt, s.tensor, s.shape);
}

/**
 * One expert matrix inside a checkpoint tensor: rows `firstRow .. firstRow + nRows - 1` of the
 * tensor viewed as [rows, shape[1]] (see `Checkpoint.readF32Rows`), forming a matrix of `shape`.
 */
export interface ExpertTensorRef {
  tensor: string;
  firstRow: number;
  nRows: number;
  /** [out, in], nn.Linear orientation. */
  shape: [number, number];
}

export interface ExpertRefs {
  w1: ExpertTensorRef; // gate [dFf, dModel]
  w3: ExpertTensorRef; // up   [dFf, dModel]
  w2: ExpertTensorRef; // down [dModel, dFf]
}

/** Where expert `expert` of `layer` lives, with the holding tensors' shapes checked. */
export function expertTensorRefs(checkpoint: Checkpoint, spec: ModelSpec, layer: number, expert: number): ExpertRefs {
  // int8 experts (`.qweight`) answer to their original names: same shapes, same rows.
  const ckpt = quantView(checkpoint);
  if (!Number.isInteger(layer) || layer < 0 || layer >= spec.nLayers) {
    throw new RangeError(`layer must be in [0, ${spec.nLayers}), got ${layer}`);
  }
  if (!Number.isInteger(expert) || expert < 0 || expert >= spec.nExperts) {
    throw new RangeError(`expert must be in [0, ${spec.nExperts}), got ${expert}`);
  }
  const kind = spec.layers[layer];
  if (kind.kind !== "moe") {
    throw new RangeError(
      `layer ${layer} of this ${spec.modelType} model is a dense MLP layer (size ${kind.dFf}), ` +
        "not an MoE layer: it has no routed experts to load. " +
        `Only the layers in spec.moeLayers [${spec.moeLayers.join(", ")}] have experts.`,
    );
  }
  const { dModel: H, dFf: I, nExperts: E } = spec;
  const layout = expertLayout(ckpt, spec, layer);
  switch (layout.kind) {
    case "per-expert": {
      const ref = (template: string, rows: number, cols: number): ExpertTensorRef => {
        const tensor = name(template, layer, expert);
        checkedInfo(ckpt, tensor, [rows, cols]);
        return { tensor, firstRow: 0, nRows: rows, shape: [rows, cols] };
      };
      return { w1: ref(layout.w1, I, H), w3: ref(layout.w3, I, H), w2: ref(layout.w2, H, I) };
    }
    case "packed": {
      const gateUp = name(layout.gateUp, layer);
      const down = name(layout.down, layer);
      checkedInfo(ckpt, gateUp, [E, 2 * I, H]);
      checkedInfo(ckpt, down, [E, H, I]);
      return {
        w1: { tensor: gateUp, firstRow: expert * 2 * I, nRows: I, shape: [I, H] },
        w3: { tensor: gateUp, firstRow: expert * 2 * I + I, nRows: I, shape: [I, H] },
        w2: { tensor: down, firstRow: expert * H, nRows: H, shape: [H, I] },
      };
    }
  }
}

/** One routed expert (a SwiGLU MLP of dFf). */
export type ExpertWeights = MlpWeights;

export async function loadExpertWeights(
  ckpt: Checkpoint,
  spec: ModelSpec,
  layer: number,
  expert: number,
): Promise<ExpertWeights> {
  const refs = expertTensorRefs(ckpt, spec, layer, expert);
  const [w1, w3, w2] = await Promise.all(
    [refs.w1, refs.w3, refs.w2].map((r) => ckpt.readF32Rows(r.tensor, r.firstRow, r.nRows)),
  );
  return { w1, w3, w2 };
}

/** Checks every tensor the model needs (names and shapes, headers only; no data is read). */
export function validateCheckpoint(ckpt: Checkpoint, spec: ModelSpec): void {
  validateDense(ckpt, spec, densePlanFor(ckpt, spec));
  for (const L of spec.moeLayers) {
    for (let e = 0; e < spec.nExperts; e++) expertTensorRefs(ckpt, spec, L, e);
  }
}

/**
 * Bytes of the dense weights once held as f32 (the Worker's budget): everything but the routed
 * experts — attention, norms, routers and their biases, dense-layer MLPs and shared experts.
 */
export function denseBytes(spec: ModelSpec): number {
  const router = ADAPTERS[spec.arch].expertLayouts[0].router; // names do not change sizes
  return 4 * slots(densePlan(spec, () => router)).reduce((n, s) => n + slotFloats(s), 0);
}

/** Bytes of one expert (w1, w3, w2) once held as f32 (an ExpertHost's budget). */
export function expertBytesF32(spec: ModelSpec): number {
  return 4 * 3 * spec.dFf * spec.dModel;
}

/** Reads `config.json` and the checkpoint headers of a model directory, and checks they agree. */
export async function openModel(store: FileStore): Promise<{ spec: ModelSpec; ckpt: Checkpoint }> {
  const file = "config.json";
  const src = await store.open(file);
  if (!src) throw new ModelFormatError(`${file}: not found in ${store.label}`, file);
  let raw: unknown;
  try {
    raw = JSON.parse(
      new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(await src.read(0, await src.size())),
    );
  } catch (e) {
    throw new ModelFormatError(`${file}: not valid UTF-8 JSON (${(e as Error).message})`, file);
  }
  const spec = parseConfig(raw, file);
  const ckpt = await Checkpoint.open(store);
  validateCheckpoint(ckpt, spec);
  return { spec, ckpt };
}

/** One tensor of a checkpoint as the family lays it out (see `checkpointTensors`). */
export interface CheckpointTensor {
  name: string;
  shape: number[];
  /** "expert": routed-expert weights (the part int8 conversion quantizes). */
  part: "dense" | "expert";
}

/**
 * Every tensor a checkpoint of `spec` holds, in the family's first-listed layout (per-expert
 * tensors, or the packed form where the family has only that): what a writer of synthetic
 * checkpoints must produce for `openModel` to accept them. Dense tensors first, in plan order.
 */
export function checkpointTensors(spec: ModelSpec): CheckpointTensor[] {
  const a = ADAPTERS[spec.arch];
  const layout = a.expertLayouts[0];
  const out = new Map<string, CheckpointTensor>();
  for (const s of slots(densePlan(spec, (L) => name(layout.router, L)))) {
    if (!out.has(s.tensor)) out.set(s.tensor, { name: s.tensor, shape: [...s.shape], part: "dense" });
  }
  const { dModel: H, dFf: I, nExperts: E } = spec;
  for (const L of spec.moeLayers) {
    const add = (n: string, shape: number[]) => out.set(n, { name: n, shape, part: "expert" });
    if (layout.kind === "packed") {
      add(name(layout.gateUp, L), [E, 2 * I, H]);
      add(name(layout.down, L), [E, H, I]);
    } else {
      for (let e = 0; e < E; e++) {
        add(name(layout.w1, L, e), [I, H]);
        add(name(layout.w2, L, e), [H, I]);
        add(name(layout.w3, L, e), [I, H]);
      }
    }
  }
  return [...out.values()];
}

/**
 * Names of the token-embedding table and of the output head [vocabSize, dModel]. With
 * `tie_word_embeddings` both are the embedding table: one tensor, read once, serving both.
 */
export function vocabTensorNames(spec: ModelSpec): { embed: string; head: string; tied: boolean } {
  const a = ADAPTERS[spec.arch];
  return { embed: a.embed, head: spec.tieEmbeddings ? a.embed : a.lmHead, tied: spec.tieEmbeddings };
}

// ── parts of the dense weights (pipeline stages) ─────────────────────────────────────────────
// A pipeline stage holds a contiguous range of layers; the "ends" (embeddings, final norm,
// output head) live with whoever embeds tokens and computes logits. Same plan, same shape
// checks as `loadDenseWeights`, read for the part only — a stage never reads another's layers.

/** The embedding matrix, final norm and output head (null when tied to `embed`). */
export interface DenseEnds {
  embed: Float32Array; // [vocabSize, dModel]
  finalNorm: Float32Array; // [dModel]
  lmHead: Float32Array | null; // [vocabSize, dModel]
}

/**
 * Where layer l's dense tensors are and their shapes: a tree shaped like `DenseLayerWeights` with a
 * Slot where each array goes (streaming loaders read it; src/model/dense-layers.ts). With `ckpt`, the
 * router names come from its layout and every shape is checked first (a bad file fails before any
 * read); without, the family's first layout (sizes do not depend on names).
 */
export function denseLayerPlan(spec: ModelSpec, l: number, ckpt?: Checkpoint): Planned<DenseLayerWeights> {
  if (!(Number.isInteger(l) && 0 <= l && l < spec.nLayers)) {
    throw new RangeError(`layer ${l} is not inside [0, ${spec.nLayers})`);
  }
  if (!ckpt) {
    const router = ADAPTERS[spec.arch].expertLayouts[0].router;
    return densePlan(spec, () => router).layers[l];
  }
  const plan = densePlanFor(ckpt, spec);
  validateDense(ckpt, spec, { ...plan, layers: [plan.layers[l]] });
  return plan.layers[l];
}

/** Reads the embeddings, final norm and output head as f32. */
export async function loadDenseEnds(ckpt: Checkpoint, spec: ModelSpec): Promise<DenseEnds> {
  const plan = densePlanFor(ckpt, spec);
  validateDense(ckpt, spec, { ...plan, layers: [] });
  return (await readTree(ckpt, { embed: plan.embed, finalNorm: plan.finalNorm, lmHead: plan.lmHead })) as DenseEnds;
}

/** f32 bytes of layer l's dense weights (attention, norms, router, shared experts or dense MLP). */
export function denseLayerBytes(spec: ModelSpec, l: number): number {
  const router = ADAPTERS[spec.arch].expertLayouts[0].router;
  return 4 * slots(densePlan(spec, () => router).layers[l]).reduce((n, s) => n + slotFloats(s), 0);
}

/** f32 bytes of the embeddings, final norm and (untied) output head. */
export function denseEndsBytes(spec: ModelSpec): number {
  const plan = densePlan(spec, () => "");
  return (
    4 *
    slots({ embed: plan.embed, finalNorm: plan.finalNorm, lmHead: plan.lmHead }).reduce((n, s) => n + slotFloats(s), 0)
  );
}

/** Reads the final norm [dModel] alone (the head and embeddings live elsewhere). */
export async function loadFinalNorm(ckpt: Checkpoint, spec: ModelSpec): Promise<Float32Array> {
  const plan = densePlanFor(ckpt, spec);
  checkedInfo(ckpt, plan.finalNorm.tensor, plan.finalNorm.shape);
  return (await readTree(ckpt, plan.finalNorm)) as Float32Array;
}
