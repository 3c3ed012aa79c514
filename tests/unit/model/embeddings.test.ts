/**
 * Embedding rows read on demand: equal to the checkpoint's rows for every stored dtype and on the
 * golden fixtures, coalesced into few ranged reads, cached within a byte bound (LRU).
 */
import { describe, expect, it } from "vitest";
import { CheckpointEmbeddings, TableEmbeddings, runs } from "../../../src/model/embeddings";
import { parseConfig, type ModelSpec } from "../../../src/model/config";
import { Checkpoint, decodeToF32, memoryFileStore } from "../../../src/model/safetensors";
import { f32ToBf16Bytes, writeSafetensors, type TensorToWrite } from "../../../src/model/safetensors-writer";
import { quantizeRowsQ8 } from "../../../src/kernels/packing";
import { createRng } from "../../../src/serving/sampling";
import { FIXTURES, fixtureCheckpoint, fixtureJson } from "./helpers";

const V = 300;
const D = 24;

function spec(): ModelSpec {
  return parseConfig({
    model_type: "mixtral",
    vocab_size: V,
    hidden_size: D,
    intermediate_size: 8,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    num_local_experts: 2,
    num_experts_per_tok: 1,
    tie_word_embeddings: true,
  });
}

const table = (() => {
  const r = createRng(3);
  return Float32Array.from({ length: V * D }, () => r() * 2 - 1);
})();

function f16Bytes(values: Float32Array): Uint8Array {
  // IEEE halves by hand (sign, 5-bit exponent, 10-bit mantissa); the test compares against the
  // decode of these very bytes, so only their validity matters, not the rounding.
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    const sign = v < 0 ? 0x8000 : 0;
    const a = Math.abs(v);
    if (a < 2 ** -14) out[i] = sign | Math.round(a / 2 ** -24);
    else {
      const e = Math.floor(Math.log2(a));
      const m = Math.round((a / 2 ** e - 1) * 1024);
      out[i] = m === 1024 ? sign | ((e + 16) << 10) : sign | ((e + 15) << 10) | m;
    }
  }
  return new Uint8Array(out.buffer);
}

async function ckptOf(tensors: TensorToWrite[]): Promise<Checkpoint> {
  return Checkpoint.open(memoryFileStore({ "model.safetensors": writeSafetensors(tensors) }));
}

const NAME = "model.embed_tokens.weight";
const ids = [5, 7, 6, 299, 0, 7, 150, 151, 5];

