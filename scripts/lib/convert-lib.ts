/**
 * @module Streaming conversion of a Hugging Face repository directory to the project's layout:
 * routed experts quantized in the formats src/model/quantized.ts reads — int8: symmetric per output
 * row, `<base>.qweight` I8 (the tensor's shape) + `<base>.scales` F32 [..., rows]; int8-group: the same
 * `.qweight` + `<base>.scales` F32 [..., rows, cols/32] (one per 32 inputs); int4: groups of 32
 * inputs (src/kernels/q4g-format.ts), `<base>.qweight` I8 [..., rows, cols/2] (two weights a byte) +
 * `<base>.scales` BF16 [..., rows, cols/32] — dense tensors copied byte for byte, DeepSeek fp8 tensors
 * dequantized (to BF16 for dense tensors, as DeepSeek's fp8_cast_bf16.py writes them; to int8 for
 * experts), written as sharded safetensors + index.
 *
 * Memory bound: tensors are read and written a row range at a time through buffers allocated once
 * for `chunkValues` values (default 4 Mi): ≈ 4·chunk (raw) + 4·chunk (f32) + 2·chunk (bf16 or int8
 * out) bytes, plus the scales of the expert tensor being quantized (int8: 4 bytes a row; int8-group: 4
 * bytes, int4: 2 bytes per 32 weights; held until its quantized rows are written) and the fp8 block
 * scales of one tensor — independent of shard and tensor size. Output shards are written tensor
 * by tensor after their header (offsets are known from shapes), never assembled in memory.
 */
