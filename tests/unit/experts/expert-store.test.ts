/**
 * @module expert-store.test — ExpertStore on the mixtral-tiny fixture: packed f32 and int8 experts
 * give the kernels' reference results, the budget counts the real bytes of each dtype (int8 ≈ ¼),
 * unload frees, and a checkpoint that stores int8 experts (`.qweight` / `.scales`) loads as int8.
 */
import { readFileSync, readdirSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ExpertStore, StoreFailure } from "../../../src/experts/expert-store";
import { q8ActivationBits } from "../../../src/kernels/index";
import { loadKernels } from "../../../src/kernels/node";
import { expertPackedBytes, quantizeRowsQ8 } from "../../../src/kernels/packing";
import { expertFfnQ8Ref, expertFfnRef } from "../../../src/kernels/reference";
import { expertTensorRefs, loadExpertWeights, openModel } from "../../../src/model/architectures";
import { expertStoredBytes, hasQuantizedExperts, loadExpertQ8, quantNames } from "../../../src/model/quantized";
import { memoryFileStore, type Checkpoint, type TensorInfo } from "../../../src/model/safetensors";
import type { ModelCheckpoint } from "../../../src/platform/model-store";

async function fixtureModel(name = "mixtral-tiny"): Promise<ModelCheckpoint> {
  const dir = new URL(`../../fixtures/${name}/`, import.meta.url);
  const files: Record<string, Uint8Array> = {};
  for (const f of readdirSync(dir)) if (f !== "golden.json") files[f] = new Uint8Array(readFileSync(new URL(f, dir)));
  const { spec, ckpt } = await openModel(memoryFileStore(files));
  return { id: name, spec, ckpt };
}

const newKernels = (maxBytes: number) => loadKernels("best", { maxBytes });

function tokens(n: number, d: number, seed: number): Float32Array {
  return Float32Array.from({ length: n * d }, (_, i) => Math.sin(seed * 7.1 + i * 0.37));
}

function relRms(got: Float32Array, want: Float32Array): number {
  let e = 0;
  let w = 0;
  for (let i = 0; i < want.length; i++) {
    e += (got[i] - want[i]) ** 2;
    w += want[i] ** 2;
  }
  return Math.sqrt(e / w);
}

/** mixtral-tiny as convert --quant int8 writes it: expert tensors replaced by `.qweight` (I8 values,
 * read as exact f32) + `.scales`. Structural stand-in until Checkpoint reads the I8 dtype. */
async function int8Checkpoint(m: ModelCheckpoint): Promise<Checkpoint> {
  const real = m.ckpt;
  const quantized = new Map<string, { q: Float32Array; scales: Float32Array; info: TensorInfo }>();
  for (const L of m.spec.moeLayers) {
    for (let e = 0; e < m.spec.nExperts; e++) {
      const refs = expertTensorRefs(real, m.spec, L, e);
      for (const r of [refs.w1, refs.w3, refs.w2]) {
        const info = real.info(r.tensor);
        const [rows, cols] = [info.shape[0], info.shape[1]];
        const qr = quantizeRowsQ8(await real.readF32(r.tensor), rows, cols);
        quantized.set(r.tensor, { q: Float32Array.from(qr.q), scales: qr.scales, info });
      }
    }
  }
  const byQ = new Map([...quantized].map(([n, v]) => [quantNames(n).qweight, v]));
  const byS = new Map([...quantized].map(([n, v]) => [quantNames(n).scales, v]));
  const fake = {
    source: real.source,
    tensors: real.tensors,
    has: (n: string) => (quantized.has(n) ? false : byQ.has(n) || byS.has(n) || real.has(n)),
    info: (n: string) => {
      const q = byQ.get(n);
      if (q) return { ...q.info, name: n, dtype: "I8" };
      return real.info(n);
    },
    readF32: async (n: string) => byS.get(n)?.scales.slice() ?? real.readF32(n),
    readF32Rows: async (n: string, first: number, rows: number) => {
      const q = byQ.get(n);
      if (!q) return real.readF32Rows(n, first, rows);
      const cols = q.info.shape[1];
      return q.q.slice(first * cols, (first + rows) * cols);
    },
  };
  return fake as unknown as Checkpoint;
}

