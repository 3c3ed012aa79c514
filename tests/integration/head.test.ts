/**
 * HeadHost shards in workerd (the bundled Worker's Durable Objects, driven over RPC): on the golden
 * fixtures and on a ragged-vocabulary Granite-layout model with tied embeddings and
 * logits_scaling, the logits of M shards equal the unsplit head's bit for bit (the same kernel
 * build computing [n, vocab] in one call, in Node), greedy tokens and seeded sampling are identical;
 * a shard over its budget is refused with a clear error; embedding rows served by ranged R2 reads
 * and by the HeadHosts equal the checkpoint's rows.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { makeModel, resolveConfig } from "../../scripts/lib/make-model";
import { planHeadShards, type HeadPlacement } from "../../src/coordinator/head-placement";
import { HeadError, runHead } from "../../src/head/head-client";
import { HeadEmbeddings } from "../../src/head/head-embeddings";
import { loadKernels } from "../../src/kernels/node";
import type { KernelFlavor } from "../../src/kernels/index";
import { denseMatmul, loadDenseMatrix } from "../../src/kernels/dense";
import { headRowFormat } from "../../src/head/head-store";
import { openModel, vocabTensorNames } from "../../src/model/architectures";
import type { ModelSpec } from "../../src/model/config";
import { CheckpointEmbeddings, TableEmbeddings } from "../../src/model/embeddings";
import { r2FileStore, type Checkpoint } from "../../src/model/safetensors";
import { argmax, createRng, sampleToken } from "../../src/serving/sampling";
import { FIXTURES, startWithModels } from "./helpers";

/** Small enough that one host cannot hold a fixture's 256 × 64 f32 head (64 KiB), big enough for half. */
const BUDGET_MIB = 0.06;
const BUDGET = Math.floor(BUDGET_MIB * 1024 * 1024);

let w: LocalWorker;
let env: Env;
const models: Record<string, { spec: ModelSpec; ckpt: Checkpoint }> = {};

beforeAll(async () => {
  const granite = join(mkdtempSync(join(tmpdir(), "edge-moe-head-")), "model");
  makeModel(resolveConfig("granite-3.1-1b-a400m"), granite, {
    layers: 1,
    set: { hidden_size: 64, intermediate_size: 32, num_local_experts: 4, num_experts_per_tok: 2, vocab_size: 1003 },
  });
  w = await startWithModels(
    { "mixtral-tiny": join(FIXTURES, "mixtral-tiny"), "deepseek-v3-tiny": join(FIXTURES, "deepseek-v3-tiny"), granite },
    { HEAD_HOST_BUDGET_MB: String(BUDGET_MIB) },
  );
  env = (await w.worker.getEnv()) as unknown as Env;
  for (const id of ["mixtral-tiny", "deepseek-v3-tiny", "granite"])
    models[id] = await openModel(r2FileStore(env.MODELS, `models/${id}/`));
});
afterAll(() => w?.dispose());

/**
 * The unsplit head: the whole table in the format a HeadHost holds it (bf16 when stored bf16, else
 * f32 — the single-isolate forward pass's f32 `matmul`), one kernel call for all n tokens, in Node
 * with the kernel build the HeadHosts picked in workerd, ÷ logits_scaling.
 */
async function unsplitLogits(id: string, hidden: Float32Array, n: number, flavor: KernelFlavor): Promise<Float32Array> {
  const { spec, ckpt } = models[id];
  const table = await ckpt.readF32(vocabTensorNames(spec).head);
  const k = loadKernels(flavor);
  const full = await loadDenseMatrix(k, [new Uint8Array(table.buffer)], {
    rows: spec.vocabSize,
    cols: spec.dModel,
    source: "F32",
    format: headRowFormat(ckpt, spec),
  });
  const out = denseMatmul(k, full, hidden, n);
  if (spec.multipliers.logitsScale !== 1) for (let i = 0; i < out.length; i++) out[i] /= spec.multipliers.logitsScale;
  return out;
}

function placement(id: string, shards: number): HeadPlacement {
  const { spec } = models[id];
  return planHeadShards({
    model: id,
    vocabSize: spec.vocabSize,
    dModel: spec.dModel,
    bytesPerRow: 4 * spec.dModel,
    budgetBytes: 1 << 30,
    shards,
  });
}

const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

