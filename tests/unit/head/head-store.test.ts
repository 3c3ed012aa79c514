/**
 * HeadStore shards against the unsplit head, on every kernel build: logits bit for bit (a ragged
 * vocabulary and an odd dModel, so the kernel's tail rows and tail columns are exercised), greedy
 * tokens, seeded sampling, and the budget refusal.
 */
import { describe, expect, it } from "vitest";
import type { KernelFlavor } from "../../../src/kernels/index";
import { loadKernels } from "../../../src/kernels/node";
import { denseMatmul, loadDenseMatrix } from "../../../src/kernels/dense";
import {
  HEAD_ROW_ALIGN,
  planHeadShards,
  shardOfRow,
  type HeadPlacement,
} from "../../../src/coordinator/head-placement";
import { HeadStore, HeadStoreFailure } from "../../../src/head/head-store";
import { GreedyMerge, placeSlice, tokenCalls } from "../../../src/head/head-client";
import type { ModelSpec } from "../../../src/model/config";
import { type Checkpoint, decodeToF32 } from "../../../src/model/safetensors";
import { f32ToBf16Bytes } from "../../../src/model/safetensors-writer";
import { argmax, createRng, sampleToken } from "../../../src/serving/sampling";
import { nodeKernels } from "../kernels/node-source";
import { randn } from "../kernels/helpers";
import { checkpoint, D_MODEL, graniteSpec, VOCAB } from "./helpers";

const flavors = (["scalar", "simd", "relaxed"] as const).filter((f) => nodeKernels.supports(f));
const BIG = 1 << 30;

async function shardStores(
  ckpt: Checkpoint,
  spec: ModelSpec,
  p: HeadPlacement,
  flavor: KernelFlavor,
): Promise<HeadStore[]> {
  return Promise.all(
    p.shards.map((s) =>
      HeadStore.load(
        ckpt,
        spec,
        { model: "m", rowStart: s.rowStart, rowEnd: s.rowEnd },
        { budgetBytes: BIG, label: s.name, kernels: (maxBytes) => loadKernels(flavor, { maxBytes }) },
      ),
    ),
  );
}

const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

describe.each(flavors)("head shards, %s kernels", (flavor) => {
  it.each(["F32", "BF16"] as const)(
    "%s table: logits bit-identical to the unsplit head (one kernel call, ÷ logits_scaling), greedy and sampling too",
    async (dtype) => {
      const spec = graniteSpec(false);
      const { ckpt, table } = await checkpoint(dtype, false);
      // The unsplit head: the whole table in the same format, one kernel call for all n tokens.
      const k = loadKernels(flavor);
      const stored = dtype === "F32" ? table : decodeToF32(f32ToBf16Bytes(table), "BF16");
      const full = await loadDenseMatrix(k, [new Uint8Array(stored.buffer)], {
        rows: VOCAB,
        cols: D_MODEL,
        source: "F32",
        format: dtype === "F32" ? "f32" : "bf16",
      });
      for (const n of [1, 2, 3, 4, 5, 7, 18, 35]) {
        const hidden = randn(createRng(100 + n), n * D_MODEL, 2);
        const want = denseMatmul(k, full, hidden, n);
        for (let i = 0; i < want.length; i++) want[i] /= spec.multipliers.logitsScale;
        for (const m of [1, 2, 3, 5]) {
          const p = planHeadShards({
            model: "m",
            vocabSize: VOCAB,
            dModel: D_MODEL,
            bytesPerRow: 4 * D_MODEL,
            budgetBytes: BIG,
            shards: m,
          });
          const stores = await shardStores(ckpt, spec, p, flavor);
          expect(stores[0].format).toBe(dtype === "F32" ? "f32" : "bf16");
          const got = new Float32Array(n * VOCAB);
          const merge = new GreedyMerge(n);
          p.shards.forEach((s, i) => {
            placeSlice(got, stores[i].logits(hidden, n), 0, n, VOCAB, s);
            const g = stores[i].greedy(hidden, n);
            merge.add(g.max, g.argmax);
          });
          expect(bits(got), `n=${n}, ${m} shards`).toEqual(bits(want));
          for (let t = 0; t < n; t++) {
            const row = want.subarray(t * VOCAB, (t + 1) * VOCAB);
            expect(merge.tokens[t], `greedy, token ${t}`).toBe(argmax(row));
            for (const seed of [1, 2, 3]) {
              const params = { temperature: 0.8, topP: 0.9 };
              expect(sampleToken(got.subarray(t * VOCAB, (t + 1) * VOCAB), params, createRng(seed))).toBe(
                sampleToken(row, params, createRng(seed)),
              );
            }
          }
        }
      }
      // And the logits are the table's: within f32 rounding of a float64 dot product.
      const hidden = randn(createRng(5), D_MODEL, 2);
      const [one] = await shardStores(
        ckpt,
        spec,
        planHeadShards({ model: "m", vocabSize: VOCAB, dModel: D_MODEL, bytesPerRow: 4 * D_MODEL, budgetBytes: BIG }),
        flavor,
      );
      const logits = one.logits(hidden, 1);
      for (const j of [0, 1, 500, VOCAB - 1]) {
        let s = 0;
        for (let d = 0; d < D_MODEL; d++) s += hidden[d] * stored[j * D_MODEL + d];
        expect(Math.abs(logits[j] - s / 6)).toBeLessThan(1e-5);
      }
    },
  );

  it("greedy ties go to the lowest id across shards", () => {
    const merge = new GreedyMerge(2);
    merge.add(Float32Array.of(1, 5), Int32Array.of(3, 1));
    merge.add(Float32Array.of(1, 6), Int32Array.of(10, 12)); // equal max: keeps id 3
    merge.add(Float32Array.of(2, 6), Int32Array.of(20, 30)); // greater: 20; equal: keeps 12
    expect([...merge.tokens]).toEqual([20, 12]);
  });
});

