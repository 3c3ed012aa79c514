/**
 * Every MoE family through the Worker's forward pass (src/serving/forward.ts, Wasm kernels, local
 * experts), against (a) a naive float64 HF-semantics reference on random weights and (b) cases
 * whose answer is known by construction: identical experts equal a one-expert (dense) twin, MoE
 * layers equal dense layers with the same MLP, Granite's multipliers equal rescaled weights of a
 * Mixtral twin, hand-set routers force a routing, KV-cache decode equals a full recompute.
 */
import { describe, expect, it } from "vitest";
import { denseBytes, expertBytesF32, loadExpertWeights, openModel } from "../../../src/model/architectures";
import { parseConfig } from "../../../src/model/config";
import { memoryFileStore } from "../../../src/model/safetensors";
import { buildTensors, checkpointFiles, type Tensors } from "../../support/family-checkpoints";
import {
  MIXTRAL,
  DEEPSEEK_V2_LITE,
  DEEPSEEK_V3,
  DEEPSEEK_V3_ODD,
  GRANITE_MOE,
  GRANITE_MOE_SHARED,
  OLMOE,
  QWEN2_MOE,
  QWEN3_MOE,
  type Config,
} from "../../support/family-configs";
import { maxAbsDiff, nodeModel, runPrompt } from "../../support/forward-helpers";
import { flattenRouting, ROUTING_OFF, type Routing } from "../../../src/gating/router";
import { referenceForward } from "../../support/reference-forward";
import { setExpertEventSink } from "../../../src/platform/events";

const DEEPSEEK_V2_GROUPED: Config = {
  ...DEEPSEEK_V2_LITE,
  topk_method: "group_limited_greedy",
  n_group: 4,
  topk_group: 2,
  routed_scaling_factor: 16,
  q_lora_rank: 24,
};

/** Sizes that are no multiple of 4 anywhere (kernel tails), five groups, top-3. */
const DEEPSEEK_V3_PRIME: Config = {
  ...DEEPSEEK_V3,
  hidden_size: 37,
  intermediate_size: 29,
  moe_intermediate_size: 13,
  num_attention_heads: 3,
  num_key_value_heads: 3,
  q_lora_rank: 23,
  kv_lora_rank: 19,
  qk_nope_head_dim: 9,
  qk_rope_head_dim: 6,
  v_head_dim: 11,
  n_routed_experts: 10,
  n_group: 5,
  topk_group: 3,
  num_experts_per_tok: 3,
  n_shared_experts: 2,
  vocab_size: 101,
  routed_scaling_factor: 1.75,
};
/** Top-1 out of two groups, every layer MoE. */
const DEEPSEEK_V3_TOP1: Config = {
  ...DEEPSEEK_V3,
  n_group: 2,
  topk_group: 1,
  num_experts_per_tok: 1,
  first_k_dense_replace: 0,
};

const FAMILIES: [string, Config][] = [
  ["mixtral", MIXTRAL],
  ["qwen2_moe", QWEN2_MOE],
  ["qwen3_moe", QWEN3_MOE],
  ["olmoe", OLMOE],
  ["granitemoe", GRANITE_MOE],
  ["granitemoeshared", GRANITE_MOE_SHARED],
  ["deepseek_v3 (fixture config)", DEEPSEEK_V3],
  ["deepseek_v3 (q_lora null, 2 shared, 3 groups, odd sizes)", DEEPSEEK_V3_ODD],
  ["deepseek_v3 (sizes ≢ 0 mod 4, 5 groups)", DEEPSEEK_V3_PRIME],
  ["deepseek_v3 (top-1 of 2 groups, no dense layer)", DEEPSEEK_V3_TOP1],
  ["deepseek_v2 (V2-Lite: greedy softmax)", DEEPSEEK_V2_LITE],
  ["deepseek_v2 (group_limited_greedy)", DEEPSEEK_V2_GROUPED],
];

const PROMPT = [3, 17, 42, 8, 91, 5, 60];

async function run(cfg: Config, tensors: Tensors, greedy = 3) {
  const m = await nodeModel(checkpointFiles(cfg, tensors));
  return { m, r: await runPrompt(m, PROMPT, greedy) };
}