describe.each([
  ["mixtral-tiny", [2, 3]],
  ["deepseek-v3-tiny", [2, 3]],
  ["granite", [5, 7]], // 1003 × 64 f32 rows = 251 KiB: at least 5 shards of the 0.06 MiB budget
] as const)("HeadHost shards of %s", (id, shardCounts) => {
  it.each(shardCounts)(
    "%i shards: logits bit-identical to the unsplit head, greedy and seeded sampling identical",
    async (m) => {
      const { spec } = models[id];
      const p = placement(id, m);
      for (const n of [1, 6]) {
        const r = createRng(n * 31 + m);
        const hidden = Float32Array.from({ length: n * spec.dModel }, () => r() * 4 - 2);
        const logits = await runHead(env, p, hidden, n, "logits");
        const st = await env.HEAD_HOST.getByName(p.shards[0].name).stats();
        expect(st.format).toBe(id === "granite" ? "bf16" : "f32"); // make-model writes bf16 dense tensors
        const want = await unsplitLogits(id, hidden, n, st.kernels as KernelFlavor);
        expect(bits(logits)).toEqual(bits(want));
        const greedy = await runHead(env, p, hidden, n, "greedy");
        for (let t = 0; t < n; t++) {
          const row = want.subarray(t * spec.vocabSize, (t + 1) * spec.vocabSize);
          expect(greedy[t]).toBe(argmax(row));
          for (const [seed, temperature, topP] of [
            [7, 1, 1],
            [8, 0.7, 0.9],
            [9, 1.3, 0.5],
          ]) {
            const params = { temperature, topP };
            const got = sampleToken(
              logits.subarray(t * spec.vocabSize, (t + 1) * spec.vocabSize),
              params,
              createRng(seed),
            );
            expect(got).toBe(sampleToken(row, params, createRng(seed)));
          }
        }
      }
    },
  );
});

describe("HeadHost budget", () => {
  it("refuses a shard over HEAD_HOST_BUDGET_MB with a clear error", async () => {
    const p = placement("mixtral-tiny", 1); // 64 KiB of rows, budget 0.06 MiB
    const err = await runHead(env, p, new Float32Array(64), 1, "greedy").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HeadError);
    expect((err as HeadError).code).toBe("budget_exceeded");
    expect((err as HeadError).shard).toBe("mixtral-tiny/head/0-256");
    expect((err as Error).message).toMatch(
      new RegExp(
        String.raw`HeadHost mixtral-tiny/head/0-256 \(HEAD_HOST_BUDGET_MB\): rows \[0, 256\) of "lm_head\.weight" ` +
          String.raw`need 0\.1 MiB \(65536 bytes\) as f32, over the 0\.1 MiB \(62914 bytes\) budget`,
      ),
    );
    // The planner, given the same budget, splits instead.
    const { spec } = models["mixtral-tiny"];
    expect(
      planHeadShards({
        model: "mixtral-tiny",
        vocabSize: spec.vocabSize,
        dModel: spec.dModel,
        bytesPerRow: 4 * spec.dModel,
        budgetBytes: BUDGET,
      }).shards.length,
    ).toBe(2);
  });

  it("reports what each shard holds, within its budget", async () => {
    const p = placement("granite", 5);
    await runHead(env, p, new Float32Array(64), 1, "greedy");
    for (const s of p.shards) {
      const st = await env.HEAD_HOST.getByName(s.name).stats();
      expect(st).toMatchObject({
        model: "granite",
        tensor: "model.embed_tokens.weight",
        rowStart: s.rowStart,
        rowEnd: s.rowEnd,
        format: "bf16",
        budgetBytes: BUDGET,
      });
      expect(st.bytesLoaded).toBe((s.rowEnd - s.rowStart) * 64 * 2); // bf16 rows: half of the planned f32 bytes
      expect(st.bytesLoaded).toBeLessThanOrEqual(st.budgetBytes);
    }
  });
});

describe("embedding rows in workerd", () => {
  const ids = [0, 5, 1002, 31999 % 1003, 5, 640];

  it("ranged R2 reads return the checkpoint's rows (bf16 granite table, f32 mixtral table)", async () => {
    for (const id of ["granite", "mixtral-tiny"]) {
      const { spec, ckpt } = models[id];
      const some = ids.map((i) => i % spec.vocabSize);
      const src = CheckpointEmbeddings.open(ckpt, spec, { cacheBytes: 4096 });
      const table = await ckpt.readF32(vocabTensorNames(spec).embed);
      expect(await src.rows(some)).toEqual(await new TableEmbeddings(table, spec.vocabSize, spec.dModel).rows(some));
    }
  });

  it("the HeadHosts holding a tied table serve the same rows", async () => {
    const { spec, ckpt } = models.granite;
    const table = await ckpt.readF32("model.embed_tokens.weight");
    expect(await new HeadEmbeddings(env, placement("granite", 5)).rows(ids)).toEqual(
      await new TableEmbeddings(table, spec.vocabSize, spec.dModel).rows(ids),
    );
  });
});
