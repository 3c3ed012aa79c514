/**
 * @module convert — writes a copy of a Hugging Face model directory with its routed experts
 * quantized, in the formats src/model/quantized.ts reads (scripts/lib/convert-lib.ts):
 *   int8: symmetric per output channel, `<base>.qweight` I8 + `<base>.scales` F32 [..., rows];
 *   int8-group: one scale per 32 inputs, `<base>.qweight` I8 + `<base>.scales` F32 [..., rows, cols/32];
 *   int4: 4-bit groups of 32 inputs, `<base>.qweight` I8 [..., rows, cols/2] + `<base>.scales` BF16.
 * Dense tensors are copied byte for byte (same dtype), DeepSeek fp8 tensors dequantized, other
 * files (config, tokenizer, generation config) as they are. Streams with a bounded peak memory
 * (scripts/lib/convert-lib.ts states the bound). Output: sharded safetensors + index.
 *
 *   npm run convert -- <in-dir> <out-dir> --quant int8|int8-group|int4 [--check] [--force] [--shard-mb 64]
 *     [--chunk-mb 16] [--json]
 *
 * --check measures what the quantization costs on this model (logit error, greedy-token agreement vs f32, on
 * seeded prompts; scripts/lib/bench-accuracy.ts) with the same quantization applied at load.
 */
