/**
 * @module Streaming conversion: the result equals quantizing whole tensors at once (whatever the
 * chunk size), fp8 e4m3 block-scaled DeepSeek tensors are dequantized exactly, and the peak RSS of a
 * ~100 MB single-shard conversion stays within the stated bound (a ≥ 2 GB multi-shard run is behind
 * EDGE_MOE_BIG_CONVERT=1).
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Q8_EXPERT_GROUP, quantizeRowsQ8 } from "../../../src/kernels/packing";
import { quantizeQ8g } from "../../../src/kernels/dense-format";
import { Q8_DIVISORS } from "../../../src/kernels/q8-scale";
import { packNibbles, Q4_GROUP, quantizeQ4g } from "../../../src/kernels/q4g-format";
import { Checkpoint, memoryFileStore, numel } from "../../../src/model/safetensors";
import { f32ToBf16Bytes } from "../../../src/model/safetensors-writer";
import { convertModel } from "../../../scripts/lib/convert-lib";
import { e4m3ToF32 } from "../../../scripts/lib/hf-source";
import { writeBigCheckpoint } from "./big-checkpoint";

const ROOT = join(import.meta.dirname, "..", "..", "..");
const FIXTURES = join(ROOT, "tests", "fixtures");
const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), "edge-moe-convert-"));
  dirs.push(d);
  return d;
};
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

async function openDir(dir: string): Promise<{ ckpt: Checkpoint; files: Record<string, Uint8Array> }> {
  const files: Record<string, Uint8Array> = {};
  for (const f of [
    "model.safetensors.index.json",
    ...new Set(
      Object.values(
        (
          JSON.parse(readFileSync(join(dir, "model.safetensors.index.json"), "utf8")) as {
            weight_map: Record<string, string>;
          }
        ).weight_map,
      ),
    ),
  ]) {
    files[f] = new Uint8Array(readFileSync(join(dir, f)));
  }
  return { ckpt: await Checkpoint.open(memoryFileStore(files, dir)), files };
}

function rawBytes(ckpt: Checkpoint, files: Record<string, Uint8Array>, name: string): Uint8Array {
  const t = ckpt.info(name);
  return files[t.file].subarray(t.offset, t.offset + t.byteLength);
}

/** One source expert tensor and the converted checkpoint it was written to. */
interface ConvertedExpert {
  name: string;
  shape: number[];
  rows: number;
  cols: number;
  values: Float32Array; // the source tensor as f32
  ckpt: Checkpoint;
  files: Record<string, Uint8Array>;
}

/** Converts mixtral-tiny with `quant` at chunk sizes 1 and 1000, then checks each expert tensor. */
async function forEachConvertedExpert(
  quant: "int4" | "int8-group",
  check: (t: ConvertedExpert) => Promise<void>,
): Promise<void> {
  const src = join(FIXTURES, "mixtral-tiny");
  const bytes = new Uint8Array(readFileSync(join(src, "model.safetensors")));
  const srcCkpt = await Checkpoint.open(memoryFileStore({ "model.safetensors": bytes }));
  for (const chunkValues of [1, 1000]) {
    const out = join(tmp(), "m");
    const r = await convertModel(src, out, { quant, chunkValues, shardBytes: 256 << 10 });
    expect(r.quantized).toBe(2 * 8 * 3);
    const { ckpt, files } = await openDir(out);
    for (const [name, info] of srcCkpt.tensors) {
      if (!name.includes(".experts.")) continue;
      const cols = info.shape[info.shape.length - 1];
      const rows = numel(info.shape) / cols;
      await check({ name, shape: info.shape, rows, cols, values: await srcCkpt.readF32(name), ckpt, files });
    }
  }
}

interface RawTensor {
  name: string;
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

/** A safetensors image with any dtype name (the project's writer knows no F8_E4M3). */
function safetensorsImage(ts: RawTensor[]): Uint8Array {
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const t of ts) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.byteLength] };
    off += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += " ";
  const body = new TextEncoder().encode(json);
  const image = new Uint8Array(8 + body.byteLength + off);
  new DataView(image.buffer).setBigUint64(0, BigInt(body.byteLength), true);
  image.set(body, 8);
  let at = 8 + body.byteLength;
  for (const t of ts) {
    image.set(t.data, at);
    at += t.data.byteLength;
  }
  return image;
}

/** Independent e4m3fn decoding from the bit fields (for the cases the test draws: no NaN). */
function e4m3(b: number): number {
  const s = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 15;
  const m = b & 7;
  return e === 0 ? s * m * 2 ** -9 : s * (8 + m) * 2 ** (e - 10);
}

