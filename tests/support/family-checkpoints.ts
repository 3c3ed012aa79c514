/**
 * @module HF-format checkpoints for every MoE family, built in memory from a config.json with
 * seeded random weights and the tensor names each family's transformers code uses (written out
 * here independently of src/model/architectures.ts, so a wrong adapter name fails the tests).
 */
import { parseConfig } from "../../src/model/config";
import { writeSafetensors } from "../../src/model/safetensors-writer";
import type { Config } from "./family-configs";
import { createRng as rng } from "../../src/serving/sampling";

export type Tensors = Map<string, { shape: number[]; data: Float32Array }>;

/** Seeded test data: the project's one PRNG (mulberry32). */
export { rng };

export interface BuildOptions {
  seed?: number;
  /** Routed experts as one tensor per expert (transformers ≤ 4) or stacked (v5). Granite is always stacked. */
  layout?: "per-expert" | "packed";
  /** Every routed expert of a layer gets expert 0's weights. */
  identicalExperts?: boolean;
}

/** All tensors of a model for `cfg`, random: norms 1 + N(0, 0.1), embeddings N(0, 1), the rest N(0, 0.2). */
export function buildTensors(cfg: Config, opts: BuildOptions = {}): Tensors {
  const spec = parseConfig(cfg);
  const r = rng(opts.seed ?? 1);
  const normal = () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  const t: Tensors = new Map();
  const add = (name: string, shape: number[], kind: "norm" | "embed" | "weight" | "bias" = "weight") => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      data[i] =
        kind === "norm"
          ? 1 + 0.1 * normal()
          : kind === "embed"
            ? normal()
            : kind === "bias"
              ? 0.02 + 0.1 * r()
              : 0.2 * normal();
    }
    t.set(name, { shape, data });
  };
  const { vocabSize: V, dModel: H, nExperts: E, dFf: I } = spec;
  const family = spec.arch;
  add("model.embed_tokens.weight", [V, H], "embed");
  add("model.norm.weight", [H], "norm");
  if (!spec.tieEmbeddings) add("lm_head.weight", [V, H]);
  for (let L = 0; L < spec.nLayers; L++) {
    const p = `model.layers.${L}.`;
    add(`${p}input_layernorm.weight`, [H], "norm");
    add(`${p}post_attention_layernorm.weight`, [H], "norm");
    const a = spec.attention;
    if (a.kind === "gqa") {
      const q = a.nHeads * a.headDim;
      const kv = a.nKvHeads * a.headDim;
      add(`${p}self_attn.q_proj.weight`, [q, H]);
      add(`${p}self_attn.k_proj.weight`, [kv, H]);
      add(`${p}self_attn.v_proj.weight`, [kv, H]);
      add(`${p}self_attn.o_proj.weight`, [H, q]);
      if (a.qkvBias)
        for (const [x, d] of [
          ["q", q],
          ["k", kv],
          ["v", kv],
        ] as const)
          add(`${p}self_attn.${x}_proj.bias`, [d], "bias");
      if (a.outBias) add(`${p}self_attn.o_proj.bias`, [H], "bias");
      if (a.qkNorm === "per-head") {
        add(`${p}self_attn.q_norm.weight`, [a.headDim], "norm");
        add(`${p}self_attn.k_norm.weight`, [a.headDim], "norm");
      } else if (a.qkNorm === "full") {
        add(`${p}self_attn.q_norm.weight`, [q], "norm");
        add(`${p}self_attn.k_norm.weight`, [kv], "norm");
      }
    } else {
      const qHead = a.qkNopeHeadDim + a.qkRopeHeadDim;
      if (a.qLoraRank === null) add(`${p}self_attn.q_proj.weight`, [a.nHeads * qHead, H]);
      else {
        add(`${p}self_attn.q_a_proj.weight`, [a.qLoraRank, H]);
        add(`${p}self_attn.q_a_layernorm.weight`, [a.qLoraRank], "norm");
        add(`${p}self_attn.q_b_proj.weight`, [a.nHeads * qHead, a.qLoraRank]);
      }
      add(`${p}self_attn.kv_a_proj_with_mqa.weight`, [a.kvLoraRank + a.qkRopeHeadDim, H]);
      add(`${p}self_attn.kv_a_layernorm.weight`, [a.kvLoraRank], "norm");
      add(`${p}self_attn.kv_b_proj.weight`, [a.nHeads * (a.qkNopeHeadDim + a.vHeadDim), a.kvLoraRank]);
      add(`${p}self_attn.o_proj.weight`, [H, a.nHeads * a.vHeadDim]);
    }
    const layer = spec.layers[L];
    if (layer.kind === "dense") {
      add(`${p}mlp.gate_proj.weight`, [layer.dFf, H]);
      add(`${p}mlp.up_proj.weight`, [layer.dFf, H]);
      add(`${p}mlp.down_proj.weight`, [H, layer.dFf]);
      continue;
    }
    // Routed experts: w1 (gate), w3 (up), w2 (down) per expert, then laid out per family.
    const experts = Array.from({ length: E }, () => {
      const mk = (shape: number[]) => Float32Array.from({ length: shape[0] * shape[1] }, () => 0.2 * normal());
      return { w1: mk([I, H]), w3: mk([I, H]), w2: mk([H, I]) };
    });
    if (opts.identicalExperts) for (let e = 1; e < E; e++) experts[e] = experts[0];
    const granite = family === "granitemoe" || family === "granitemoeshared";
    const mixtral = family === "mixtral";
    const routerName = granite
      ? `${p}block_sparse_moe.router.layer.weight`
      : mixtral && opts.layout !== "packed"
        ? `${p}block_sparse_moe.gate.weight`
        : `${p}mlp.gate.weight`;
    add(routerName, [E, H]);
    if (granite || opts.layout === "packed") {
      const gateUp = new Float32Array(E * 2 * I * H);
      const down = new Float32Array(E * H * I);
      experts.forEach((x, e) => {
        gateUp.set(x.w1, e * 2 * I * H);
        gateUp.set(x.w3, e * 2 * I * H + I * H);
        down.set(x.w2, e * H * I);
      });
      const [gu, dn] = granite
        ? [`${p}block_sparse_moe.input_linear.weight`, `${p}block_sparse_moe.output_linear.weight`]
        : [`${p}mlp.experts.gate_up_proj`, `${p}mlp.experts.down_proj`];
      t.set(gu, { shape: [E, 2 * I, H], data: gateUp });
      t.set(dn, { shape: [E, H, I], data: down });
    } else {
      experts.forEach((x, e) => {
        const names = mixtral ? ["w1", "w3", "w2"] : ["gate_proj", "up_proj", "down_proj"];
        const base = mixtral ? `${p}block_sparse_moe.experts.${e}.` : `${p}mlp.experts.${e}.`;
        t.set(`${base}${names[0]}.weight`, { shape: [I, H], data: x.w1 });
        t.set(`${base}${names[1]}.weight`, { shape: [I, H], data: x.w3 });
        t.set(`${base}${names[2]}.weight`, { shape: [H, I], data: x.w2 });
      });
    }
    if (spec.router.kind === "group-limited-topk" && spec.router.selectionBias)
      add(`${p}mlp.gate.e_score_correction_bias`, [E], "bias");
    const s = spec.sharedExperts;
    if (s) {
      if (granite) {
        add(`${p}shared_mlp.input_linear.weight`, [2 * s.dFf, H]);
        add(`${p}shared_mlp.output_linear.weight`, [H, s.dFf]);
      } else {
        const base = family === "qwen2_moe" ? `${p}mlp.shared_expert.` : `${p}mlp.shared_experts.`;
        add(`${base}gate_proj.weight`, [s.dFf, H]);
        add(`${base}up_proj.weight`, [s.dFf, H]);
        add(`${base}down_proj.weight`, [H, s.dFf]);
        if (s.gated) add(`${p}mlp.shared_expert_gate.weight`, [1, H]);
      }
    }
  }
  return t;
}

/** config.json + model.safetensors for the tensors. */
export function checkpointFiles(cfg: Config, tensors: Tensors): Record<string, Uint8Array> {
  return {
    "config.json": new TextEncoder().encode(JSON.stringify(cfg)),
    "model.safetensors": writeSafetensors(
      [...tensors].map(([name, x]) => ({ name, dtype: "F32" as const, shape: x.shape, data: x.data })),
    ),
  };
}