/** Largest |logit| difference relative to the largest |logit| (Granite's multipliers make logits large). */
function relDiff(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  const scale = Math.max(1, ...b.map((row) => Math.max(...Array.from(row, Math.abs))));
  return maxAbsDiff(a, b) / scale;
}

describe("each family vs the float64 HF-semantics reference", () => {
  for (const [name, cfg] of FAMILIES) {
    for (const layout of ["per-expert", "packed"] as const) {
      it(`${name}, ${layout} experts`, async () => {
        const tensors = buildTensors(cfg, { seed: 11, layout });
        const { m, r } = await run(cfg, tensors);
        const ref = referenceForward(cfg, tensors, [...PROMPT, ...r.greedyIds.slice(0, -1)]);
        expect(relDiff(r.logits, ref.logits.slice(0, PROMPT.length))).toBeLessThan(2e-5);
        // KV-cache decode equals the reference's full recompute of the longer sequence.
        expect(relDiff(r.greedyLogits, ref.logits.slice(PROMPT.length - 1))).toBeLessThan(2e-5);
        expect(Object.keys(r.routing).map(Number)).toEqual(m.spec.moeLayers);
        for (const L of m.spec.moeLayers) {
          r.routing[L].forEach((ids, t) =>
            expect([...ids].sort((a, b) => a - b)).toEqual([...ref.routing[L][t]].sort((a, b) => a - b)),
          );
        }
        // The MoE block fed the reference's block input (what /admin/moe and verify's moe_layer check).
        const L = m.spec.moeLayers[m.spec.moeLayers.length - 1];
        const { out, routing } = await m.model.moeBlock(
          L,
          Float32Array.from(ref.moeIn[L].flat()),
          m.experts,
          () => 0.5,
        );
        const refOut = ref.moeOut[L];
        expect(maxAbsDiff([out], [refOut.flat()])).toBeLessThan(1e-5 * Math.max(1, ...refOut.flat().map(Math.abs)));
        ref.weights[L].forEach((w, t) => {
          const ours = new Map(
            Array.from(routing.ids.subarray(t * routing.topK, (t + 1) * routing.topK), (id, j) => [
              id,
              routing.weights[t * routing.topK + j],
            ]),
          );
          ref.routing[L][t].forEach((id, j) => expect(ours.get(id)).toBeCloseTo(w[j], 5));
        });
      });
    }
  }
});

/**
 * Forces norm_topk_prob on, so the weights of identical experts sum to 1 (× routed scale). DeepSeek-V2
 * scales only when it does not renormalise (so a top-1 twin would scale): its scale is set to 1.
 */
const renormalised = (cfg: Config): Config => ({
  ...cfg,
  norm_topk_prob: true,
  ...(cfg.model_type === "deepseek_v2" ? { routed_scaling_factor: 1 } : {}),
});