describe("CheckpointEmbeddings", () => {
  it.each(["F32", "BF16", "F16"] as const)(
    "returns the %s table's rows exactly, in order, repeats included",
    async (dtype) => {
      const bytes =
        dtype === "F32"
          ? new Uint8Array(table.buffer.slice(0))
          : dtype === "BF16"
            ? f32ToBf16Bytes(table)
            : f16Bytes(table);
      const ckpt = await ckptOf([{ name: NAME, dtype, shape: [V, D], data: bytes }]);
      const src = CheckpointEmbeddings.open(ckpt, spec(), { cacheBytes: 1 << 20 });
      const stored = decodeToF32(bytes, dtype);
      const want = await new TableEmbeddings(stored, V, D).rows(ids);
      expect(await src.rows(ids)).toEqual(want);
      // 0 | 5 6 7 | 150 151 | 299: gaps ≤ 8 rows merge, so 0 and 5–7 are one read.
      expect(src.stats()).toMatchObject({ misses: 7, hits: 0, reads: 3 });
      expect(await src.rows([7, 299])).toEqual(await new TableEmbeddings(stored, V, D).rows([7, 299]));
      expect(src.stats()).toMatchObject({ hits: 2, reads: 3 });
    },
  );

  it("decodes an int8 table (.qweight + per-row .scales) to scale · q", async () => {
    const q = quantizeRowsQ8(table, V, D);
    const ckpt = await ckptOf([
      { name: "model.embed_tokens.qweight", dtype: "I8", shape: [V, D], data: new Uint8Array(q.q.buffer) },
      { name: "model.embed_tokens.scales", dtype: "F32", shape: [V], data: q.scales },
    ]);
    const src = CheckpointEmbeddings.open(ckpt, spec(), { cacheBytes: 1 << 20 });
    const got = await src.rows([3, 299]);
    for (const [i, id] of [3, 299].entries()) {
      for (let j = 0; j < D; j++) {
        expect(got[i * D + j]).toBe(Math.fround(q.q[id * D + j] * q.scales[id]));
        expect(Math.abs(got[i * D + j] - table[id * D + j])).toBeLessThanOrEqual(q.scales[id] / 2 + 1e-7);
      }
    }
  });

  it("keeps at most cacheBytes of rows, evicting the least recently used", async () => {
    const ckpt = await ckptOf([{ name: NAME, dtype: "F32", shape: [V, D], data: table }]);
    const src = CheckpointEmbeddings.open(ckpt, spec(), { cacheBytes: 3 * D * 4 });
    await src.rows([10, 100, 200]); // cache: 10 100 200
    await src.rows([10]); // 10 is now the most recent
    await src.rows([250]); // evicts 100
    expect(src.stats().cachedBytes).toBe(3 * D * 4);
    const before = src.stats();
    await src.rows([10, 200, 250]);
    expect(src.stats().hits - before.hits).toBe(3);
    await src.rows([100]);
    expect(src.stats().misses - before.misses).toBe(1);
    expect(src.stats().cachedBytes).toBeLessThanOrEqual(3 * D * 4);
  });

  it("shares a read in flight between concurrent calls", async () => {
    const ckpt = await ckptOf([{ name: NAME, dtype: "F32", shape: [V, D], data: table }]);
    const src = CheckpointEmbeddings.open(ckpt, spec(), { cacheBytes: 1 << 20 });
    const [a, b] = await Promise.all([src.rows([42, 43]), src.rows([43])]);
    expect(b).toEqual(a.subarray(D));
    expect(src.stats()).toMatchObject({ reads: 1, misses: 2, hits: 1 });
  });

  it("refuses ids outside the vocabulary, naming the id", async () => {
    const ckpt = await ckptOf([{ name: NAME, dtype: "F32", shape: [V, D], data: table }]);
    const src = CheckpointEmbeddings.open(ckpt, spec(), { cacheBytes: 0 });
    await expect(src.rows([1, V])).rejects.toThrow(`token id ${V} is outside the vocabulary [0, ${V})`);
    await expect(src.rows([-1])).rejects.toThrow(RangeError);
    expect(await src.rows([1])).toEqual(table.slice(D, 2 * D)); // cacheBytes 0: read, not kept
    expect(src.stats().cachedBytes).toBe(0);
  });

  it.each(FIXTURES)("reads the %s fixture's embedding rows as the checkpoint holds them", async (fixture) => {
    const ckpt = await fixtureCheckpoint(fixture);
    const s = parseConfig(fixtureJson(fixture, "config.json"));
    const src = CheckpointEmbeddings.open(ckpt, s, { cacheBytes: 1 << 16 });
    const some = [0, 1, s.vocabSize - 1, 17, 17, 200];
    const full = await ckpt.readF32("model.embed_tokens.weight");
    expect(await src.rows(some)).toEqual(await new TableEmbeddings(full, s.vocabSize, s.dModel).rows(some));
  });

  it("groups ids into bounded runs", () => {
    expect(runs([30, 1, 2, 12, 11, 100], 1000)).toEqual([
      [1, 12, [1, 2, 11, 12]],
      [30, 30, [30]],
      [100, 100, [100]],
    ]);
    expect(runs([0, 1, 2, 3], 2)).toEqual([
      [0, 1, [0, 1]],
      [2, 3, [2, 3]],
    ]);
  });
});
