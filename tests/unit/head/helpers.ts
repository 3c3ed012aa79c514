/**
 * @module A small granite-like head for the head tests: a ragged vocabulary and an odd dModel (so
 * the kernel's tail rows and tail columns are exercised), its table from a fixed seed, written as
 * a one-tensor checkpoint in F32 or BF16.
 */
import { parseConfig, type ModelSpec } from "../../../src/model/config";
import { Checkpoint, memoryFileStore } from "../../../src/model/safetensors";
import { f32ToBf16Bytes, writeSafetensors } from "../../../src/model/safetensors-writer";
import { createRng } from "../../../src/serving/sampling";
import { randn } from "../kernels/helpers";

export const VOCAB = 1003; // ragged: 1003 = 4·250 + 3, the kernel's tail rows
export const D_MODEL = 38; // not a multiple of 4: the kernel's scalar tail columns

/** The head's model: tied reads the table from the embedding, else from lm_head. */
export function graniteSpec(tied: boolean): ModelSpec {
  return parseConfig({
    model_type: "granitemoe",
    vocab_size: VOCAB,
    hidden_size: D_MODEL,
    intermediate_size: 8,
    num_hidden_layers: 1,
    num_attention_heads: 1,
    num_key_value_heads: 1,
    num_local_experts: 2,
    num_experts_per_tok: 1,
    logits_scaling: 6,
    tie_word_embeddings: tied,
  });
}

/** The head's checkpoint, and its table as f32 ([VOCAB, D_MODEL], before any BF16 rounding). */
export async function checkpoint(
  dtype: "F32" | "BF16",
  tied: boolean,
): Promise<{ ckpt: Checkpoint; table: Float32Array }> {
  const table = randn(createRng(7), VOCAB * D_MODEL, 0.5);
  const name = tied ? "model.embed_tokens.weight" : "lm_head.weight";
  const data = dtype === "F32" ? table : f32ToBf16Bytes(table);
  const file = writeSafetensors([{ name, dtype, shape: [VOCAB, D_MODEL], data }]);
  return { ckpt: await Checkpoint.open(memoryFileStore({ "model.safetensors": file })), table };
}
