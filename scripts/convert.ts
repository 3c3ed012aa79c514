/**
 * convert — writes a copy of a Hugging Face model directory with its routed experts quantized, in
 * the formats src/model/quantized.ts reads:
 *   int8: symmetric per output channel, `<base>.qweight` I8 (the original expert tensor's shape and
 *         row layout) + `<base>.scales` F32 [..., rows];
 *   int4: 4-bit groups of 32 inputs (src/kernels/q4g-format.ts), `<base>.qweight` I8 [..., rows,
 *         cols/2] (two weights a byte) + `<base>.scales` BF16 [..., rows, cols/32].
 * Dense tensors are copied byte for byte (same dtype), other files (config, tokenizer, generation
 * config) as they are. Output: sharded safetensors + model.safetensors.index.json.
 *
 *   npm run convert -- <in-dir> <out-dir> --quant int8|int4 [--check] [--force] [--shard-mb 64] [--json]
 *
 * --check measures what the quantization costs on this model (logit error, greedy-token agreement vs f32, on
 * seeded prompts; scripts/lib/bench-accuracy.ts) with the same quantization applied at load.
 */
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { quantizeRowsQ8 } from "../src/kernels/packing";
import { packNibbles, Q4_GROUP, quantizeQ4g } from "../src/kernels/q4g-format";
import { expertTensorRefs, openModel } from "../src/model/architectures";
import type { ModelSpec } from "../src/model/config";
import { quantNames } from "../src/model/quantized";
import { INDEX_FILE, SINGLE_FILE, type Checkpoint, type FileStore } from "../src/model/safetensors";
import { writeSafetensors, type TensorToWrite, type WritableDType } from "../src/model/safetensors-writer";
import { formatAccuracy, measureInt8Accuracy } from "./lib/bench-accuracy";
import { progressBar, wantsHelp } from "./lib/progress";

const USAGE = `usage: npm run convert -- <in-dir> <out-dir> --quant int8|int4 [--check] [--force]
                       [--shard-mb 64] [--json]
  Writes a copy of a Hugging Face model directory with its routed experts quantized to int8.
  --check       also measure what int8 costs on this model (logit error, greedy agreement)
  --force       replace <out-dir> when it is not empty
  --shard-mb N  size of the output safetensors shards (default 64)
  --json        print the report as one JSON object on stdout (progress stays on stderr)`;

/** A model directory on disk, read by ranges (only what is asked for is read). */
export function dirFileStore(dir: string): FileStore {
  return {
    label: dir,
    async open(name) {
      const path = join(dir, name);
      if (!existsSync(path) || !statSync(path).isFile()) return null;
      return {
        name,
        size: async () => statSync(path).size,
        async read(offset, length) {
          const out = new Uint8Array(length);
          const fd = openSync(path, "r");
          try {
            let done = 0;
            while (done < length) {
              const n = readSync(fd, out, done, length - done, offset + done);
              if (n === 0) throw new Error(`${path}: unexpected end of file at ${offset + done}`);
              done += n;
            }
          } finally {
            closeSync(fd);
          }
          return out;
        },
      };
    },
  };
}

/** Every checkpoint tensor that holds routed experts (per-expert tensors, or stacked ones). */
export function expertTensorNames(ckpt: Checkpoint, spec: ModelSpec): Set<string> {
  const names = new Set<string>();
  for (const L of spec.moeLayers) {
    for (let e = 0; e < spec.nExperts; e++) {
      const r = expertTensorRefs(ckpt, spec, L, e);
      names.add(r.w1.tensor).add(r.w3.tensor).add(r.w2.tensor);
    }
  }
  return names;
}

export interface ConvertReport {
  tensors: number;
  quantized: number;
  shards: number;
  bytesIn: number;
  bytesOut: number;
  expertBytesIn: number;
  expertBytesOut: number;
}

export interface ConvertOptions {
  shardBytes?: number;
  log?: (s: string) => void;
  /** Called after each tensor (progress bars). */
  onTensor?: (done: number, total: number) => void;
  /** Expert format; default "int8". */
  quant?: "int8" | "int4";
}