describe("convert (streaming)", () => {
  it("equals whole-tensor int8 quantization and copies dense tensors byte for byte, at any chunk size", async () => {
    const src = join(FIXTURES, "mixtral-tiny");
    const srcCkpt = await Checkpoint.open(
      memoryFileStore({ "model.safetensors": new Uint8Array(readFileSync(join(src, "model.safetensors"))) }),
    );
    for (const chunkValues of [1, 1000, 1 << 22]) {
      const out = join(tmp(), "m");
      const r = await convertModel(src, out, { chunkValues, shardBytes: 256 << 10 });
      expect(r.quantized).toBe(2 * 8 * 3);
      expect(r.shards).toBeGreaterThan(1);
      const { ckpt, files } = await openDir(out);
      for (const [name, info] of srcCkpt.tensors) {
        if (name.includes(".experts.")) {
          const rows = numel(info.shape) / info.shape[info.shape.length - 1];
          const q = quantizeRowsQ8(await srcCkpt.readF32(name), rows, info.shape[info.shape.length - 1]);
          expect(rawBytes(ckpt, files, name.replace(/\.weight$/, ".qweight"))).toEqual(new Uint8Array(q.q.buffer));
          expect(await ckpt.readF32(name.replace(/\.weight$/, ".scales"))).toEqual(q.scales);
        } else {
          const f = new Uint8Array(readFileSync(join(src, "model.safetensors")));
          expect(rawBytes(ckpt, files, name)).toEqual(f.subarray(info.offset, info.offset + info.byteLength));
        }
      }
    }
  });

  it("writes int4 experts equal to whole-tensor group quantization, at any chunk size", async () => {
    await forEachConvertedExpert("int4", async ({ name, rows, cols, values, ckpt, files }) => {
      const q = quantizeQ4g(values, rows, cols, Q4_GROUP);
      expect(rawBytes(ckpt, files, name.replace(/\.weight$/, ".qweight"))).toEqual(packNibbles(q.q, rows, cols));
      const scales = rawBytes(ckpt, files, name.replace(/\.weight$/, ".scales"));
      expect(scales).toEqual(new Uint8Array(q.scales.buffer));
    });
  });

  it("writes int8-group experts equal to whole-tensor group quantization, at any chunk size", async () => {
    await forEachConvertedExpert("int8-group", async ({ name, shape, rows, cols, values, ckpt, files }) => {
      const q = quantizeQ8g(values, rows, cols, Q8_EXPERT_GROUP, Q8_DIVISORS);
      expect(rawBytes(ckpt, files, name.replace(/\.weight$/, ".qweight"))).toEqual(new Uint8Array(q.q.buffer));
      const scales = ckpt.info(name.replace(/\.weight$/, ".scales"));
      expect([scales.dtype, scales.shape]).toEqual(["F32", [...shape.slice(0, -1), cols / Q8_EXPERT_GROUP]]);
      expect(await ckpt.readF32(name.replace(/\.weight$/, ".scales"))).toEqual(q.scales);
    });
  });

  it("decodes every e4m3 byte like the bit-field formula", () => {
    for (let b = 0; b < 256; b++) if ((b & 0x7f) !== 0x7f) expect(e4m3ToF32(b)).toBe(e4m3(b));
    expect([e4m3ToF32(0x38), e4m3ToF32(0x7e), e4m3ToF32(0x01)]).toEqual([1, 448, 2 ** -9]);
    expect(e4m3ToF32(0x7f)).toBeNaN();
  });

  it("dequantizes DeepSeek fp8 (128×128 block scale_inv): dense → BF16, experts → int8", async () => {
    const dir = tmp();
    const src = join(FIXTURES, "deepseek-v3-tiny");
    const ckpt = await Checkpoint.open(
      memoryFileStore({ "model.safetensors": new Uint8Array(readFileSync(join(src, "model.safetensors"))) }),
    );
    const out: RawTensor[] = [];
    const expected = new Map<string, Float32Array>();
    let seed = 7;
    const rnd = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0);
    for (const [name, info] of ckpt.tensors) {
      const fp8 = info.shape.length === 2 && /_proj\.weight$/.test(name);
      if (!fp8) {
        out.push({ name, dtype: "F32", shape: info.shape, data: new Uint8Array((await ckpt.readF32(name)).buffer) });
        continue;
      }
      const [rows, cols] = info.shape;
      const bytes = new Uint8Array(rows * cols).map(() => {
        const b = rnd() & 0xff;
        return (b & 0x7f) === 0x7f ? 0x3f : b;
      });
      const sr = Math.ceil(rows / 128);
      const sc = Math.ceil(cols / 128);
      const scale = new Float32Array(sr * sc).map(() => Math.fround(0.001 + (rnd() % 1000) / 1e5));
      const w = new Float32Array(rows * cols);
      for (let i = 0; i < rows; i++)
        for (let j = 0; j < cols; j++)
          w[i * cols + j] = Math.fround(
            e4m3(bytes[i * cols + j]) * scale[Math.floor(i / 128) * sc + Math.floor(j / 128)],
          );
      expected.set(name, w);
      out.push(
        { name, dtype: "F8_E4M3", shape: info.shape, data: bytes },
        { name: `${name}_scale_inv`, dtype: "F32", shape: [sr, sc], data: new Uint8Array(scale.buffer) },
      );
    }
    writeFileSync(join(dir, "model.safetensors"), safetensorsImage(out));
    const cfg = JSON.parse(readFileSync(join(src, "config.json"), "utf8")) as Record<string, unknown>;
    cfg.quantization_config = {
      activation_scheme: "dynamic",
      fmt: "e4m3",
      quant_method: "fp8",
      weight_block_size: [128, 128],
    };
    writeFileSync(join(dir, "config.json"), JSON.stringify(cfg));

    const outDir = join(tmp(), "m");
    const r = await convertModel(dir, outDir, { chunkValues: 100 });
    expect(r.dequantized).toBe(expected.size);
    const outCfg = JSON.parse(readFileSync(join(outDir, "config.json"), "utf8")) as Record<string, unknown>;
    expect(outCfg.quantization_config).toBeUndefined();
    const got = await openDir(outDir);
    for (const [name, w] of expected) {
      const cols = ckpt.info(name).shape[1];
      if (name.includes(".experts.")) {
        const q = quantizeRowsQ8(w, w.length / cols, cols);
        expect(rawBytes(got.ckpt, got.files, name.replace(/\.weight$/, ".qweight"))).toEqual(
          new Uint8Array(q.q.buffer),
        );
      } else {
        expect(got.ckpt.info(name).dtype).toBe("BF16");
        expect(rawBytes(got.ckpt, got.files, name)).toEqual(f32ToBf16Bytes(w));
      }
    }
  });

  /** Runs the CLI in a fresh process and returns its --json report. */
  function convertCli(
    inDir: string,
    outDir: string,
    chunkMb: number,
  ): { peakRssMiB: number; rssBeforeMiB: number; bytesIn: number; shards: number } {
    const tsx = join(ROOT, "node_modules", ".bin", "tsx");
    const stdout = execFileSync(
      tsx,
      ["scripts/convert.ts", inDir, outDir, "--quant", "int8", "--json", "--chunk-mb", String(chunkMb)],
      { cwd: ROOT, encoding: "utf8", timeout: 600_000 },
    );
    return JSON.parse(stdout) as { peakRssMiB: number; rssBeforeMiB: number; bytesIn: number; shards: number };
  }

  // Buffers are 2.5 × --chunk-mb; the rest of the allowance is the per-chunk quantization output V8
  // collects lazily (measured growth varies between runs). Reading the shard whole would add ≥ 92 MiB.
  it("converts a ~100 MB single shard with peak RSS growth under 16 × --chunk-mb", () => {
    const dir = join(tmp(), "in");
    const bytes = writeBigCheckpoint(dir, { dModel: 512, dFf: 1536, nExperts: 8, nLayers: 2, vocab: 8000, nShards: 1 });
    expect(bytes).toBeGreaterThan(90e6);
    expect(statSync(join(dir, "model-00001-of-00001.safetensors")).size).toBeGreaterThan(90e6);
    const r = convertCli(dir, join(tmp(), "out"), 4);
    const growth = r.peakRssMiB - r.rssBeforeMiB;
    console.log(
      `convert ${(bytes / 2 ** 20).toFixed(0)} MiB in 1 shard, --chunk-mb 4: ` +
        `peak RSS ${r.peakRssMiB.toFixed(0)} MiB, ` +
        `+${growth.toFixed(0)} MiB over the ${r.rssBeforeMiB.toFixed(0)} MiB before weights`,
    );
    expect(growth).toBeLessThan(64);
  }, 300_000);

  it.runIf(process.env.EDGE_MOE_BIG_CONVERT === "1")(
    "converts a ≥ 2 GB 3-shard bf16 checkpoint under the same bound",
    () => {
      const dir = join(tmp(), "in");
      const bytes = writeBigCheckpoint(dir, {
        dModel: 2048,
        dFf: 5632,
        nExperts: 8,
        nLayers: 4,
        vocab: 32000,
        nShards: 3,
      });
      expect(bytes).toBeGreaterThan(2 * 2 ** 30);
      const r = convertCli(dir, join(tmp(), "out"), 16);
      const growth = r.peakRssMiB - r.rssBeforeMiB;
      console.log(
        `convert ${(bytes / 2 ** 30).toFixed(2)} GiB in 3 shards, --chunk-mb 16: ` +
          `peak RSS ${r.peakRssMiB.toFixed(0)} MiB, ` +
          `+${growth.toFixed(0)} MiB over the ${r.rssBeforeMiB.toFixed(0)} MiB before weights`,
      );
      expect(growth).toBeLessThan(160);
    },
    1_800_000,
  );
});