describe("head shard budget", () => {
  it("refuses rows over the budget with a message naming the rows, the need and the budget", async () => {
    const spec = graniteSpec(true);
    const { ckpt } = await checkpoint("F32", true);
    const err = await HeadStore.load(
      ckpt,
      spec,
      { model: "m", rowStart: 0, rowEnd: VOCAB },
      {
        budgetBytes: 64 * 1024,
        label: "HeadHost m/head/0-1003 (HEAD_HOST_BUDGET_MB)",
        kernels: (maxBytes) => loadKernels("simd", { maxBytes }),
      },
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HeadStoreFailure);
    expect((err as HeadStoreFailure).code).toBe("budget_exceeded");
    expect((err as Error).message).toMatch(
      new RegExp(
        String.raw`HEAD_HOST_BUDGET_MB.*rows \[0, 1003\) of "model\.embed_tokens\.weight" ` +
          String.raw`need 0\.1 MiB \(152464 bytes\) as f32, over the 0\.1 MiB \(65536 bytes\) budget`,
      ),
    );
  });

  it("refuses rows that are not on the shard grid", async () => {
    const spec = graniteSpec(true);
    const { ckpt } = await checkpoint("F32", true);
    const opts = { budgetBytes: BIG, label: "h", kernels: (maxBytes: number) => loadKernels("simd", { maxBytes }) };
    for (const [a, b] of [
      [1, 8],
      [0, 6],
      [0, VOCAB + 1],
      [8, 8],
    ]) {
      const err = await HeadStore.load(ckpt, spec, { model: "m", rowStart: a, rowEnd: b }, opts).catch(
        (e: unknown) => e,
      );
      expect((err as HeadStoreFailure).code, `[${a}, ${b})`).toBe("bad_request");
    }
  });

  it("serves embedding rows of the tied table it holds, exactly", async () => {
    const spec = graniteSpec(true);
    const { ckpt, table } = await checkpoint("F32", true);
    const s = await HeadStore.load(
      ckpt,
      spec,
      { model: "m", rowStart: 500, rowEnd: 1000 },
      { budgetBytes: BIG, label: "h", kernels: (maxBytes) => loadKernels("simd", { maxBytes }) },
    );
    expect(s.embedRows([])).toEqual(new Float32Array(0));
    const many = Array.from({ length: 40 }, (_, i) => 500 + ((i * 37) % 500)); // more than one gather chunk
    expect(s.embedRows(many)).toEqual(
      Float32Array.from(many.flatMap((id) => [...table.subarray(id * D_MODEL, (id + 1) * D_MODEL)])),
    );
    const rows = s.embedRows([500, 999, 731]);
    expect(rows).toEqual(
      Float32Array.from([
        ...table.subarray(500 * D_MODEL, 501 * D_MODEL),
        ...table.subarray(999 * D_MODEL, 1000 * D_MODEL),
        ...table.subarray(731 * D_MODEL, 732 * D_MODEL),
      ]),
    );
    expect(() => s.embedRows([499])).toThrow(/not in this shard's rows \[500, 1000\)/);
  });
});

describe("planHeadShards", () => {
  it("covers the vocabulary with the fewest aligned shards that fit the budget", () => {
    const granite = { model: "g", vocabSize: 49155, dModel: 1024, bytesPerRow: 4096 };
    const p = planHeadShards({ ...granite, budgetBytes: 96 * 1024 * 1024 });
    expect(p.shards.length).toBe(3); // 192 MiB of f32 rows over 96 MiB shards
    expect(p.shards[0].rowStart).toBe(0);
    expect(p.shards.at(-1)!.rowEnd).toBe(49155);
    for (const [i, s] of p.shards.entries()) {
      expect(s.rowStart % HEAD_ROW_ALIGN).toBe(0);
      if (i > 0) expect(s.rowStart).toBe(p.shards[i - 1].rowEnd);
      expect(s.bytes).toBeLessThanOrEqual(96 * 1024 * 1024);
      expect(s.name).toBe(`g/head/${s.rowStart}-${s.rowEnd}`);
      expect(shardOfRow(p, s.rowStart)).toBe(s);
      expect(shardOfRow(p, s.rowEnd - 1)).toBe(s);
    }
    expect(planHeadShards({ ...granite, budgetBytes: 96 * 1024 * 1024, minShards: 5 }).shards.length).toBe(5);
    expect(() => planHeadShards({ ...granite, budgetBytes: 96 * 1024 * 1024, shards: 2 })).toThrow(
      /over the HeadHost budget .*use at least 3 shards/,
    );
    expect(() => planHeadShards({ ...granite, vocabSize: 7, budgetBytes: 1 << 30, shards: 3 })).toThrow(
      /more than the 2 blocks/,
    );
  });

  it("splits token calls on 4-token tiles and bounds each shard's logits payload", () => {
    const p = planHeadShards({
      model: "g",
      vocabSize: 49155,
      dModel: 1024,
      bytesPerRow: 4096,
      budgetBytes: 96 * 1024 * 1024,
    });
    const calls = tokenCalls(p, 1000, "logits");
    expect(calls.reduce((a, [, m]) => a + m, 0)).toBe(1000);
    for (const [t0, m] of calls) {
      expect(t0 % 4).toBe(0);
      expect(m * (p.shards[0].rowEnd - p.shards[0].rowStart) * 4).toBeLessThanOrEqual(16 * 1024 * 1024);
    }
    expect(tokenCalls(p, 1000, "greedy")).toEqual([[0, 1000]]);
  });
});
