import { describe, expect, it } from "vitest";
import {
  Checkpoint,
  decodeToF32,
  MAX_HEADER_BYTES,
  memoryFileStore,
  r2FileStore,
} from "../../../src/model/safetensors";
import { writeSafetensors } from "../../../src/model/safetensors-writer";
import {
  expectModelError,
  f32,
  FIXTURES,
  fixtureCheckpoint,
  fixtureFiles,
  rawSafetensors,
  rawTensors,
  shard,
} from "./helpers";

const le16 = (...halves: number[]) => new Uint8Array(new Uint16Array(halves).buffer);

describe("decodeToF32", () => {
  it("upcasts BF16 exactly (bits << 16)", () => {
    // 0x4049 → 0x40490000 = 2^1 × (1 + 0x49/128) = 3.140625; 0xbf80 → -1; 0x0001 → smallest subnormal 2^-133.
    const out = decodeToF32(le16(0x4049, 0xbf80, 0x0000, 0x0001, 0x7f80, 0xff80), "BF16");
    expect([...out]).toEqual([3.140625, -1, 0, 2 ** -133, Infinity, -Infinity]);
  });

  it("BF16 keeps every bit pattern, NaNs included", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const out = decodeToF32(new Uint8Array(all.buffer), "BF16");
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < 65536; i++)
      if (bits[i] !== i * 65536) throw new Error(`bf16 0x${i.toString(16)} → 0x${bits[i].toString(16)}`);
  });

  it("BF16 from an odd byte offset", () => {
    const buf = new Uint8Array(5);
    buf.set(le16(0x3f80, 0xc040), 1);
    expect([...decodeToF32(buf.subarray(1), "BF16")]).toEqual([1, -3]);
  });

  it("decodes F16 exactly: normals, subnormals, ±0, ±inf, NaN", () => {
    const cases: [number, number][] = [
      [0x3c00, 1],
      [0xc000, -2],
      [0x3555, 0.333251953125],
      [0x7bff, 65504],
      [0x0400, 2 ** -14], // smallest normal
      [0x0001, 2 ** -24], // smallest subnormal
      [0x03ff, 1023 * 2 ** -24], // largest subnormal
      [0x8001, -(2 ** -24)],
      [0x0200, 2 ** -15],
      [0x7c00, Infinity],
      [0xfc00, -Infinity],
    ];
    const out = decodeToF32(le16(...cases.map((c) => c[0])), "F16");
    cases.forEach(([, v], i) => expect(out[i]).toBe(v));
    const special = decodeToF32(le16(0x0000, 0x8000, 0x7e00, 0xfe01), "F16");
    expect(Object.is(special[0], 0)).toBe(true);
    expect(Object.is(special[1], -0)).toBe(true);
    expect(Number.isNaN(special[2])).toBe(true);
    expect(Number.isNaN(special[3])).toBe(true);
  });

  it("F16 matches the IEEE formula for all 65536 patterns", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const out = decodeToF32(new Uint8Array(all.buffer), "F16");
    for (let h = 0; h < 65536; h++) {
      const s = h & 0x8000 ? -1 : 1;
      const e = (h >> 10) & 0x1f;
      const m = h & 0x3ff;
      const want =
        e === 0x1f ? (m ? NaN : s * Infinity) : e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
      if (!Object.is(out[h], want)) throw new Error(`f16 0x${h.toString(16)}: got ${out[h]}, want ${want}`);
    }
  });

  it("copies F32 from an unaligned offset", () => {
    const vals = [1.5, -2.25, Math.fround(3e-30), 7];
    const buf = new Uint8Array(3 + 16);
    const view = new DataView(buf.buffer);
    vals.forEach((v, i) => view.setFloat32(3 + 4 * i, v, true));
    expect([...decodeToF32(buf.subarray(3), "F32")]).toEqual(vals);
  });

  it("writes into the start of a caller's array and returns that view", () => {
    const dst = new Float32Array(6).fill(9);
    const got = decodeToF32(le16(0x3f80, 0x4000), "BF16", dst);
    expect([...got]).toEqual([1, 2]);
    expect(got.buffer).toBe(dst.buffer);
    expect([...dst]).toEqual([1, 2, 9, 9, 9, 9]);
    expect(() => decodeToF32(le16(1, 2, 3), "F16", new Float32Array(2))).toThrow(RangeError);
    expect(() => decodeToF32(new Uint8Array(3), "BF16")).toThrow(RangeError);
  });
});