import {
  closeSync,
  copyFileSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { Q8_EXPERT_GROUP, quantizeRowsQ8 } from "../../src/kernels/packing";
import { quantizeQ8g } from "../../src/kernels/dense-format";
import { Q8_DIVISORS } from "../../src/kernels/q8-scale";
import { packNibbles, Q4_GROUP, quantizeQ4g } from "../../src/kernels/q4g-format";
import { expertTensorRefs, openModel } from "../../src/model/architectures";
import { parseConfig, type ModelSpec } from "../../src/model/config";
import { quantNames } from "../../src/model/quantized";
import { INDEX_FILE, numel } from "../../src/model/safetensors";
import { f32ToBf16Bytes, type WritableDType } from "../../src/model/safetensors-writer";
import { FP8_BLOCK, RowReader, readSourceTensors, type SourceTensor } from "./hf-source";
import { dirFileStore } from "./dir-store";

export interface ConvertReport {
  tensors: number;
  quantized: number;
  /** fp8 tensors dequantized (dense → BF16, experts → int8). */
  dequantized: number;
  /** Tensors of layers ≥ num_hidden_layers (DeepSeek's multi-token-prediction layer), not served. */
  dropped: number;
  shards: number;
  bytesIn: number;
  bytesOut: number;
  expertBytesIn: number;
  expertBytesOut: number;
  /** The values the streaming buffers hold (the memory bound's unit). */
  chunkValues: number;
}

export type ExpertQuant = "int8" | "int8-group" | "int4";

export interface ConvertOptions {
  /** Expert format; default "int8". */
  quant?: ExpertQuant;
  shardBytes?: number;
  chunkValues?: number;
  log?: (s: string) => void;
  /** Source bytes processed so far, of the total (progress bars). */
  onBytes?: (done: number, total: number) => void;
}

interface OutTensor {
  name: string;
  dtype: WritableDType;
  shape: number[];
  byteLength: number;
}

/** One source tensor and what it becomes: copied, fp8 → BF16, or → int8 (two tensors). */
interface Item {
  src: SourceTensor;
  scaleInv: SourceTensor | null;
  how: "copy" | "bf16" | "q8" | "q8g" | "q4";
  out: OutTensor[];
}

const LAYER_RE = /^model\.layers\.(\d+)\./;
/** Routed experts, per-expert (`experts.7.w1`, `experts.7.gate_proj`) or stacked (`experts.gate_up_proj`). */
const EXPERT_RE = /\.experts\.(?:\d+\.(?:w1|w2|w3|gate_proj|up_proj|down_proj)\.weight|gate_up_proj|down_proj)$/;

/**
 * config.json as the converted model states it: DeepSeek's fp8 `quantization_config` is consumed
 * (the weights are dequantized), any other quantization is refused with the field named.
 */
export function convertedConfig(cfg: Record<string, unknown>): { cfg: Record<string, unknown>; fp8: boolean } {
  const q = cfg.quantization_config as Record<string, unknown> | null | undefined;
  if (q === undefined || q === null) return { cfg, fp8: false };
  const block = q.weight_block_size;
  if (q.quant_method !== "fp8")
    throw new Error(
      `config.json: quantization_config.quant_method ${JSON.stringify(q.quant_method)} is not supported ` +
        `(convert dequantizes "fp8" only)`,
    );
  if (q.fmt !== undefined && q.fmt !== "e4m3")
    throw new Error(`config.json: quantization_config.fmt ${JSON.stringify(q.fmt)} is not supported (only "e4m3")`);
  if (!Array.isArray(block) || block[0] !== FP8_BLOCK || block[1] !== FP8_BLOCK) {
    throw new Error(
      `config.json: quantization_config.weight_block_size must be [${FP8_BLOCK}, ${FP8_BLOCK}], ` +
        `got ${JSON.stringify(block)}`,
    );
  }
  const out: Record<string, unknown> = { ...cfg, torch_dtype: "bfloat16" };
  delete out.quantization_config;
  return { cfg: out, fp8: true };
}

function plan(tensors: Map<string, SourceTensor>, spec: ModelSpec, quant: ExpertQuant, report: ConvertReport): Item[] {
  const items: Item[] = [];
  for (const src of [...tensors.values()].sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (src.name.endsWith("_scale_inv")) continue;
    const layer = LAYER_RE.exec(src.name);
    if (layer && Number(layer[1]) >= spec.nLayers) {
      report.dropped++;
      continue;
    }
    const scaleInv = src.dtype === "F8_E4M3" ? (tensors.get(`${src.name}_scale_inv`) ?? null) : null;
    if (src.dtype === "F8_E4M3" && scaleInv === null)
      throw new Error(`tensor ${src.name} is F8_E4M3 but ${src.name}_scale_inv is missing`);
    const cols = src.shape[src.shape.length - 1];
    const rows = numel(src.shape) / cols;
    if (EXPERT_RE.test(src.name)) {
      const names = quantNames(src.name);
      const lead = src.shape.slice(0, -1);
      if (quant === "int4") {
        if (cols % Q4_GROUP !== 0)
          throw new Error(`${src.name}: int4 needs rows of a multiple of ${Q4_GROUP} inputs, got ${cols}`);
        items.push({
          src,
          scaleInv,
          how: "q4",
          out: [
            { name: names.qweight, dtype: "I8", shape: [...lead, cols / 2], byteLength: (rows * cols) / 2 },
            {
              name: names.scales,
              dtype: "BF16",
              shape: [...lead, cols / Q4_GROUP],
              byteLength: (2 * rows * cols) / Q4_GROUP,
            },
          ],
        });
      } else if (quant === "int8-group") {
        if (cols % Q8_EXPERT_GROUP !== 0)
          throw new Error(`${src.name}: int8-group needs rows of a multiple of ${Q8_EXPERT_GROUP} inputs, got ${cols}`);
        items.push({
          src,
          scaleInv,
          how: "q8g",
          out: [
            { name: names.qweight, dtype: "I8", shape: src.shape, byteLength: rows * cols },
            {
              name: names.scales,
              dtype: "F32",
              shape: [...lead, cols / Q8_EXPERT_GROUP],
              byteLength: (4 * rows * cols) / Q8_EXPERT_GROUP,
            },
          ],
        });
      } else {
        items.push({
          src,
          scaleInv,
          how: "q8",
          out: [
            { name: names.qweight, dtype: "I8", shape: src.shape, byteLength: rows * cols },
            { name: names.scales, dtype: "F32", shape: lead, byteLength: 4 * rows },
          ],
        });
      }
    } else if (src.dtype === "F8_E4M3") {
      items.push({
        src,
        scaleInv,
        how: "bf16",
        out: [{ name: src.name, dtype: "BF16", shape: src.shape, byteLength: 2 * rows * cols }],
      });
    } else {
      items.push({
        src,
        scaleInv: null,
        how: "copy",
        out: [{ name: src.name, dtype: src.dtype as WritableDType, shape: src.shape, byteLength: src.byteLength }],
      });
    }
  }
  return items;
}

/** Groups items into shards of at most shardBytes (a larger single item gets a shard of its own). */
function shardItems(items: Item[], shardBytes: number): Item[][] {
  const shards: Item[][] = [[]];
  let size = 0;
  for (const it of items) {
    const bytes = it.out.reduce((s, t) => s + t.byteLength, 0);
    if (size > 0 && size + bytes > shardBytes) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1].push(it);
    size += bytes;
  }
  return shards;
}