describe("known by construction", () => {
  for (const [name, cfg0] of FAMILIES) {
    it(`${name}: identical experts equal the one-expert twin`, async () => {
      const cfg = renormalised(cfg0);
      const spec = parseConfig(cfg);
      const tensors = buildTensors(cfg, { seed: 5, identicalExperts: true });
      // The twin: same weights, one expert, top-1 (a dense model); DeepSeek keeps one group.
      const twinCfg: Config = { ...cfg, num_experts_per_tok: 1, n_group: 1, topk_group: 1 };
      for (const f of ["num_local_experts", "num_experts", "n_routed_experts"])
        if (f in cfg || f === "num_experts") twinCfg[f] = 1;
      const twin = new Map(tensors);
      const E = spec.nExperts;
      for (const [n, x] of tensors) {
        if (/\.experts\.(\d+)\./.test(n) && !/\.experts\.0\./.test(n)) twin.delete(n);
        else if (/(mlp\.gate\.weight|block_sparse_moe\.gate\.weight|router\.layer\.weight)$/.test(n))
          twin.set(n, { shape: [1, x.shape[1]], data: x.data.slice(0, x.shape[1]) });
        else if (n.endsWith("e_score_correction_bias")) twin.set(n, { shape: [1], data: x.data.slice(0, 1) });
        else if (x.shape.length === 3 && x.shape[0] === E)
          twin.set(n, { shape: [1, x.shape[1], x.shape[2]], data: x.data.slice(0, x.shape[1] * x.shape[2]) });
      }
      const a = await run(cfg, tensors);
      const b = await run(twinCfg, twin);
      expect(maxAbsDiff(a.r.logits, b.r.logits)).toBeLessThan(1e-5);
      expect(a.r.greedyIds).toEqual(b.r.greedyIds);
    });
  }

  for (const [name, cfg] of [
    ["qwen3_moe", QWEN3_MOE],
    ["deepseek_v3", { ...DEEPSEEK_V3_ODD, n_shared_experts: 0, first_k_dense_replace: 0 }],
  ] as const) {
    it(`${name}: MoE layers with identical experts equal dense layers with that MLP`, async () => {
      const moeCfg = renormalised(cfg);
      const spec = parseConfig(moeCfg);
      const tensors = buildTensors(moeCfg, { seed: 9, identicalExperts: true });
      const denseCfg: Config = {
        ...moeCfg,
        intermediate_size: spec.dFf,
        mlp_only_layers: [...Array(spec.nLayers).keys()],
        first_k_dense_replace: spec.nLayers,
      };
      const dense = new Map([...tensors].filter(([n]) => !/mlp\.(gate\.|experts)/.test(n)));
      for (const L of spec.moeLayers) {
        for (const [from, to] of [
          ["gate_proj", "gate_proj"],
          ["up_proj", "up_proj"],
          ["down_proj", "down_proj"],
        ])
          dense.set(
            `model.layers.${L}.mlp.${to}.weight`,
            tensors.get(`model.layers.${L}.mlp.experts.0.${from}.weight`)!,
          );
      }
      // A DeepSeek MoE layer scales its routed output by routed_scaling_factor: fold it into down_proj.
      const scale = spec.router.kind === "group-limited-topk" ? spec.router.routedScale : 1;
      for (const L of spec.moeLayers) {
        const d = dense.get(`model.layers.${L}.mlp.down_proj.weight`)!;
        dense.set(`model.layers.${L}.mlp.down_proj.weight`, { shape: d.shape, data: d.data.map((v) => v * scale) });
      }
      expect(parseConfig(denseCfg).moeLayers).toEqual([]);
      const a = await run(moeCfg, tensors);
      const b = await run(denseCfg, dense);
      expect(maxAbsDiff(a.r.logits, b.r.logits)).toBeLessThan(1e-5);
    });
  }

  const title =
    "qwen2_moe: a shared expert equal to the routed one, with a zero gate (sigmoid 0.5), adds half an expert";
  it(title, async () => {
    const cfg = { ...renormalised(QWEN2_MOE), shared_expert_intermediate_size: 16 };
    const tensors = buildTensors(cfg, { seed: 3, identicalExperts: true });
    const scaled = new Map(tensors);
    for (const L of parseConfig(cfg).moeLayers) {
      const p = `model.layers.${L}.mlp.`;
      for (const w of ["gate_proj", "up_proj", "down_proj"])
        tensors.set(`${p}shared_expert.${w}.weight`, tensors.get(`${p}experts.0.${w}.weight`)!);
      tensors.set(`${p}shared_expert_gate.weight`, { shape: [1, 32], data: new Float32Array(32) });
      // Twin: no shared expert, routed experts' down_proj × 1.5.
      for (let e = 0; e < 6; e++) {
        const d = tensors.get(`${p}experts.${e}.down_proj.weight`)!;
        scaled.set(`${p}experts.${e}.down_proj.weight`, { shape: d.shape, data: d.data.map((v) => v * 1.5) });
      }
      for (const w of [
        "shared_expert.gate_proj",
        "shared_expert.up_proj",
        "shared_expert.down_proj",
        "shared_expert_gate",
      ])
        scaled.delete(`${p}${w}.weight`);
    }
    const a = await run(cfg, tensors);
    const b = await run({ ...cfg, shared_expert_intermediate_size: 0 }, scaled);
    expect(maxAbsDiff(a.r.logits, b.r.logits)).toBeLessThan(1e-5);
  });

  describe("granitemoe: multipliers are rescaled weights of a Mixtral twin", () => {
    /** Granite tensors renamed to Mixtral's v5 packed layout, with weights rescaled by the multipliers. */
    function mixtralTwin(cfg: Config, t: Tensors): [Config, Tensors] {
      const spec = parseConfig(cfg);
      const { embedding, residual } = spec.multipliers;
      const attnScale = spec.attention.scale * Math.sqrt(spec.headDim); // Mixtral uses headDim^-0.5
      const out: Tensors = new Map();
      const scaled = (x: { shape: number[]; data: Float32Array }, f: number) => ({
        shape: x.shape,
        data: x.data.map((v) => v * f),
      });
      for (const [n, x] of t) {
        const name = n
          .replace("block_sparse_moe.router.layer.weight", "mlp.gate.weight")
          .replace("block_sparse_moe.input_linear.weight", "mlp.experts.gate_up_proj")
          .replace("block_sparse_moe.output_linear.weight", "mlp.experts.down_proj");
        let f = 1;
        if (name.endsWith("q_proj.weight")) f = attnScale;
        if (name.endsWith("o_proj.weight") || name.endsWith("mlp.experts.down_proj")) f = residual;
        if (name === "model.embed_tokens.weight") {
          out.set("lm_head.weight", scaled(x, 1 / spec.multipliers.logitsScale)); // Granite ties; the twin unties
          f = embedding;
        }
        out.set(name, scaled(x, f));
      }
      const mix: Config = {
        ...MIXTRAL,
        num_local_experts: spec.nExperts,
        num_experts_per_tok: spec.topK,
        intermediate_size: spec.dFf,
        tie_word_embeddings: false,
        rms_norm_eps: spec.rmsEps,
      };
      return [mix, out];
    }

    const title =
      "all multipliers 1 (attention_multiplier = head_dim^-0.5): Granite equals Mixtral with renamed tensors";
    it(title, async () => {
      const cfg = {
        ...GRANITE_MOE,
        embedding_multiplier: 1,
        residual_multiplier: 1,
        logits_scaling: 1,
        attention_multiplier: 1 / Math.sqrt(8),
      };
      const t = buildTensors(cfg, { seed: 21 });
      const [mix, mt] = mixtralTwin(cfg, t);
      const a = await run(cfg, t);
      const b = await run(mix, mt);
      expect(maxAbsDiff(a.r.logits, b.r.logits)).toBeLessThan(1e-5);
      expect(a.r.greedyIds).toEqual(b.r.greedyIds);
    });

    it("published-style multipliers (12, 0.015625, 0.22, 6) equal the rescaled twin", async () => {
      const t = buildTensors(GRANITE_MOE, { seed: 22 });
      const [mix, mt] = mixtralTwin(GRANITE_MOE, t);
      const a = await run(GRANITE_MOE, t);
      const b = await run(mix, mt);
      expect(relDiff(a.r.logits, b.r.logits)).toBeLessThan(1e-5);
      // logits_scaling divides the logits exactly.
      const c = await run({ ...GRANITE_MOE, logits_scaling: 1 }, t);
      expect(
        relDiff(
          a.r.logits.map((row) => row.map((v) => v * 6)),
          c.r.logits,
        ),
      ).toBeLessThan(1e-6);
    });
  });

  describe("hand-set routers force a routing", () => {
    it("deepseek_v3: groups, bias for selection only, routed scale and the shared expert", async () => {
      const cfg = DEEPSEEK_V3;
      const tensors = buildTensors(cfg, { seed: 4 });
      const H = 64;
      const x = new Float32Array(H);
      x[0] = 1; // the block input: e0 of the model dimension
      // Router rows: expert e's logit = w[e] (only column 0 is set), so sigmoid scores are known.
      const p = [0.9, 0.1, 0.2, 0.2, 0.6, 0.55, 0.3, 0.3, 0.7, 0.65, 0.1, 0.1, 0.2, 0.3, 0.4, 0.1]; // groups of 4
      const router = new Float32Array(16 * H);
      p.forEach((pe, e) => (router[e * H] = Math.log(pe / (1 - pe))));
      tensors.set("model.layers.1.mlp.gate.weight", { shape: [16, H], data: router });
      // Bias lifts expert 13 (group 3) into the top-2 of its group and group 3 into the kept two.
      const bias = new Float32Array(16);
      bias[13] = 0.9;
      tensors.set("model.layers.1.mlp.gate.e_score_correction_bias", { shape: [16], data: bias });
      // Group scores (top-2 of biased): g0 1.1, g1 1.15, g2 1.35, g3 1.6 → keep g3, g2.
      // Top-4 biased inside: 13 (1.2), 8 (0.7), 9 (0.65), 14 (0.4).
      const m = await nodeModel(checkpointFiles(cfg, tensors));
      const { out, routing } = await m.model.moeBlock(1, x, m.experts, () => 0.5);
      expect(Array.from(routing.ids)).toEqual([13, 8, 9, 14]);
      const unbiased = [0.3, 0.7, 0.65, 0.4];
      const sum = unbiased.reduce((a, b) => a + b, 0);
      Array.from(routing.weights).forEach((w, j) => expect(w).toBeCloseTo((2.5 * unbiased[j]) / sum, 5));
      // Output = Σ w · expert(x) + shared(x), computed here with plain loops.
      const { ckpt, spec } = await openModel(memoryFileStore(checkpointFiles(cfg, tensors)));
      const mlp = (w1: ArrayLike<number>, w3: ArrayLike<number>, w2: ArrayLike<number>, I: number) => {
        const a = Array.from({ length: I }, (_, i) => {
          const g = w1[i * H]; // x = e0 picks column 0
          return (g / (1 + Math.exp(-g))) * w3[i * H];
        });
        return Array.from({ length: H }, (_, o) => a.reduce((s, ai, i) => s + w2[o * I + i] * ai, 0));
      };
      const expect_ = new Array<number>(H).fill(0);
      for (let j = 0; j < 4; j++) {
        const w = await loadExpertWeights(ckpt, spec, 1, routing.ids[j]);
        mlp(w.w1, w.w3, w.w2, 32).forEach((v, o) => (expect_[o] += routing.weights[j] * v));
      }
      const sh = (n: string) => tensors.get(`model.layers.1.mlp.shared_experts.${n}.weight`)!.data;
      mlp(sh("gate_proj"), sh("up_proj"), sh("down_proj"), 32).forEach((v, o) => (expect_[o] += v));
      expect(maxAbsDiff([out], [expect_])).toBeLessThan(1e-5);
    });

    it("qwen2_moe: softmax top-k picks the forced experts, and the shared gate scales the shared expert", async () => {
      const cfg = QWEN2_MOE;
      const tensors = buildTensors(cfg, { seed: 8 });
      const H = 32;
      const x = new Float32Array(H);
      x[3] = 2;
      const router = new Float32Array(6 * H);
      [0, 0, 1.5, 0, 1, 0].forEach((l, e) => (router[e * H + 3] = l / 2)); // logits [0, 0, 1.5, 0, 1, 0]
      tensors.set("model.layers.0.mlp.gate.weight", { shape: [6, H], data: router });
      const m = await nodeModel(checkpointFiles(cfg, tensors));
      const { routing } = await m.model.moeBlock(0, x, m.experts, () => 0.5);
      expect(Array.from(routing.ids)).toEqual([2, 4]);
      const z = 4 + Math.exp(1.5) + Math.E;
      expect(routing.weights[0]).toBeCloseTo(Math.exp(1.5) / z, 6); // norm_topk_prob false: raw probabilities
      expect(routing.weights[1]).toBeCloseTo(Math.E / z, 6);
    });
  });
});

