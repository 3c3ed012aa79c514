/**
 * scripts/make-model.ts: a checkpoint of exactly a published config's shape that the model loader
 * accepts, the same bytes every run; and the full granite-3.1-1b-a400m layout (checked from the
 * tensor list, without writing 1.4 GB).
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { checkpointTensors, denseBytes, openModel } from "../../../src/model/architectures";
import { parseConfig } from "../../../src/model/config";
import { memoryFileStore } from "../../../src/model/safetensors";
import { adjustedConfig, makeModel, resolveConfig } from "../../../scripts/lib/make-model";
import { hashModelDir } from "../../../scripts/lib/demo-model";
import { referenceForward } from "../../support/reference-forward";

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), "edge-moe-make-model-"));
  dirs.push(d);
  return d;
};
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function filesOf(dir: string, names: string[]): Record<string, Uint8Array> {
  return Object.fromEntries(names.map((n) => [n, new Uint8Array(readFileSync(join(dir, n)))]));
}

const GRANITE = resolveConfig("granite-3.1-1b-a400m");
const SMALL = {
  hidden_size: 64,
  intermediate_size: 32,
  num_local_experts: 4,
  num_experts_per_tok: 2,
  vocab_size: 1003,
};

describe("make-model", () => {
  it.each(["int8", "bf16"] as const)(
    "writes a %s granite-layout checkpoint that openModel accepts, with the config's shapes",
    async (dtype) => {
      const dir = join(tmp(), "m");
      const s = makeModel(GRANITE, dir, { layers: 2, dtype, set: SMALL, maxShardBytes: 64 * 1024 });
      expect(s.files.filter((f) => f.name.endsWith(".safetensors")).length).toBeGreaterThan(1); // sharded
      const { spec, ckpt } = await openModel(
        memoryFileStore(
          filesOf(
            dir,
            s.files.map((f) => f.name),
          ),
        ),
      );
      expect(spec).toMatchObject({
        arch: "granitemoe",
        nLayers: 2,
        dModel: 64,
        vocabSize: 1003,
        nExperts: 4,
        topK: 2,
        tieEmbeddings: true,
      });
      expect(spec.multipliers).toEqual({ embedding: 12, residual: 0.22, logitsScale: 6 });
      expect(ckpt.info("model.embed_tokens.weight")).toMatchObject({ dtype: "BF16", shape: [1003, 64] });
      expect(ckpt.has("lm_head.weight")).toBe(false); // tied
      const experts = "model.layers.1.block_sparse_moe.input_linear";
      if (dtype === "int8") {
        expect(ckpt.info(`${experts}.qweight`)).toMatchObject({ dtype: "I8", shape: [4, 64, 64] });
        expect(ckpt.info(`${experts}.scales`)).toMatchObject({ dtype: "F32", shape: [4, 64] });
      } else {
        expect(ckpt.info(`${experts}.weight`)).toMatchObject({ dtype: "BF16", shape: [4, 64, 64] });
      }
      // Norms 1; embeddings small (granite multiplies them by 12); projections gain/√fan_in
      // (o_proj 0.5, routed experts' down 3).
      expect([...(await ckpt.readF32("model.layers.0.input_layernorm.weight"))].every((v) => v === 1)).toBe(true);
      const std = (a: Float32Array) => Math.sqrt(a.reduce((x, v) => x + v * v, 0) / a.length);
      const near = (got: number, want: number) => expect(Math.abs(got / want - 1)).toBeLessThan(0.1);
      near(std(await ckpt.readF32("model.embed_tokens.weight")), 0.05 / 12); // input rms 0.05 after × 12
      near(std(await ckpt.readF32("model.layers.0.self_attn.q_proj.weight")), 1 / 8);
      near(std(await ckpt.readF32("model.layers.0.self_attn.o_proj.weight")), 0.5 / 8);
      if (dtype === "bf16")
        near(std(await ckpt.readF32("model.layers.0.block_sparse_moe.output_linear.weight")), 3 / Math.sqrt(32));
      const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
      expect(cfg).toMatchObject({
        bos_token_id: 1,
        eos_token_id: 2,
        torch_dtype: "bfloat16",
        attention_multiplier: 0.015625,
      });
    },
  );

  it("writes the same bytes every run and keeps a complete directory", () => {
    const [a, b] = [join(tmp(), "a"), join(tmp(), "b")];
    makeModel(GRANITE, a, { layers: 1, set: SMALL, seed: 3 });
    makeModel(GRANITE, b, { layers: 1, set: SMALL, seed: 3 });
    expect(hashModelDir(a)).toEqual(hashModelDir(b));
    expect(makeModel(GRANITE, a, { layers: 1, set: SMALL, seed: 3 }).skipped).toBe(true);
    expect(makeModel(GRANITE, a, { layers: 1, set: SMALL, seed: 4 }).skipped).toBe(false);
  });

  it("lays out the full granite-3.1-1b-a400m: 24 layers × 32 experts, vocabulary 49155, tied", () => {
    const published = JSON.parse(readFileSync(GRANITE, "utf8")) as Record<string, unknown>;
    const spec = parseConfig(adjustedConfig(published, {}, { bos: 1, eos: 2 }));
    expect(spec).toMatchObject({
      nLayers: 24,
      nExperts: 32,
      topK: 8,
      vocabSize: 49155,
      dModel: 1024,
      dFf: 512,
      tieEmbeddings: true,
    });
    const tensors = checkpointTensors(spec);
    const params = tensors.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
    const expertParams = tensors
      .filter((t) => t.part === "expert")
      .reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
    expect(tensors.find((t) => t.name === "model.layers.23.block_sparse_moe.input_linear.weight")?.shape).toEqual([
      32, 1024, 1024,
    ]);
    expect(tensors.find((t) => t.name === "model.layers.23.block_sparse_moe.output_linear.weight")?.shape).toEqual([
      32, 1024, 512,
    ]);
    expect(expertParams).toBe(24 * 32 * 3 * 512 * 1024);
    expect((params - expertParams) * 4).toBe(denseBytes(spec)); // the loader's own count of dense bytes
    // embed + final norm + 24 × (2 norms + q, o [1024²] + k, v [512 × 1024] + router [32 × 1024] + experts)
    const perLayer = 2 * 1024 + 2 * 1024 * 1024 + 2 * 512 * 1024 + 32 * 1024 + 32 * 3 * 512 * 1024;
    expect(params).toBe(49155 * 1024 + 1024 + 24 * perLayer); // 1.33 B
  });

  it("keeps activations O(1) through granite's 24 layers and greedy tokens varied (float64 reference)", async () => {
    const dir = join(tmp(), "deep");
    const set = { ...SMALL, hidden_size: 128, intermediate_size: 64, num_local_experts: 8 };
    const s = makeModel(GRANITE, dir, { dtype: "bf16", set });
    const { ckpt } = await openModel(
      memoryFileStore(
        filesOf(
          dir,
          s.files.map((f) => f.name),
        ),
      ),
    );
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [name, t] of ckpt.tensors) tensors.set(name, { shape: t.shape, data: await ckpt.readF32(name) });
    const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
    const tokens = [1, 491, 28, 910, 460, 368, 804, 315, 837, 264, 369, 229];
    const r = referenceForward(cfg as never, tensors, tokens);
    const rms = (v: number[]) => Math.sqrt(v.reduce((a, x) => a + x * x, 0) / v.length);
    for (let layer = 0; layer < 24; layer++) {
      for (const out of r.moeOut[layer]) {
        expect(rms(out), `layer ${layer}`).toBeGreaterThan(0.2);
        expect(rms(out), `layer ${layer}`).toBeLessThan(5);
      }
    }
    const greedy = r.logits.map((row) => row.indexOf(Math.max(...row)));
    expect(r.logits.flat().every(Number.isFinite)).toBe(true);
    expect(new Set(greedy).size).toBeGreaterThan(6); // not one token everywhere
    expect(greedy.filter((g, t) => g === tokens[t]).length).toBeLessThan(4); // not an echo of the input
  });
});