function headerBytes(items: Item[], metadata: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of items.flatMap((i) => i.out)) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.byteLength] };
    offset += t.byteLength;
  }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += " "; // data starts 8-byte aligned, as the reference writer does
  const body = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + body.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(body.byteLength), true);
  out.set(body, 8);
  return out;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) done += writeSync(fd, bytes, done, bytes.byteLength - done);
}

/** Streams one item into the open shard. Returns the source bytes it consumed. */
function writeItem(fd: number, it: Item, reader: RowReader): void {
  const { src } = it;
  if (it.how === "copy") {
    const step = 4 * reader.maxValues;
    for (let at = 0; at < src.byteLength; at += step)
      writeAll(fd, reader.bytes(src, at, Math.min(step, src.byteLength - at)));
    return;
  }
  const cols = src.shape[src.shape.length - 1];
  const rows = numel(src.shape) / cols;
  const perChunk = Math.max(1, Math.floor(reader.maxValues / cols));
  const scaleInv = it.scaleInv ? reader.smallF32(it.scaleInv) : null;
  // Scales of the whole tensor wait until its quantized rows are written (they follow them in the shard).
  const scales8 = it.how === "q8" ? new Float32Array(rows) : null;
  const scales4 = it.how === "q4" ? new Uint16Array((rows * cols) / Q4_GROUP) : null;
  const scales8g = it.how === "q8g" ? new Float32Array((rows * cols) / Q8_EXPERT_GROUP) : null;
  for (let r = 0; r < rows; r += perChunk) {
    const n = Math.min(perChunk, rows - r);
    const w = reader.rowsF32(src, r, n, scaleInv);
    // Expert quantization: one call per row range (rows, and int4's groups within rows, are independent).
    if (scales8) {
      const q = quantizeRowsQ8(w, n, cols);
      writeAll(fd, new Uint8Array(q.q.buffer, q.q.byteOffset, q.q.byteLength));
      scales8.set(q.scales, r);
    } else if (scales8g) {
      const q = quantizeQ8g(w, n, cols, Q8_EXPERT_GROUP, Q8_DIVISORS);
      writeAll(fd, new Uint8Array(q.q.buffer, q.q.byteOffset, q.q.byteLength));
      scales8g.set(q.scales, (r * cols) / Q8_EXPERT_GROUP);
    } else if (scales4) {
      const q = quantizeQ4g(w, n, cols, Q4_GROUP);
      writeAll(fd, packNibbles(q.q, n, cols));
      scales4.set(q.scales, (r * cols) / Q4_GROUP);
    } else {
      writeAll(fd, f32ToBf16Bytes(w));
    }
  }
  if (scales8) writeAll(fd, new Uint8Array(scales8.buffer));
  if (scales4) writeAll(fd, new Uint8Array(scales4.buffer));
  if (scales8g) writeAll(fd, new Uint8Array(scales8g.buffer));
}

/** Every checkpoint tensor that holds routed experts, as the serving path finds them. */
export function expertTensorNames(ckpt: Parameters<typeof expertTensorRefs>[0], spec: ModelSpec): Set<string> {
  const names = new Set<string>();
  for (const L of spec.moeLayers) {
    for (let e = 0; e < spec.nExperts; e++) {
      const r = expertTensorRefs(ckpt, spec, L, e);
      names.add(r.w1.tensor).add(r.w3.tensor).add(r.w2.tensor);
    }
  }
  return names;
}