export async function convertModel(inDir: string, outDir: string, opts: ConvertOptions = {}): Promise<ConvertReport> {
  const log = opts.log ?? (() => {});
  const quant = opts.quant ?? "int8";
  const shardBytes = opts.shardBytes ?? 64 << 20;
  const store = dirFileStore(inDir);
  const { spec, ckpt } = await openModel(store);
  const experts = expertTensorNames(ckpt, spec);
  mkdirSync(outDir, { recursive: true });
  for (const f of readdirSync(inDir)) {
    if (f.endsWith(".safetensors") || f === INDEX_FILE) continue;
    const p = join(inDir, f);
    if (statSync(p).isFile()) copyFileSync(p, join(outDir, f));
  }
  const shards: TensorToWrite[][] = [[]];
  let shardSize = 0;
  const add = (t: TensorToWrite) => {
    const bytes = t.data.byteLength;
    if (shardSize > 0 && shardSize + bytes > shardBytes) {
      shards.push([]);
      shardSize = 0;
    }
    shards[shards.length - 1].push(t);
    shardSize += bytes;
  };
  const report: ConvertReport = { tensors: 0, quantized: 0, shards: 0, bytesIn: 0, bytesOut: 0, expertBytesIn: 0, expertBytesOut: 0 };
  const tensors = [...ckpt.tensors].sort((a, b) => a[0].localeCompare(b[0]));
  for (const [name, info] of tensors) {
    opts.onTensor?.(report.tensors, tensors.length);
    report.tensors++;
    report.bytesIn += info.byteLength;
    if (experts.has(name)) {
      const cols = info.shape[info.shape.length - 1];
      const rows = info.shape.reduce((a, b) => a * b, 1) / cols;
      const names = quantNames(name);
      let outBytes: number;
      if (quant === "int4") {
        if (cols % Q4_GROUP !== 0) {
          throw new Error(`${name}: int4 needs rows of a multiple of ${Q4_GROUP} inputs, got ${cols}`);
        }
        const q = quantizeQ4g(await ckpt.readF32(name), rows, cols, Q4_GROUP);
        const lead = info.shape.slice(0, -1);
        const nib = packNibbles(q.q, rows, cols);
        add({ name: names.qweight, dtype: "I8", shape: [...lead, cols / 2], data: nib });
        const scaleBytes = new Uint8Array(q.scales.buffer);
        add({ name: names.scales, dtype: "BF16", shape: [...lead, cols / Q4_GROUP], data: scaleBytes });
        outBytes = nib.byteLength + scaleBytes.byteLength;
      } else {
        const q = quantizeRowsQ8(await ckpt.readF32(name), rows, cols);
        add({ name: names.qweight, dtype: "I8", shape: info.shape, data: new Uint8Array(q.q.buffer) });
        add({ name: names.scales, dtype: "F32", shape: info.shape.slice(0, -1), data: q.scales });
        outBytes = q.q.byteLength + q.scales.byteLength;
      }
      report.quantized++;
      report.expertBytesIn += info.byteLength;
      report.expertBytesOut += outBytes;
    } else {
      const src = await store.open(info.file);
      if (!src) throw new Error(`${info.file} disappeared while converting`);
      add({ name, dtype: info.dtype as WritableDType, shape: info.shape, data: await src.read(info.offset, info.byteLength) });
    }
  }
  opts.onTensor?.(report.tensors, tensors.length);
  const weightMap: Record<string, string> = {};
  const total = shards.length;
  const meta: Record<string, string> = { edge_moe_expert_quant: quant };
  if (quant === "int4") meta.edge_moe_int4_group = String(Q4_GROUP);
  for (let i = 0; i < total; i++) {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${String(total).padStart(5, "0")}.safetensors`;
    const image = writeSafetensors(shards[i], { format: "pt", ...meta });
    writeFileSync(join(outDir, file), image);
    report.bytesOut += image.byteLength;
    for (const t of shards[i]) weightMap[t.name] = file;
    log(`  ${file}  ${(image.byteLength / 2 ** 20).toFixed(1)} MiB, ${shards[i].length} tensors`);
  }
  const totalSize = shards.flat().reduce((s, t) => s + t.data.byteLength, 0);
  writeFileSync(join(outDir, INDEX_FILE), `${JSON.stringify({ metadata: { total_size: totalSize, ...meta }, weight_map: weightMap }, null, 2)}\n`);
  report.shards = total;
  return report;
}

async function main(): Promise<void> {
  if (wantsHelp()) {
    console.log(USAGE);
    return;
  }
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      quant: { type: "string" },
      check: { type: "boolean", default: false },
      force: { type: "boolean", default: false },
      "shard-mb": { type: "string", default: "64" },
      json: { type: "boolean", default: false },
    },
  });
  const [inArg, outArg] = positionals;
  if (!inArg || !outArg) throw new Error(USAGE);
  const quant = values.quant;
  if (quant !== "int8" && quant !== "int4") {
    throw new Error(`--quant must be int8 or int4, got ${quant === undefined ? "nothing" : `"${quant}"`}`);
  }
  const inDir = resolve(inArg);
  const outDir = resolve(outArg);
  if (!existsSync(join(inDir, "config.json"))) throw new Error(`${inArg}: no config.json — give a Hugging Face model directory (e.g. demo-model/ from \`npm run make-demo-model\`)`);
  if (inDir === outDir) throw new Error("<out-dir> must differ from <in-dir>: the conversion writes a new directory");
  if (existsSync(outDir) && readdirSync(outDir).length > 0) {
    if (!values.force) throw new Error(`${outArg} exists and is not empty; pass --force to replace it`);
    rmSync(outDir, { recursive: true });
  }
  const shardMb = Number(values["shard-mb"]);
  if (!(shardMb >= 1)) throw new Error(`--shard-mb must be ≥ 1, got ${values["shard-mb"]}`);
  const t0 = performance.now();
  const json = values.json;
  const say = (line: string) => (json ? console.error(line) : console.log(line));
  const what = quant === "int4" ? `int4, groups of ${Q4_GROUP}` : "int8, per output channel";
  say(`convert ${inArg} → ${outArg} (routed experts → ${what})`);
  let bar: ReturnType<typeof progressBar> | null = null;
  const r = await convertModel(inDir, outDir, {
    quant,
    shardBytes: shardMb << 20,
    log: (s) => say(s),
    onTensor: (done, total) => {
      bar ??= progressBar("tensors", total);
      bar.update(done);
      if (done === total) bar.stop();
    },
  });
  const seconds = (performance.now() - t0) / 1000;
  const hasWeights = existsSync(join(inDir, SINGLE_FILE)) || existsSync(join(inDir, INDEX_FILE));
  const accuracy: Awaited<ReturnType<typeof measureInt8Accuracy>>[] = [];
  if (values.check && hasWeights) {
    const { spec, ckpt } = await openModel(dirFileStore(inDir));
    if (quant === "int4") accuracy.push(await measureInt8Accuracy(inArg, spec, ckpt, { quant: "int4" }));
    else {
      for (const q8Path of ["dot_i16x8", "relaxed_dot_i16", "relaxed_dot_i16_7bit"] as const) {
        accuracy.push(await measureInt8Accuracy(inArg, spec, ckpt, { q8Path }));
      }
    }
    accuracy.push(await measureInt8Accuracy(inArg, spec, ckpt, { bf16: true }));
  }
  if (json) {
    console.log(JSON.stringify({ in: inArg, out: outArg, ...r, seconds, accuracy }));
    return;
  }
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  console.log(
    `${r.quantized} expert tensors quantized (${mib(r.expertBytesIn)} → ${mib(r.expertBytesOut)}), ${r.tensors - r.quantized} dense tensors copied; ` +
      `${mib(r.bytesIn)} → ${mib(r.bytesOut)} in ${r.shards} shards, ${seconds.toFixed(1)} s`,
  );
  for (const a of accuracy) console.log(formatAccuracy(a));
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith("convert.ts")) {
  main().catch((err: unknown) => {
    console.error(`convert: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  });
}