describe("routing knobs through the forward pass", () => {
  it("off by default; capacity drops are skipped, temperature reweights, noise reroutes", async () => {
    const cfg = QWEN3_MOE;
    const files = checkpointFiles(cfg, buildTensors(cfg, { seed: 2 }));
    const base = await nodeModel(files);
    const off = await runPrompt(base, PROMPT);
    expect(base.model.routing).toEqual(ROUTING_OFF);

    // Capacity factor 0.25: 7 tokens × top-2 over 8 experts → capacity 1 per expert, so most slots drop.
    const capped = await nodeModel(files, { ...ROUTING_OFF, capacityFactor: 0.25 });
    let seen: Routing | null = null;
    const s = capped.model.startSession(PROMPT.length);
    await capped.model.forward(s, PROMPT, capped.experts, () => 0.5, { onRouting: (_, r) => (seen ??= r) });
    capped.model.endSession(s);
    const r = seen as unknown as Routing;
    expect(r.dropped).toBe(PROMPT.length * 2 - 8);
    const load = new Map<number, number>();
    r.ids.forEach((e) => e >= 0 && load.set(e, (load.get(e) ?? 0) + 1));
    expect(Math.max(...load.values())).toBe(1);
    // The MoE block then sums only the kept assignments.
    const x = Float32Array.from({ length: 12 * 32 }, (_, i) => Math.sin(i)); // 12 tokens: 24 slots, 8 kept
    // The block reports the layer's tokens and drops to the metrics sink (src/platform/events.ts).
    const reports: [number, number, number][] = [];
    const noop = () => {};
    setExpertEventSink({
      routed: (...r) => reports.push(r),
      layerCall: noop,
      failover: noop,
      rerouted: noop,
      rpcWait: noop,
    });
    const { out, routing } = await capped.model
      .moeBlock(0, x, capped.experts, () => 0.5)
      .finally(() => setExpertEventSink(null));
    expect(reports).toEqual([[0, 12, 24 - 8]]);
    const flat = flattenRouting(routing);
    const tokens = Array.from(flat.tokenOf);
    const manual = await capped.experts(
      0,
      flat.routing,
      Float32Array.from(tokens.flatMap((t) => Array.from(x.subarray(t * 32, (t + 1) * 32)))),
    );
    const summed = new Float32Array(out.length);
    tokens.forEach((t, i) => manual.subarray(i * 32, (i + 1) * 32).forEach((v, d) => (summed[t * 32 + d] += v)));
    expect(routing.dropped).toBeGreaterThan(0);
    expect(maxAbsDiff([out], [Array.from(summed)])).toBeLessThan(1e-6);

    // Temperature changes the weights (and so the logits), not the softmax ranking.
    const hot = await nodeModel(files, { ...ROUTING_OFF, temperature: 4 });
    const warm = await runPrompt(hot, PROMPT);
    for (const L of base.spec.moeLayers) expect(warm.routing[L]).toEqual(off.routing[L]);
    expect(maxAbsDiff(warm.logits, off.logits)).toBeGreaterThan(1e-4);

    // Noise is drawn from the forward's rng.
    const noisy = await nodeModel(files, { ...ROUTING_OFF, noiseStd: 10 });
    let u = 0;
    const changed = await runPrompt(noisy, PROMPT, 0, () => (u = (u * 9301 + 49297) % 233280) / 233280);
    expect(JSON.stringify(changed.routing)).not.toEqual(JSON.stringify(off.routing));
  });
});

