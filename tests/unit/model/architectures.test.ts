import { describe, expect, it } from "vitest";
import {
  denseBytes,
  expertBytesF32,
  expertTensorRefs,
  loadDenseWeights,
  loadExpertWeights,
  openModel,
  validateCheckpoint,
} from "../../../src/model/architectures";
import type { ExpertWeights } from "../../../src/model/architectures";
import { parseConfig } from "../../../src/model/config";
import type { ModelSpec } from "../../../src/model/config";
import { Checkpoint, memoryFileStore } from "../../../src/model/safetensors";
import { writeSafetensors } from "../../../src/model/safetensors-writer";
import type { TensorToWrite } from "../../../src/model/safetensors-writer";
import { expectModelError, FIXTURES, fixtureFiles, fixtureJson, rawTensors, shard } from "./helpers";
import type { FixtureName } from "./helpers";

const EXPERT = /^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$/;

async function fixture(name: FixtureName) {
  const files = fixtureFiles(name);
  const spec = parseConfig(fixtureJson(name, "config.json"));
  const ckpt = await Checkpoint.open(memoryFileStore(files, name));
  return { files, spec, ckpt };
}

/** Rewrites a per-expert checkpoint in the transformers v5 packed layout (gate_up_proj, down_proj, mlp.gate). */
async function packed(name: FixtureName): Promise<Record<string, Uint8Array>> {
  const { files, spec, ckpt } = await fixture(name);
  const tensors = await rawTensors(ckpt, files);
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const out: TensorToWrite[] = [];
  for (const t of tensors) {
    if (EXPERT.test(t.name)) continue;
    out.push({ ...t, name: t.name.replace(".block_sparse_moe.gate.", ".mlp.gate.") });
  }
  const { dModel: H, dFf: I, nExperts: E } = spec;
  const cat = (parts: Uint8Array[]) => {
    const all = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.byteLength;
    }
    return all;
  };
  const data = (L: number, e: number, w: string) =>
    byName.get(`model.layers.${L}.block_sparse_moe.experts.${e}.${w}.weight`)!.data as Uint8Array;
  const dtype = tensors[0].dtype;
  for (let L = 0; L < spec.nLayers; L++) {
    const range = [...Array(E).keys()];
    // torch.cat([stack(w1), stack(w3)], dim=1): per expert, I gate rows then I up rows.
    out.push({
      name: `model.layers.${L}.mlp.experts.gate_up_proj`,
      dtype,
      shape: [E, 2 * I, H],
      data: cat(range.flatMap((e) => [data(L, e, "w1"), data(L, e, "w3")])),
    });
    out.push({
      name: `model.layers.${L}.mlp.experts.down_proj`,
      dtype,
      shape: [E, H, I],
      data: cat(range.map((e) => data(L, e, "w2"))),
    });
  }
  return { "config.json": files["config.json"], "model.safetensors": writeSafetensors(out) };
}

/** Reference MoE block (f64 accumulation) on the golden input: Mixtral routing + SwiGLU experts. */
function moeReference(spec: ModelSpec, router: Float32Array, experts: ExpertWeights[], x: number[]) {
  const { dModel: H, dFf: I, nExperts: E, topK } = spec;
  const logits = Array.from({ length: E }, (_, e) => x.reduce((s, xi, j) => s + xi * router[e * H + j], 0));
  const max = Math.max(...logits);
  const p = logits.map((l) => Math.exp(l - max));
  const ids = [...p.keys()].sort((a, b) => p[b] - p[a]).slice(0, topK);
  const sum = ids.reduce((s, i) => s + p[i], 0);
  const weights = ids.map((i) => p[i] / sum);
  const out = new Array<number>(H).fill(0);
  ids.forEach((id, k) => {
    const { w1, w3, w2 } = experts[id];
    const h = Array.from({ length: I }, (_, i) => {
      let g = 0;
      let u = 0;
      for (let j = 0; j < H; j++) {
        g += w1[i * H + j] * x[j];
        u += w3[i * H + j] * x[j];
      }
      return (g / (1 + Math.exp(-g))) * u;
    });
    for (let o = 0; o < H; o++) {
      let s = 0;
      for (let i = 0; i < I; i++) s += w2[o * I + i] * h[i];
      out[o] += weights[k] * s;
    }
  });
  return { ids, weights, out };
}