export async function convertModel(inDir: string, outDir: string, opts: ConvertOptions = {}): Promise<ConvertReport> {
  const log = opts.log ?? (() => {});
  const shardBytes = opts.shardBytes ?? 64 << 20;
  const raw = JSON.parse(readFileSync(join(inDir, "config.json"), "utf8")) as Record<string, unknown>;
  const { cfg, fp8 } = convertedConfig(raw);
  const spec = parseConfig(cfg);
  const tensors = readSourceTensors(inDir);
  const report: ConvertReport = {
    tensors: 0,
    quantized: 0,
    dequantized: 0,
    dropped: 0,
    shards: 0,
    bytesIn: 0,
    bytesOut: 0,
    expertBytesIn: 0,
    expertBytesOut: 0,
    chunkValues: 0,
  };
  const quant = opts.quant ?? "int8";
  const items = plan(tensors, spec, quant, report);
  const maxCols = Math.max(...items.map((i) => i.src.shape[i.src.shape.length - 1]));
  const chunkValues = Math.max(opts.chunkValues ?? 4 << 20, maxCols);
  report.chunkValues = chunkValues;
  mkdirSync(outDir, { recursive: true });
  for (const f of readdirSync(inDir)) {
    if (f.endsWith(".safetensors") || f === INDEX_FILE || f === "config.json") continue;
    const p = join(inDir, f);
    if (statSync(p).isFile()) copyFileSync(p, join(outDir, f));
  }
  writeFileSync(
    join(outDir, "config.json"),
    fp8 ? `${JSON.stringify(cfg, null, 2)}\n` : readFileSync(join(inDir, "config.json")),
  );
  const total = items.reduce((s, i) => s + i.src.byteLength, 0);
  const shards = shardItems(items, shardBytes);
  const reader = new RowReader(inDir, chunkValues);
  const meta: Record<string, string> = { edge_moe_expert_quant: quant };
  if (quant === "int4") meta.edge_moe_int4_group = String(Q4_GROUP);
  if (quant === "int8-group") meta.edge_moe_int8_group = String(Q8_EXPERT_GROUP);
  const weightMap: Record<string, string> = {};
  let done = 0;
  let totalSize = 0;
  try {
    for (let s = 0; s < shards.length; s++) {
      const file = `model-${String(s + 1).padStart(5, "0")}-of-${String(shards.length).padStart(5, "0")}.safetensors`;
      const header = headerBytes(shards[s], { format: "pt", ...meta });
      const fd = openSync(join(outDir, file), "w");
      let bytes = header.byteLength;
      try {
        writeAll(fd, header);
        for (const it of shards[s]) {
          writeItem(fd, it, reader);
          const out = it.out.reduce((a, t) => a + t.byteLength, 0);
          bytes += out;
          totalSize += out;
          report.tensors++;
          report.bytesIn += it.src.byteLength;
          if (it.src.dtype === "F8_E4M3") report.dequantized++;
          if (it.how === "q8" || it.how === "q8g" || it.how === "q4") {
            report.quantized++;
            report.expertBytesIn += it.src.byteLength;
            report.expertBytesOut += out;
          }
          for (const t of it.out) weightMap[t.name] = file;
          done += it.src.byteLength;
          opts.onBytes?.(done, total);
        }
      } finally {
        closeSync(fd);
      }
      report.bytesOut += bytes;
      log(`  ${file}  ${(bytes / 2 ** 20).toFixed(1)} MiB, ${shards[s].length} tensors`);
    }
  } finally {
    reader.close();
  }
  const index = { metadata: { total_size: totalSize, ...meta }, weight_map: weightMap };
  writeFileSync(join(outDir, INDEX_FILE), `${JSON.stringify(index, null, 2)}\n`);

  report.shards = shards.length;
  // The result must open as the serving path opens it, with every routed expert found as int8.
  const { spec: outSpec, ckpt } = await openModel(dirFileStore(outDir));
  const experts = expertTensorNames(ckpt, outSpec);
  if (experts.size !== report.quantized) {
    throw new Error(
      `converted ${report.quantized} expert tensors but the model has ${experts.size}: ` +
        "expert tensor names not recognised",
    );
  }
  return report;
}
