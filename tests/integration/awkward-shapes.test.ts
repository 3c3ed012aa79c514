/**
 * `verify` on HF-format checkpoints with awkward shapes, through the real serving path: the
 * format in general, not the fixtures. The goldens come from our float64 HF-semantics reference
 * (tests/unit/model/reference-forward.ts — not third-party; the third-party goldens are the
 * fixtures), written in the fixtures' golden.json format and checked by the same verify code.
 */
import { describe, expect, it } from "vitest";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { verifyFixture } from "../../scripts/lib/verify-lib";
import { writeSafetensors } from "../../src/model/safetensors-writer";
import { parseConfig } from "../../src/model/config";
import { buildTensors, type Tensors } from "../support/family-checkpoints";
import type { Config } from "../support/family-configs";
import { referenceForward } from "../support/reference-forward";

/** Odd sizes, one KV head, top-3 of 5 experts. */
const AWKWARD_MIXTRAL: Config = {
  architectures: ["MixtralForCausalLM"],
  model_type: "mixtral",
  vocab_size: 97,
  hidden_size: 36,
  intermediate_size: 53,
  num_hidden_layers: 3,
  num_attention_heads: 3,
  num_key_value_heads: 1,
  num_local_experts: 5,
  num_experts_per_tok: 3,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  max_position_embeddings: 256,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  sliding_window: null,
  torch_dtype: "float32",
};

/** Writes the model sharded into `shards` files with model.safetensors.index.json, plus golden.json. */
function writeFixture(cfg: Config, tensors: Tensors, shards: number, prompt: number[]): string {
  const dir = join(mkdtempSync(join(tmpdir(), "edge-moe-awkward-")), "model");
  const names = [...tensors.keys()];
  const per = Math.ceil(names.length / shards);
  const weightMap: Record<string, string> = {};
  let total = 0;
  mkdirSync(dir, { recursive: true });
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`;
    const part = names.slice(s * per, (s + 1) * per);
    for (const n of part) {
      weightMap[n] = file;
      total += tensors.get(n)!.data.byteLength;
    }
    writeFileSync(
      join(dir, file),
      writeSafetensors(
        part.map((n) => ({ name: n, dtype: "F32", shape: tensors.get(n)!.shape, data: tensors.get(n)!.data })),
      ),
    );
  }
  writeFileSync(
    join(dir, "model.safetensors.index.json"),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }),
  );
  writeFileSync(join(dir, "config.json"), JSON.stringify(cfg));

  const ref = referenceForward(cfg, tensors, prompt);
  const greedy: number[] = [];
  const seq = [...prompt];
  for (let i = 0; i < 6; i++) {
    const last = referenceForward(cfg, tensors, seq).logits.at(-1)!;
    const id = last.indexOf(Math.max(...last));
    greedy.push(id);
    seq.push(id);
  }
  const spec = parseConfig(cfg);
  const layer = spec.moeLayers.at(-1)!;
  writeFileSync(
    join(dir, "golden.json"),
    JSON.stringify({
      oracle: "edge-moe float64 HF-semantics reference (tests/unit/model/reference-forward.ts)",
      prompt_ids: prompt,
      logits: ref.logits,
      greedy_ids: greedy,
      moe_layer: {
        layer,
        input: ref.moeIn[layer],
        expert_ids: ref.routing[layer],
        expert_weights: ref.weights[layer],
        output: ref.moeOut[layer],
      },
      extra: { routing_all_layers: Object.fromEntries(spec.moeLayers.map((l) => [l, ref.routing[l]])) },
    }),
  );
  return dir;
}

describe("verify on awkward HF-format Mixtral checkpoints", () => {
  it("odd dimensions, one KV head, top-3, sharded with an index file, on 3 ExpertHosts", async () => {
    const tensors = buildTensors(AWKWARD_MIXTRAL, { seed: 7 });
    const dir = writeFixture(AWKWARD_MIXTRAL, tensors, 3, [5, 17, 3, 96, 42, 8, 61]);
    const r = await verifyFixture(dir, { hosts: 3 });
    expect(r.hosts).toBe(3);
    expect(r.maxLogitDiff).toBeLessThanOrEqual(1e-4);
    expect(r.greedyMatch).toBe(true);
    expect(r.apiGreedyMatch).toBe(true);
    for (const layer of r.routingAgreement) expect(layer.agree).toBe(layer.total);
    expect(r.pass).toBe(true);
  });
});