describe("Checkpoint on the fixtures", () => {
  for (const fixture of FIXTURES) {
    describe(fixture, () => {
      const dtype = fixture === "mixtral-tiny" ? "F32" : "BF16";

      it("lists every tensor with its file, dtype and absolute offset", async () => {
        const ckpt = await fixtureCheckpoint(fixture);
        // embed, lm_head, norm + per layer: 2 norms, 4 attention, router, 8 × 3 expert matrices.
        expect(ckpt.tensors.size).toBe(3 + 2 * (2 + 4 + 1 + 24));
        expect(ckpt.source).toBe("model.safetensors");
        const t = ckpt.info("model.layers.1.block_sparse_moe.experts.7.w2.weight");
        expect(t).toMatchObject({ file: "model.safetensors", dtype, shape: [64, 96] });
        expect(t.byteLength).toBe(64 * 96 * (dtype === "F32" ? 4 : 2));
        expect(ckpt.has("__metadata__")).toBe(false);
      });

      it("reads a tensor as the raw bytes decode", async () => {
        const files = fixtureFiles(fixture);
        const ckpt = await fixtureCheckpoint(fixture);
        const t = ckpt.info("model.layers.0.self_attn.k_proj.weight");
        const got = await ckpt.readF32(t.name, [32, 64]);
        const raw = files["model.safetensors"].subarray(t.offset, t.offset + t.byteLength);
        const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
        for (const i of [0, 1, 777, 32 * 64 - 1]) {
          // Hand decode: f32 as stored, or bf16 bits shifted into the top half of an f32.
          const want =
            dtype === "F32"
              ? view.getFloat32(4 * i, true)
              : new Float32Array(new Uint32Array([view.getUint16(2 * i, true) << 16]).buffer)[0];
          expect(got[i]).toBe(want);
        }
      });

      it("reads row ranges, also straight into a caller's buffer", async () => {
        const ckpt = await fixtureCheckpoint(fixture);
        const name = "model.embed_tokens.weight";
        const all = await ckpt.readF32(name);
        expect([...(await ckpt.readF32Rows(name, 10, 3))]).toEqual([...all.subarray(10 * 64, 13 * 64)]);
        const arena = new Float32Array(1000).fill(-1);
        const into = await ckpt.readF32RowsInto(name, 255, 1, arena.subarray(100));
        expect(into.length).toBe(64);
        expect([...arena.subarray(100, 164)]).toEqual([...all.subarray(255 * 64)]);
        expect(arena[99]).toBe(-1);
        expect(arena[164]).toBe(-1);
        await expect(ckpt.readF32Rows(name, 250, 7)).rejects.toThrow(RangeError);
        await expect(ckpt.readF32RowsInto(name, 0, 2, new Float32Array(100))).rejects.toThrow(RangeError);
      });

      it("a sharded copy (2 shards + index) gives identical tensors", async () => {
        const files = fixtureFiles(fixture);
        const ckpt = await fixtureCheckpoint(fixture);
        const shards = shard(await rawTensors(ckpt, files), 2);
        const sharded = await Checkpoint.open(
          memoryFileStore({ ...shards, "config.json": files["config.json"] }, "sharded"),
        );
        expect(sharded.source).toBe("model.safetensors.index.json");
        expect([...sharded.tensors.keys()].sort()).toEqual([...ckpt.tensors.keys()].sort());
        const files2 = new Set([...sharded.tensors.values()].map((t) => t.file));
        expect([...files2].sort()).toEqual(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
        for (const [name, t] of ckpt.tensors) {
          expect(sharded.info(name)).toMatchObject({ dtype: t.dtype, shape: t.shape });
          expect(await sharded.readF32(name)).toEqual(await ckpt.readF32(name));
        }
      });
    });
  }

  it("opens through an R2 bucket with ranged reads only", async () => {
    const files = fixtureFiles("mixtral-tiny");
    const gets: { key: string; offset: number; length: number }[] = [];
    const bucket = {
      async head(key: string) {
        const data = files[key.replace("models/tiny/", "")];
        return data && key.startsWith("models/tiny/") ? { key, size: data.byteLength } : null;
      },
      async get(key: string, opts: { range: { offset: number; length: number } }) {
        const data = files[key.replace("models/tiny/", "")];
        if (!data) return null;
        const { offset, length } = opts.range;
        gets.push({ key, offset, length });
        return { arrayBuffer: async () => data.slice(offset, offset + length).buffer };
      },
    } as unknown as R2Bucket;
    const r2 = await Checkpoint.open(r2FileStore(bucket, "models/tiny/"));
    const mem = await fixtureCheckpoint("mixtral-tiny");
    expect(gets.length).toBe(1); // the header fits in the first probe read
    expect(gets[0].length).toBeLessThan(files["model.safetensors"].byteLength);
    const name = "model.layers.1.block_sparse_moe.gate.weight";
    expect(await r2.readF32(name)).toEqual(await mem.readF32(name));
    expect(gets[1]).toEqual({
      key: "models/tiny/model.safetensors",
      offset: mem.info(name).offset,
      length: 8 * 64 * 4,
    });
    expect(await r2.readF32Rows(name, 3, 2)).toEqual(await mem.readF32Rows(name, 3, 2));
    await expect(Checkpoint.open(r2FileStore(bucket, "models/none/"))).rejects.toThrow(
      /r2:models\/none\/.*model\.safetensors/,
    );
  });
});

describe("malformed files", () => {
  const one = (bytes: Uint8Array) => Checkpoint.open(memoryFileStore({ "model.safetensors": bytes }));
  const entry = (dtype: string, shape: number[], offsets: [number, number]) => ({
    dtype,
    shape,
    data_offsets: offsets,
  });

  it("a file shorter than 8 bytes", async () => {
    await expectModelError(one(new Uint8Array(5)), ["model.safetensors", "5 bytes", "truncated"]);
  });

  it("a header length beyond the file (truncated inside the header)", async () => {
    const files = fixtureFiles("mixtral-tiny");
    await expectModelError(one(files["model.safetensors"].slice(0, 200)), [
      "model.safetensors",
      "header length",
      "truncated",
    ]);
  });

  it("a truncated data section names the first tensor that no longer fits", async () => {
    const files = fixtureFiles("mixtral-tiny");
    const ckpt = await fixtureCheckpoint("mixtral-tiny");
    const last = [...ckpt.tensors.values()].sort((a, b) => b.offset - a.offset)[0];
    const err = await expectModelError(one(files["model.safetensors"].slice(0, -100)), [
      "model.safetensors",
      `"${last.name}"`,
      "data_offsets",
      "truncated",
    ]);
    expect(err).toMatchObject({ file: "model.safetensors", tensor: last.name, field: "data_offsets" });
  });

  it("data_offsets outside the data section", async () => {
    const bytes = rawSafetensors({ a: entry("F32", [2], [0, 8]), b: entry("F32", [4], [8, 24]) }, 16);
    await expectModelError(one(bytes), ["model.safetensors", '"b"', "[8, 24]", "16-byte data section"]);
  });

  it("an absurd header length", async () => {
    const bytes = new Uint8Array(16);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(MAX_HEADER_BYTES + 1), true);
    await expectModelError(one(bytes), ["model.safetensors", "limit"]);
    new DataView(bytes.buffer).setBigUint64(0, 0xffffffffffffffffn, true);
    await expectModelError(one(bytes), ["model.safetensors", "limit"]);
  });

  it("a header that is not JSON, or not an object", async () => {
    await expectModelError(one(rawSafetensors("{not json", 0)), ["model.safetensors", "JSON"]);
    await expectModelError(one(rawSafetensors([1, 2], 0)), ["model.safetensors", "object"]);
    await expectModelError(one(rawSafetensors({ w: [1] }, 0)), ["model.safetensors", '"w"', "object"]);
  });

  it("an unknown or unsupported dtype", async () => {
    await expectModelError(one(rawSafetensors({ "x.weight": entry("Q4_K", [4], [0, 4]) }, 4)), [
      "model.safetensors",
      '"x.weight"',
      "Q4_K",
      "unknown",
    ]);
    for (const dt of ["I16", "U8", "I32", "F64"]) {
      await expectModelError(one(rawSafetensors({ "x.weight": entry(dt, [4], [0, 32]) }, 32)), [
        "model.safetensors",
        '"x.weight"',
        dt,
        "not supported",
      ]);
    }
  });

  it("shape × dtype size different from the data_offsets span", async () => {
    const err = await expectModelError(one(rawSafetensors({ "x.weight": entry("BF16", [3, 4], [0, 48]) }, 48)), [
      "model.safetensors",
      '"x.weight"',
      "[3, 4]",
      "24 bytes",
      "48",
    ]);
    expect(err.field).toBe("data_offsets");
  });

  it("bad shape and data_offsets values", async () => {
    await expectModelError(one(rawSafetensors({ t: entry("F32", [-1], [0, 4]) }, 4)), ['"t"', "shape"]);
    await expectModelError(one(rawSafetensors({ t: { dtype: "F32", shape: [1], data_offsets: [4, 0] } }, 4)), [
      '"t"',
      "data_offsets",
    ]);
    await expectModelError(one(rawSafetensors({ t: { dtype: "F32", shape: [1] } }, 4)), ['"t"', "data_offsets"]);
  });

  it("ignores __metadata__ and accepts overlapping ranges", async () => {
    const bytes = rawSafetensors(
      { __metadata__: { format: "pt" }, a: entry("F32", [2], [0, 8]), b: entry("F32", [1], [4, 8]) },
      8,
    );
    const ckpt = await one(bytes);
    expect([...ckpt.tensors.keys()].sort()).toEqual(["a", "b"]);
  });

  it("a missing tensor names the tensor and the file", async () => {
    const ckpt = await fixtureCheckpoint("mixtral-tiny");
    await expectModelError(
      () => ckpt.info("model.layers.9.self_attn.q_proj.weight"),
      ["model.safetensors", '"model.layers.9.self_attn.q_proj.weight"', "not found"],
    );
    await expectModelError(ckpt.readF32("nope"), ["model.safetensors", '"nope"']);
  });

  it("a shape other than the expected one", async () => {
    const ckpt = await fixtureCheckpoint("mixtral-tiny");
    await expectModelError(ckpt.readF32("model.norm.weight", [32]), [
      "model.safetensors",
      '"model.norm.weight"',
      "[64]",
      "[32]",
    ]);
  });

  it("no weights at all", async () => {
    await expectModelError(Checkpoint.open(memoryFileStore({ "config.json": new Uint8Array(2) }, "models/empty/")), [
      "models/empty/",
      "model.safetensors",
      "model.safetensors.index.json",
    ]);
  });

  describe("sharded", () => {
    const shardedFiles = async () => {
      const files = fixtureFiles("mixtral-tiny");
      return shard(await rawTensors(await fixtureCheckpoint("mixtral-tiny"), files), 2);
    };
    const index = (files: Record<string, Uint8Array>) =>
      JSON.parse(new TextDecoder().decode(files["model.safetensors.index.json"]));
    const withIndex = (files: Record<string, Uint8Array>, idx: unknown) => ({
      ...files,
      "model.safetensors.index.json": new TextEncoder().encode(JSON.stringify(idx)),
    });

    it("an index pointing at a missing shard", async () => {
      const files = await shardedFiles();
      delete files["model-00002-of-00002.safetensors"];
      const idx = index(files);
      const first = Object.keys(idx.weight_map).find((k) => idx.weight_map[k] === "model-00002-of-00002.safetensors");
      await expectModelError(Checkpoint.open(memoryFileStore(files)), [
        "model.safetensors.index.json",
        "model-00002-of-00002.safetensors",
        `"${first}"`,
        "missing",
      ]);
    });

    it("an index placing a tensor in a shard that lacks it", async () => {
      const files = await shardedFiles();
      const idx = index(files);
      idx.weight_map["model.layers.5.mlp.gate.weight"] = "model-00001-of-00002.safetensors";
      await expectModelError(Checkpoint.open(memoryFileStore(withIndex(files, idx))), [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        '"model.layers.5.mlp.gate.weight"',
      ]);
    });

    it("an index that is not JSON or has no weight_map", async () => {
      const files = await shardedFiles();
      await expectModelError(
        Checkpoint.open(memoryFileStore({ ...files, "model.safetensors.index.json": new TextEncoder().encode("{") })),
        ["model.safetensors.index.json", "JSON"],
      );
      await expectModelError(Checkpoint.open(memoryFileStore(withIndex(files, { metadata: {} }))), [
        "model.safetensors.index.json",
        "weight_map",
      ]);
      await expectModelError(Checkpoint.open(memoryFileStore(withIndex(files, { weight_map: { "a.weight": 3 } }))), [
        "model.safetensors.index.json",
        '"a.weight"',
      ]);
    });

    it("a malformed shard names the shard", async () => {
      const files = await shardedFiles();
      files["model-00002-of-00002.safetensors"] = files["model-00002-of-00002.safetensors"].slice(0, -4);
      await expectModelError(Checkpoint.open(memoryFileStore(files)), [
        "model-00002-of-00002.safetensors",
        "truncated",
      ]);
    });
  });

  it("writeSafetensors output round-trips through the reader", async () => {
    const bytes = writeSafetensors([
      { name: "h", dtype: "F16", shape: [2], data: le16(0x3c00, 0x0001) },
      { name: "f", dtype: "F32", shape: [1], data: new Float32Array([0.5]) },
    ]);
    const ckpt = await one(bytes);
    expect([...(await ckpt.readF32("h"))]).toEqual([1, 2 ** -24]);
    expect([...(await ckpt.readF32("f"))]).toEqual([0.5]);
    expect(f32(bytes.subarray(bytes.length - 4))[0]).toBe(0.5);
  });
});
