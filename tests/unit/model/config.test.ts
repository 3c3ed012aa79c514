import { describe, expect, it } from "vitest";
import { maxServableTokens, parseConfig } from "../../../src/model/config";
import { ModelFormatError } from "../../../src/model/errors";
import { expectModelError, fixtureJson } from "./helpers";

const base = (): Record<string, unknown> => fixtureJson<Record<string, unknown>>("mixtral-tiny", "config.json");

describe("parseConfig", () => {
  it("parses the mixtral-tiny config", () => {
    expect(parseConfig(base())).toEqual({
      arch: "mixtral",
      modelType: "mixtral",
      vocabSize: 256,
      dModel: 64,
      nLayers: 2,
      nHeads: 4,
      nKvHeads: 2,
      headDim: 16,
      dFf: 96,
      nExperts: 8,
      topK: 2,
      rmsEps: 1e-5,
      maxPositions: 4096,
      tieEmbeddings: false,
      bosTokenId: 1,
      eosTokenIds: [2],
      router: { kind: "softmax-topk", renormalize: true },
      torchDtype: "float32",
      slidingWindow: null,
      layers: [{ kind: "moe" }, { kind: "moe" }],
      moeLayers: [0, 1],
      attention: {
        kind: "gqa",
        nHeads: 4,
        nKvHeads: 2,
        headDim: 16,
        qkNorm: "none",
        qkvBias: false,
        outBias: false,
        scale: 0.25,
      },
      sharedExperts: null,
      multipliers: { embedding: 1, residual: 1, logitsScale: 1 },
      rope: { theta: 1e6, interleaved: false, rotDim: 16, yarn: null },
    });
  });

  it("parses the mixtral-tiny-bf16 config", () => {
    const spec = parseConfig(fixtureJson("mixtral-tiny-bf16", "config.json"));
    expect(spec.torchDtype).toBe("bfloat16");
    expect(spec).toMatchObject({ dModel: 64, dFf: 96, nLayers: 2, nExperts: 8, topK: 2, headDim: 16, vocabSize: 256 });
  });

  it("takes head_dim from the config when present", () => {
    expect(parseConfig({ ...base(), head_dim: 32 }).headDim).toBe(32);
  });

  it("accepts eos_token_id as a list and null", () => {
    expect(parseConfig({ ...base(), eos_token_id: [2, 7] }).eosTokenIds).toEqual([2, 7]);
    expect(parseConfig({ ...base(), eos_token_id: null, bos_token_id: null })).toMatchObject({
      eosTokenIds: [],
      bosTokenId: null,
    });
  });

  it("defaults num_key_value_heads to num_attention_heads (MixtralConfig)", () => {
    const cfg = base();
    delete cfg.num_key_value_heads;
    expect(parseConfig(cfg).nKvHeads).toBe(4);
  });

  it("reads rope_theta from transformers v5 rope_parameters", () => {
    const cfg = base();
    delete cfg.rope_theta;
    cfg.rope_parameters = { rope_type: "default", rope_theta: 5e5 };
    expect(parseConfig(cfg).rope.theta).toBe(5e5);
  });

  it("exposes sliding_window so longer sequences can be refused", () => {
    const spec = parseConfig({ ...base(), sliding_window: 1024 });
    expect(spec.slidingWindow).toBe(1024);
    expect(maxServableTokens(spec)).toBe(1024);
    expect(maxServableTokens(parseConfig(base()))).toBe(4096);
  });

  it("uses the given file name in messages", async () => {
    const cfg = base();
    delete cfg.vocab_size;
    await expectModelError(() => parseConfig(cfg, "models/x/config.json"), ["models/x/config.json", "vocab_size"]);
  });

  describe("rejects", () => {
    const required = [
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "num_hidden_layers",
      "num_attention_heads",
      "num_local_experts",
      "num_experts_per_tok",
    ];
    for (const field of required) {
      it(`missing ${field}`, async () => {
        const cfg = base();
        delete cfg[field];
        const err = await expectModelError(() => parseConfig(cfg), ["config.json", field, "missing"]);
        expect(err.field).toBe(field);
        expect(err.file).toBe("config.json");
      });
    }

    const invalid: [string, unknown][] = [
      ["hidden_size", 64.5],
      ["hidden_size", 0],
      ["num_hidden_layers", -1],
      ["vocab_size", "256"],
      ["num_key_value_heads", 0],
      ["rms_norm_eps", 0],
      ["rope_theta", "big"],
      ["max_position_embeddings", 1.5],
      ["tie_word_embeddings", "no"],
      ["eos_token_id", [2, "x"]],
      ["bos_token_id", -1],
      ["sliding_window", 0],
      ["head_dim", 15],
    ];
    for (const [field, value] of invalid) {
      it(`${field} = ${JSON.stringify(value)}`, async () => {
        const err = await expectModelError(() => parseConfig({ ...base(), [field]: value }), ["config.json", field]);
        expect(err.field).toBe(field);
      });
    }

    it("num_attention_heads not divisible by num_key_value_heads", async () => {
      await expectModelError(
        () => parseConfig({ ...base(), num_key_value_heads: 3 }),
        ["config.json", "num_key_value_heads", "3"],
      );
    });

    it("hidden_size not divisible by num_attention_heads without head_dim", async () => {
      await expectModelError(
        () => parseConfig({ ...base(), num_attention_heads: 6, num_key_value_heads: 2 }),
        ["hidden_size", "num_attention_heads"],
      );
    });

    it("num_experts_per_tok > num_local_experts", async () => {
      await expectModelError(
        () => parseConfig({ ...base(), num_experts_per_tok: 9 }),
        ["config.json", "num_experts_per_tok", "≤ num_local_experts (8)", "got 9"],
      );
    });

    it("an unknown model_type, listing the supported ones", async () => {
      await expectModelError(
        () => parseConfig({ ...base(), model_type: "llama" }),
        ["config.json", "model_type", '"llama"', "mixtral"],
      );
    });

    it("a missing model_type", async () => {
      const cfg = base();
      delete cfg.model_type;
      await expectModelError(() => parseConfig(cfg), ["config.json", "model_type"]);
    });

    it("rope_scaling outside the DeepSeek families", async () => {
      await expectModelError(
        () => parseConfig({ ...base(), rope_scaling: { type: "yarn", factor: 4 } }),
        ["config.json", "rope_scaling", "not supported"],
      );
    });

    it("a non-default rope_parameters.rope_type", async () => {
      await expectModelError(
        () => parseConfig({ ...base(), rope_parameters: { rope_type: "yarn", rope_theta: 1e6 } }),
        ["rope_parameters.rope_type", "yarn"],
      );
    });

    it("an activation other than silu", async () => {
      await expectModelError(
        () => parseConfig({ ...base(), hidden_act: "gelu" }),
        ["config.json", "hidden_act", "gelu"],
      );
    });

    it("a config that is not an object", () => {
      for (const raw of [null, [], 3, "x"]) expect(() => parseConfig(raw)).toThrow(ModelFormatError);
    });
  });
});