import { existsSync, readdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { openModel } from "../src/model/architectures";
import { Q4_GROUP } from "../src/kernels/q4g-format";
import { Q8_EXPERT_GROUP } from "../src/kernels/packing";
import { INDEX_FILE, SINGLE_FILE } from "../src/model/safetensors";
import { formatAccuracy, measureInt8Accuracy } from "./lib/bench-accuracy";
import { convertModel } from "./lib/convert-lib";
import { dirFileStore } from "./lib/dir-store";
import { progressBar, wantsHelp } from "./lib/progress";

export { convertModel, dirFileStore };

const USAGE = `usage: npm run convert -- <in-dir> <out-dir> --quant int8|int8-group|int4 [--check] [--force]
                       [--shard-mb 64] [--chunk-mb 16] [--json]
  Writes a copy of a Hugging Face model directory (sharded safetensors; F32, BF16, F16, or DeepSeek
  fp8 e4m3 with 128×128 block scales, dequantized) with its routed experts quantized to int8 (per
  output channel), int8-group (one scale per 32 inputs) or int4 (groups of 32 inputs).
  Streams: reads tensors by row ranges and writes shards as it goes; peak memory ≈ 2.5 × --chunk-mb
  plus one f32 scale per row of the largest expert tensor, whatever the shard size.
  --check       also measure what the quantization costs on this model (logit error, greedy agreement)
  --force       replace <out-dir> when it is not empty
  --shard-mb N  size of the output safetensors shards (default 64)
  --chunk-mb N  values read per step × 4 bytes (default 16)
  --json        print the report as one JSON object on stdout (progress stays on stderr)`;

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
      "chunk-mb": { type: "string", default: "16" },
      json: { type: "boolean", default: false },
    },
  });
  const [inArg, outArg] = positionals;
  if (!inArg || !outArg) throw new Error(USAGE);
  const quant = values.quant;
  if (quant !== "int8" && quant !== "int8-group" && quant !== "int4") {
    throw new Error(`--quant must be int8, int8-group or int4, got ${quant === undefined ? "nothing" : `"${quant}"`}`);
  }
  const inDir = resolve(inArg);
  const outDir = resolve(outArg);
  if (!existsSync(join(inDir, "config.json")))
    throw new Error(
      `${inArg}: no config.json — give a Hugging Face model directory ` +
        "(e.g. demo-model/ from `npm run make-demo-model`)",
    );
  if (inDir === outDir) throw new Error("<out-dir> must differ from <in-dir>: the conversion writes a new directory");
  if (existsSync(outDir) && readdirSync(outDir).length > 0) {
    if (!values.force) throw new Error(`${outArg} exists and is not empty; pass --force to replace it`);
    rmSync(outDir, { recursive: true });
  }
  const shardMb = Number(values["shard-mb"]);
  if (!(shardMb >= 1)) throw new Error(`--shard-mb must be ≥ 1, got ${values["shard-mb"]}`);
  const chunkMb = Number(values["chunk-mb"]);
  if (!(chunkMb > 0)) throw new Error(`--chunk-mb must be > 0, got ${values["chunk-mb"]}`);
  const t0 = performance.now();
  // maxRSS is a high-water mark: read it once the process has loaded everything but the weights.
  const rssBeforeMiB = process.resourceUsage().maxRSS / 1024;
  const json = values.json;
  const say = (line: string) => (json ? console.error(line) : console.log(line));
  const what =
    quant === "int4"
      ? `int4, groups of ${Q4_GROUP}`
      : quant === "int8-group"
        ? `int8, groups of ${Q8_EXPERT_GROUP}`
        : "int8, per output channel";
  say(`convert ${inArg} → ${outArg} (routed experts → ${what})`);
  let bar: ReturnType<typeof progressBar> | null = null;
  const r = await convertModel(inDir, outDir, {
    quant,
    shardBytes: shardMb << 20,
    chunkValues: Math.floor((chunkMb * 2 ** 20) / 4),
    log: (s) => say(s),
    onBytes: (done, total) => {
      bar ??= progressBar("MiB", Math.ceil(total / 2 ** 20));
      bar.update(Math.floor(done / 2 ** 20));
      if (done === total) bar.stop();
    },
  });
  const peakRssMiB = process.resourceUsage().maxRSS / 1024;
  const seconds = (performance.now() - t0) / 1000;
  const hasWeights = existsSync(join(inDir, SINGLE_FILE)) || existsSync(join(inDir, INDEX_FILE));
  const accuracy: Awaited<ReturnType<typeof measureInt8Accuracy>>[] = [];
  if (values.check && hasWeights && r.dequantized > 0) {
    say("--check skipped: it compares against the f32 model, and an fp8 checkpoint has none to load");
  } else if (values.check && hasWeights) {
    const { spec, ckpt } = await openModel(dirFileStore(inDir));
    if (quant !== "int8") accuracy.push(await measureInt8Accuracy(inArg, spec, ckpt, { quant }));
    else {
      for (const q8Path of ["dot_i16x8", "relaxed_dot_i16", "relaxed_dot_i16_7bit"] as const) {
        accuracy.push(await measureInt8Accuracy(inArg, spec, ckpt, { q8Path }));
      }
    }
    accuracy.push(await measureInt8Accuracy(inArg, spec, ckpt, { bf16: true }));
  }
  if (json) {
    console.log(JSON.stringify({ in: inArg, out: outArg, ...r, seconds, rssBeforeMiB, peakRssMiB, accuracy }));
    return;
  }
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  console.log(
    `${r.quantized} expert tensors quantized (${mib(r.expertBytesIn)} → ${mib(r.expertBytesOut)}), ` +
      `${r.tensors - r.quantized} dense tensors copied; ` +
      `${mib(r.bytesIn)} → ${mib(r.bytesOut)} in ${r.shards} shards, ${seconds.toFixed(1)} s` +
      (r.dequantized > 0 ? `; ${r.dequantized} fp8 tensors dequantized` : "") +
      (r.dropped > 0 ? `; ${r.dropped} tensors of layers ≥ num_hidden_layers left out` : ""),
  );
  console.log(`peak RSS ${peakRssMiB.toFixed(0)} MiB (${rssBeforeMiB.toFixed(0)} MiB before the weights were read)`);
  for (const a of accuracy) console.log(formatAccuracy(a));
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith("convert.ts")) {
  main().catch((err: unknown) => {
    console.error(`convert: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  });
}
