/**
 * @module Test support: writes a Mixtral-shaped BF16 checkpoint of a chosen size straight to disk,
 * shard by shard (header, then data from one reused buffer of random bf16 values), so generating a
 * multi-GB checkpoint takes no more memory than converting it should.
 */
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";

export interface BigShape {
  dModel: number;
  dFf: number;
  nExperts: number;
  nLayers: number;
  vocab: number;
  nShards: number;
}

interface T {
  name: string;
  shape: number[];
}

function tensors(s: BigShape): T[] {
  const H = s.dModel;
  const out: T[] = [{ name: "model.embed_tokens.weight", shape: [s.vocab, H] }];
  for (let L = 0; L < s.nLayers; L++) {
    const p = `model.layers.${L}.`;
    out.push(
      { name: `${p}input_layernorm.weight`, shape: [H] },
      { name: `${p}post_attention_layernorm.weight`, shape: [H] },
    );
    for (const m of ["q", "k", "v", "o"]) out.push({ name: `${p}self_attn.${m}_proj.weight`, shape: [H, H] });
    out.push({ name: `${p}block_sparse_moe.gate.weight`, shape: [s.nExperts, H] });
    for (let e = 0; e < s.nExperts; e++) {
      const q = `${p}block_sparse_moe.experts.${e}.`;
      out.push(
        { name: `${q}w1.weight`, shape: [s.dFf, H] },
        { name: `${q}w2.weight`, shape: [H, s.dFf] },
        { name: `${q}w3.weight`, shape: [s.dFf, H] },
      );
    }
  }
  out.push({ name: "model.norm.weight", shape: [H] }, { name: "lm_head.weight", shape: [s.vocab, H] });
  return out;
}

const bytesOf = (t: T) => 2 * t.shape.reduce((a, b) => a * b, 1);

/** Writes config.json, the shards and the index into `dir`; returns the bytes of weights written. */
export function writeBigCheckpoint(dir: string, s: BigShape): number {
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "config.json"),
    JSON.stringify({
      architectures: ["MixtralForCausalLM"],
      model_type: "mixtral",
      hidden_size: s.dModel,
      intermediate_size: s.dFf,
      num_attention_heads: s.dModel / 64,
      num_key_value_heads: s.dModel / 64,
      num_hidden_layers: s.nLayers,
      num_local_experts: s.nExperts,
      num_experts_per_tok: 2,
      vocab_size: s.vocab,
      rms_norm_eps: 1e-5,
      rope_theta: 1e6,
      max_position_embeddings: 4096,
      hidden_act: "silu",
      tie_word_embeddings: false,
      torch_dtype: "bfloat16",
    }),
  );
  const all = tensors(s);
  const total = all.reduce((a, t) => a + bytesOf(t), 0);
  const perShard = Math.ceil(total / s.nShards);
  const shards: T[][] = [[]];
  let size = 0;
  for (const t of all) {
    if (size > 0 && size + bytesOf(t) > perShard && shards.length < s.nShards) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1].push(t);
    size += bytesOf(t);
  }
  // 1 MiB of bf16 values in ±0.1 (LCG): the content does not matter, only that it is finite and varied.
  const pattern = new Uint16Array(1 << 19);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  let seed = 12345;
  for (let i = 0; i < pattern.length; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    f[0] = (seed / 2 ** 32 - 0.5) * 0.2;
    pattern[i] = u[0] >>> 16;
  }
  const patternBytes = new Uint8Array(pattern.buffer);
  const weightMap: Record<string, string> = {};
  shards.forEach((ts, i) => {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${String(shards.length).padStart(5, "0")}.safetensors`;
    const header: Record<string, unknown> = {};
    let off = 0;
    for (const t of ts) {
      header[t.name] = { dtype: "BF16", shape: t.shape, data_offsets: [off, off + bytesOf(t)] };
      off += bytesOf(t);
      weightMap[t.name] = file;
    }
    let json = JSON.stringify(header);
    while ((8 + json.length) % 8 !== 0) json += " ";
    const fd = openSync(join(dir, file), "w");
    try {
      const len = new Uint8Array(8);
      new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
      writeSync(fd, len);
      writeSync(fd, new TextEncoder().encode(json));
      for (let left = off; left > 0; ) {
        const n = Math.min(left, patternBytes.byteLength);
        writeSync(fd, patternBytes, 0, n);
        left -= n;
      }
    } finally {
      closeSync(fd);
    }
  });
  writeFileSync(
    join(dir, "model.safetensors.index.json"),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }),
  );
  return total;
}