describe("ExpertStore", () => {
  it("runs packed f32 experts like the reference and counts their bytes", async () => {
    const m = await fixtureModel();
    const { dModel, dFf } = m.spec;
    const store = new ExpertStore(m, 64 << 20, "test", newKernels);
    expect(store.dtype).toBe("f32");
    const items = [
      { expert: 0, nTokens: 2 },
      { expert: 3, nTokens: 1 },
      { expert: 5, nTokens: 70 },
    ];
    const x = tokens(73, dModel, 1);
    const y = await store.run(0, items, x);
    let row = 0;
    for (const it of items) {
      const w = await loadExpertWeights(m.ckpt, m.spec, 0, it.expert);
      const want = new Float32Array(it.nTokens * dModel);
      expertFfnRef(
        want,
        x.subarray(row * dModel, (row + it.nTokens) * dModel),
        w.w1,
        w.w3,
        w.w2,
        it.nTokens,
        dModel,
        dFf,
        new Float32Array(2 * it.nTokens * dFf),
      );
      const got = y.subarray(row * dModel, (row + it.nTokens) * dModel);
      for (let i = 0; i < want.length; i++)
        expect(Math.abs(got[i] - want[i])).toBeLessThan(1e-5 * (1 + Math.abs(want[i])));
      row += it.nTokens;
    }
    expect(store.bytesLoaded).toBe(3 * expertPackedBytes("f32", dModel, dFf));
    expect(store.expertBytes).toBe(3 * dModel * dFf * 4);
    expect(store.calls).toBe(1);
    expect(store.tokens).toBe(73);
  });

  it("quantizes to int8 at load with quant: int8, within the int8 reference, at ~¼ of the bytes", async () => {
    const m = await fixtureModel();
    const { dModel, dFf } = m.spec;
    const store = new ExpertStore(m, 64 << 20, "test", newKernels, { quant: "int8" });
    expect(store.dtype).toBe("q8");
    expect(store.expertBytes).toBe(expertStoredBytes(m.ckpt, m.spec, "int8"));
    expect(store.expertBytes / expertStoredBytes(m.ckpt, m.spec)).toBeLessThan(0.3); // ¼ + 8 bytes a row
    const x = tokens(5, dModel, 2);
    const y = await store.run(1, [{ expert: 2, nTokens: 5 }], x);
    const w = await loadExpertWeights(m.ckpt, m.spec, 1, 2);
    const q = [quantizeRowsQ8(w.w1, dFf, dModel), quantizeRowsQ8(w.w3, dFf, dModel), quantizeRowsQ8(w.w2, dModel, dFf)];
    const k = loadKernels("best");
    const want = new Float32Array(5 * dModel);
    expertFfnQ8Ref(want, x, q[0], q[1], q[2], 5, dModel, dFf, q8ActivationBits(k.q8Path));
    expect(relRms(y, want)).toBeLessThan(2e-3);
    const f32 = new Float32Array(5 * dModel);
    expertFfnRef(f32, x, w.w1, w.w3, w.w2, 5, dModel, dFf, new Float32Array(10 * dFf));
    expect(relRms(y, f32)).toBeLessThan(0.05);
  });

  it("takes the 7-bit relaxed int8 path when asked (int8Activations: 7bit) where the kernels have it", async () => {
    const m = await fixtureModel();
    const { dModel, dFf } = m.spec;
    const store = new ExpertStore(m, 64 << 20, "test", newKernels, { quant: "int8", int8Activations: "7bit" });
    const x = tokens(4, dModel, 4);
    const y = await store.run(0, [{ expert: 1, nTokens: 4 }], x);
    const relaxed = loadKernels("best").relaxedDotAvailable;
    expect(store.q8Path?.endsWith("_7bit")).toBe(relaxed);
    const w = await loadExpertWeights(m.ckpt, m.spec, 0, 1);
    const f32 = new Float32Array(4 * dModel);
    expertFfnRef(f32, x, w.w1, w.w3, w.w2, 4, dModel, dFf, new Float32Array(8 * dFf));
    expect(relRms(y, f32)).toBeLessThan(0.08);
    expect(new ExpertStore(m, 64 << 20, "f32", newKernels).q8Path).toBeNull();
  });

  it("budgets the real bytes: a budget of 4 int8 experts holds only 1 f32 expert", async () => {
    const m = await fixtureModel();
    const budget = 4 * expertStoredBytes(m.ckpt, m.spec, "int8") + 8;
    const q8 = new ExpertStore(m, budget, "q8 store", newKernels, { quant: "int8" });
    for (let e = 0; e < 4; e++) await q8.ensure(0, e);
    await expect(q8.ensure(0, 4)).rejects.toMatchObject({ code: "budget_exceeded" });
    const f32 = new ExpertStore(m, budget, "f32 store", newKernels);
    await f32.ensure(0, 0);
    const err = await f32.ensure(0, 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreFailure);
    expect((err as StoreFailure).message).toMatch(/f32 store: loading expert 0:1/);
    const inUse = q8.wasmBytesInUse;
    q8.unload([
      { layer: 0, expert: 1 },
      { layer: 0, expert: 3 },
    ]);
    expect(q8.loaded()).toEqual([
      { layer: 0, expert: 0 },
      { layer: 0, expert: 2 },
    ]);
    expect(q8.wasmBytesInUse).toBe(inUse - 2 * q8.expertBytes);
    await q8.ensure(0, 4); // room again
  });

  it("loads experts stored as int8 (.qweight / .scales) as int8 without being asked", async () => {
    const m = await fixtureModel();
    const ckpt = await int8Checkpoint(m);
    expect(hasQuantizedExperts(m.ckpt, m.spec)).toBe(false);
    expect(hasQuantizedExperts(ckpt, m.spec)).toBe(true);
    expect(expertStoredBytes(ckpt, m.spec)).toBe(expertPackedBytes("q8", m.spec.dModel, m.spec.dFf));
    const fromFile = await loadExpertQ8(ckpt, m.spec, 1, 6);
    const atLoad = await loadExpertQ8(m.ckpt, m.spec, 1, 6);
    expect(fromFile.w2.q).toEqual(atLoad.w2.q);
    expect(fromFile.w1.scales).toEqual(atLoad.w1.scales);
    const stored = new ExpertStore({ ...m, ckpt }, 64 << 20, "test", newKernels);
    const quantAtLoad = new ExpertStore(m, 64 << 20, "test", newKernels, { quant: "int8" });
    expect(stored.dtype).toBe("q8");
    const x = tokens(3, m.spec.dModel, 3);
    expect(await stored.run(1, [{ expert: 6, nTokens: 3 }], x)).toEqual(
      await quantAtLoad.run(1, [{ expert: 6, nTokens: 3 }], x),
    );
  });

  it("names the tensors next to the original: <base>.qweight and <base>.scales", () => {
    expect(quantNames("model.layers.0.block_sparse_moe.experts.3.w1.weight")).toEqual({
      qweight: "model.layers.0.block_sparse_moe.experts.3.w1.qweight",
      scales: "model.layers.0.block_sparse_moe.experts.3.w1.scales",
    });
    expect(quantNames("model.layers.0.mlp.experts.gate_up_proj")).toEqual({
      qweight: "model.layers.0.mlp.experts.gate_up_proj.qweight",
      scales: "model.layers.0.mlp.experts.gate_up_proj.scales",
    });
  });
});