describe("dense layers and budgets", () => {
  it("loading an expert of a dense layer fails clearly; only moeLayers have experts", async () => {
    const tensors = buildTensors(DEEPSEEK_V3, { seed: 1 });
    const { spec, ckpt } = await openModel(memoryFileStore(checkpointFiles(DEEPSEEK_V3, tensors)));
    expect(spec.moeLayers).toEqual([1, 2]);
    await expect(loadExpertWeights(ckpt, spec, 0, 3)).rejects.toThrow(
      /layer 0 of this deepseek_v3 model is a dense MLP layer \(size 128\).*spec\.moeLayers \[1, 2\]/,
    );
    await expect(loadExpertWeights(ckpt, spec, 1, 3)).resolves.toMatchObject({ w1: expect.any(Float32Array) });
  });

  const title =
    "denseBytes counts every tensor but the routed experts (attention, routers, biases, dense MLPs, shared experts)";
  it(title, () => {
    for (const [, cfg] of FAMILIES) {
      const spec = parseConfig(cfg);
      const tensors = buildTensors(cfg, { seed: 1 });
      let routed = 0;
      let all = 0;
      for (const [n, x] of tensors) {
        const bytes = x.data.byteLength;
        all += bytes;
        if (/\.experts\.\d+\.|\.experts\.(gate_up|down)_proj$|block_sparse_moe\.(input|output)_linear/.test(n))
          routed += bytes;
      }
      expect(denseBytes(spec)).toBe(all - routed);
      expect(expertBytesF32(spec) * spec.moeLayers.length * spec.nExperts).toBe(routed);
    }
  });
});