interface Golden {
  moe_layer: {
    layer: number;
    input: number[][][];
    expert_ids: number[][];
    expert_weights: number[][];
    output: number[][][];
  };
}

describe("Mixtral adapter", () => {
  for (const name of FIXTURES) {
    describe(name, () => {
      it("loads dense weights with config shapes", async () => {
        const { spec, ckpt } = await fixture(name);
        const w = await loadDenseWeights(ckpt, spec);
        expect(w.embed.length).toBe(256 * 64);
        expect(w.finalNorm.length).toBe(64);
        expect(w.lmHead?.length).toBe(256 * 64);
        expect(w.layers.length).toBe(2);
        const l1 = w.layers[1];
        if (l1.attention.kind !== "gqa" || l1.ffn.kind !== "moe")
          throw new Error("expected GQA attention and an MoE layer");
        const a = l1.attention;
        expect([l1.attnNorm, l1.mlpNorm, a.wq, a.wk, a.wv, a.wo, l1.ffn.router].map((x) => x.length)).toEqual([
          64,
          64,
          64 * 64,
          32 * 64,
          32 * 64,
          64 * 64,
          8 * 64,
        ]);
        expect([a.bq, a.bk, a.bv, a.bo, a.qNorm, a.kNorm, l1.ffn.routerBias, l1.ffn.shared]).toEqual([
          null,
          null,
          null,
          null,
          null,
          null,
          null,
          null,
        ]);
        expect(a.wk).toEqual(await ckpt.readF32("model.layers.1.self_attn.k_proj.weight"));
        expect(l1.ffn.router).toEqual(await ckpt.readF32("model.layers.1.block_sparse_moe.gate.weight"));
      });

      it("references per-expert tensors whole", async () => {
        const { spec, ckpt } = await fixture(name);
        expect(expertTensorRefs(ckpt, spec, 1, 5)).toEqual({
          w1: {
            tensor: "model.layers.1.block_sparse_moe.experts.5.w1.weight",
            firstRow: 0,
            nRows: 96,
            shape: [96, 64],
          },
          w3: {
            tensor: "model.layers.1.block_sparse_moe.experts.5.w3.weight",
            firstRow: 0,
            nRows: 96,
            shape: [96, 64],
          },
          w2: {
            tensor: "model.layers.1.block_sparse_moe.experts.5.w2.weight",
            firstRow: 0,
            nRows: 64,
            shape: [64, 96],
          },
        });
        expect(() => expertTensorRefs(ckpt, spec, 2, 0)).toThrow(RangeError);
        expect(() => expertTensorRefs(ckpt, spec, 0, 8)).toThrow(RangeError);
      });

      it("reads identical experts and routers from the packed (v5) layout", async () => {
        const { spec, ckpt } = await fixture(name);
        const store = memoryFileStore(await packed(name), "packed");
        const { spec: spec2, ckpt: packedCkpt } = await openModel(store);
        expect(spec2).toEqual(spec);
        expect(packedCkpt.has("model.layers.0.block_sparse_moe.experts.0.w1.weight")).toBe(false);
        expect(expertTensorRefs(packedCkpt, spec, 1, 3)).toEqual({
          w1: { tensor: "model.layers.1.mlp.experts.gate_up_proj", firstRow: 3 * 192, nRows: 96, shape: [96, 64] },
          w3: { tensor: "model.layers.1.mlp.experts.gate_up_proj", firstRow: 3 * 192 + 96, nRows: 96, shape: [96, 64] },
          w2: { tensor: "model.layers.1.mlp.experts.down_proj", firstRow: 3 * 64, nRows: 64, shape: [64, 96] },
        });
        for (let L = 0; L < spec.nLayers; L++) {
          for (let e = 0; e < spec.nExperts; e++) {
            expect(await loadExpertWeights(packedCkpt, spec, L, e)).toEqual(await loadExpertWeights(ckpt, spec, L, e));
          }
        }
        const [a, b] = await Promise.all([loadDenseWeights(ckpt, spec), loadDenseWeights(packedCkpt, spec)]);
        expect(b).toEqual(a);
      });

      it("reproduces the golden MoE block from the loaded router and experts (both layouts)", async () => {
        const golden = fixtureJson<Golden>(name, "golden.json").moe_layer;
        const { spec, ckpt } = await fixture(name);
        const packedCkpt = (await openModel(memoryFileStore(await packed(name)))).ckpt;
        for (const c of [ckpt, packedCkpt]) {
          const ffn = (await loadDenseWeights(c, spec)).layers[golden.layer].ffn;
          if (ffn.kind !== "moe") throw new Error("expected an MoE layer");
          const router = ffn.router;
          const experts = await Promise.all(
            [...Array(spec.nExperts).keys()].map((e) => loadExpertWeights(c, spec, golden.layer, e)),
          );
          golden.input[0].forEach((x, t) => {
            const r = moeReference(spec, router, experts, x);
            expect(r.ids).toEqual(golden.expert_ids[t]);
            r.weights.forEach((w, k) => expect(Math.abs(w - golden.expert_weights[t][k])).toBeLessThan(1e-5));
            const maxErr = Math.max(...r.out.map((v, o) => Math.abs(v - golden.output[0][t][o])));
            expect(maxErr).toBeLessThan(1e-5);
          });
        }
      });
    });
  }

  it("budgets match the bytes of the f32 fixture", async () => {
    const { spec, ckpt } = await fixture("mixtral-tiny");
    const all = [...ckpt.tensors.values()];
    const expertBytes = all.filter((t) => EXPERT.test(t.name)).reduce((n, t) => n + t.byteLength, 0);
    const dense = all.filter((t) => !EXPERT.test(t.name)).reduce((n, t) => n + t.byteLength, 0);
    expect(expertBytesF32(spec)).toBe(3 * 96 * 64 * 4);
    expect(expertBytesF32(spec) * spec.nLayers * spec.nExperts).toBe(expertBytes);
    expect(denseBytes(spec)).toBe(dense);
    expect(denseBytes({ ...spec, tieEmbeddings: true })).toBe(dense - 256 * 64 * 4);
    // bf16 files hold half the bytes; budgets count f32.
    const bf16 = await fixture("mixtral-tiny-bf16");
    expect(denseBytes(bf16.spec)).toBe(dense);
  });

  it("treats a tied model's missing lm_head as the embedding", async () => {
    const { files, spec, ckpt } = await fixture("mixtral-tiny");
    const tensors = (await rawTensors(ckpt, files)).filter((t) => t.name !== "lm_head.weight");
    const untied = await Checkpoint.open(memoryFileStore({ "model.safetensors": writeSafetensors(tensors) }));
    expect((await loadDenseWeights(untied, { ...spec, tieEmbeddings: true })).lmHead).toBeNull();
    await expectModelError(loadDenseWeights(untied, spec), [
      "model.safetensors",
      '"lm_head.weight"',
      "tie_word_embeddings",
    ]);
  });

  describe("errors", () => {
    it("a shape that disagrees with the config names the shard, tensor and both shapes", async () => {
      const { files, spec, ckpt } = await fixture("mixtral-tiny");
      const tensors = (await rawTensors(ckpt, files)).map((t) =>
        t.name === "model.layers.1.self_attn.q_proj.weight"
          ? { ...t, shape: [64, 63], data: t.data.slice(0, 64 * 63 * 4) }
          : t,
      );
      // Put q_proj of layer 1 in the second shard.
      tensors.sort(
        (a, b) =>
          Number(a.name === "model.layers.1.self_attn.q_proj.weight") -
          Number(b.name === "model.layers.1.self_attn.q_proj.weight"),
      );
      const bad = await Checkpoint.open(memoryFileStore(shard(tensors, 2)));
      const err = await expectModelError(loadDenseWeights(bad, spec), []);
      expect(err.message).toBe(
        'model-00002-of-00002.safetensors: tensor "model.layers.1.self_attn.q_proj.weight" ' +
          "has shape [64, 63], config expects [64, 64]",
      );
      expect(err).toMatchObject({
        file: "model-00002-of-00002.safetensors",
        tensor: "model.layers.1.self_attn.q_proj.weight",
      });
      await expectModelError(() => validateCheckpoint(bad, spec), ['"model.layers.1.self_attn.q_proj.weight"']);
    });

    it("an expert tensor missing or of the wrong shape", async () => {
      const { files, spec, ckpt } = await fixture("mixtral-tiny-bf16");
      const tensors = (await rawTensors(ckpt, files)).filter(
        (t) => t.name !== "model.layers.0.block_sparse_moe.experts.3.w2.weight",
      );
      const bad = await Checkpoint.open(memoryFileStore({ "model.safetensors": writeSafetensors(tensors) }));
      await expectModelError(
        () => expertTensorRefs(bad, spec, 0, 3),
        ["model.safetensors", '"model.layers.0.block_sparse_moe.experts.3.w2.weight"', "not found"],
      );
      await expectModelError(loadExpertWeights(bad, spec, 0, 3), [
        '"model.layers.0.block_sparse_moe.experts.3.w2.weight"',
      ]);
      // A config whose intermediate_size disagrees with the files: a transposed-w2-sized mistake.
      const wrong = { ...spec, dFf: 64 };
      await expectModelError(
        () => expertTensorRefs(ckpt, wrong, 1, 0),
        [
          "model.safetensors",
          '"model.layers.1.block_sparse_moe.experts.0.w1.weight"',
          "[96, 64]",
          "config expects [64, 64]",
        ],
      );
    });

    it("packed tensors of the wrong shape", async () => {
      const files = await packed("mixtral-tiny");
      const spec = parseConfig(fixtureJson("mixtral-tiny", "config.json"));
      const ckpt = await Checkpoint.open(memoryFileStore(files));
      await expectModelError(
        () => expertTensorRefs(ckpt, { ...spec, nExperts: 4, topK: 2 }, 0, 1),
        [
          "model.safetensors",
          '"model.layers.0.mlp.experts.gate_up_proj"',
          "[8, 192, 64]",
          "config expects [4, 192, 64]",
        ],
      );
    });

    it("a layer with no experts in either layout", async () => {
      const { files, spec, ckpt } = await fixture("mixtral-tiny");
      const tensors = (await rawTensors(ckpt, files)).filter(
        (t) => !t.name.startsWith("model.layers.1.block_sparse_moe.experts."),
      );
      const bad = await Checkpoint.open(memoryFileStore({ "model.safetensors": writeSafetensors(tensors) }));
      await expectModelError(
        () => expertTensorRefs(bad, spec, 1, 0),
        [
          "model.safetensors",
          "layer 1",
          '"model.layers.1.block_sparse_moe.experts.0.w1.weight"',
          '"model.layers.1.mlp.experts.gate_up_proj"',
        ],
      );
      await expectModelError(openModel(memoryFileStore({ ...files, "model.safetensors": writeSafetensors(tensors) })), [
        "layer 1",
      ]);
    });

    it("openModel: config.json missing, not JSON, invalid, or disagreeing with the weights", async () => {
      const files = fixtureFiles("mixtral-tiny");
      const { "config.json": config, ...weights } = files;
      await expectModelError(openModel(memoryFileStore(weights, "models/tiny/")), [
        "config.json",
        "models/tiny/",
        "not found",
      ]);
      await expectModelError(
        openModel(memoryFileStore({ ...weights, "config.json": new TextEncoder().encode("{ nope") })),
        ["config.json", "JSON"],
      );
      const cfg = JSON.parse(new TextDecoder().decode(config));
      const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
      await expectModelError(
        openModel(memoryFileStore({ ...weights, "config.json": enc({ ...cfg, num_local_experts: "8" }) })),
        ["config.json", "num_local_experts"],
      );
      await expectModelError(
        openModel(memoryFileStore({ ...weights, "config.json": enc({ ...cfg, vocab_size: 300 }) })),
        ["model.safetensors", '"model.embed_tokens.weight"', "[256, 64]", "config expects [300, 64]"],
      );
      const ok = await openModel(memoryFileStore(files));
      expect(ok.spec.nExperts).toBe(8);
      expect(ok.ckpt.tensors.size).toBe(65);
    });
  });
});
