/**
 * @module sliced-experts.test — experts split along their intermediate dimension (src/experts/slices.ts)
 * on the mixtral-tiny fixture: one MoE layer through the fan-out with every expert in S slices
 * (routing expanded to units, partials summed by the fixed-order combine) equals the unsliced layer
 * and a float64 reference within 1e-5; every stored format loads a slice by reading only its rows
 * and columns (int8 stored scales, int4 groups aligned), and the budget counts slices' real bytes.
 *
 * The quantized formats hold the same weight values sliced or not (stored; quantized at load, per-row
 * int8 and int4 quantize down's slice rows on their own), but their kernels quantize the hidden
 * activation per call (16-bit for int8 groups, 12/14-bit for per-row int8, 8-bit for int4), so a
 * slice's activation scale is its own: their sliced output differs from the unsliced one by that
 * rounding (QUANT_SLICE_ATOL for 16 bits; for int4 a fraction of its own error), not by 1e-5.
 */
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { convertModel } from "../../../scripts/lib/convert-lib";
import { dirFileStore } from "../../../scripts/lib/dir-store";
import { initialPlacement } from "../../../src/coordinator/initial-placement";
import { applyOps, checkPlacementInvariants, type Placement } from "../../../src/coordinator/placement";
import { planPlacement } from "../../../src/coordinator/planner/index";
import { flushLoad, recordLoad } from "../../../src/experts/load-reporter";
import type { LoadReport } from "../../../src/experts/protocol";
import { ExpertStore, expertSlicesFor, storeFailure } from "../../../src/experts/expert-store";
import { fanOut, type FanOutTransport } from "../../../src/experts/fan-out";
import {
  chooseSlices,
  expandRouting,
  maxSliceBytes,
  maxSlices,
  sliceRange,
  unitExpert,
  unitOf,
} from "../../../src/experts/slices";
import type { Routing } from "../../../src/gating/router";
import { loadKernels } from "../../../src/kernels/node";
import { expertPackedBytes } from "../../../src/kernels/packing";
import { loadExpertWeights, openModel } from "../../../src/model/architectures";
import { loadExpertSliceQ4, loadExpertSliceQ8 } from "../../../src/model/expert-slices";
import { loadExpertQ4, loadExpertQ8 } from "../../../src/model/quantized";
import { memoryFileStore } from "../../../src/model/safetensors";
import type { ModelCheckpoint } from "../../../src/platform/model-store";

const FIXTURE = new URL("../../fixtures/mixtral-tiny/", import.meta.url);
const newKernels = (maxBytes: number) => loadKernels("best", { maxBytes });
/** Sliced vs unsliced for the 16-bit-activation group formats (see the module comment). */
const QUANT_SLICE_ATOL = 5e-5;

async function fixtureModel(): Promise<ModelCheckpoint> {
  const files: Record<string, Uint8Array> = {};
  for (const f of readdirSync(FIXTURE)) {
    if (f !== "golden.json") files[f] = new Uint8Array(readFileSync(new URL(f, FIXTURE)));
  }
  return { id: "mixtral-tiny", ...(await openModel(memoryFileStore(files))) };
}

async function converted(quant: "int8" | "int4"): Promise<ModelCheckpoint> {
  const out = join(mkdtempSync(join(tmpdir(), `edge-moe-slices-${quant}-`)), "model");
  await convertModel(FIXTURE.pathname, out, { quant });
  return { id: `mixtral-tiny-${quant}`, ...(await openModel(dirFileStore(out))) };
}

/** n tokens routed top-2 over 8 experts, every expert used, distinct weights. */
function routing(n: number): Routing {
  const ids = new Int32Array(n * 2);
  const weights = new Float32Array(n * 2);
  for (let t = 0; t < n; t++) {
    ids[2 * t] = t % 8;
    ids[2 * t + 1] = (t * 3 + 1) % 8 === t % 8 ? (t + 5) % 8 : (t * 3 + 1) % 8;
    weights[2 * t] = 0.3 + 0.05 * (t % 7);
    weights[2 * t + 1] = 1 - weights[2 * t];
  }
  return { n, topK: 2, ids, weights };
}

function activations(n: number, d: number): Float32Array {
  return Float32Array.from({ length: n * d }, (_, i) => Math.sin(i * 0.37 + 1.3));
}

/** One MoE layer through the fan-out, every instance answered by `store` (the Worker backend's shape). */
async function layer(store: ExpertStore, p: Placement, layerIdx: number, r: Routing, h: Float32Array) {
  const transport: FanOutTransport = {
    remote: true,
    call: async (_i, _p, items, x) => {
      try {
        return { ok: true, y: await store.run(layerIdx, items, x) };
      } catch (err) {
        return storeFailure(err);
      }
    },
  };
  const units = expandRouting(r, p.slices ?? 1);
  return fanOut(transport, p, layerIdx, units, h, store.model.spec.dModel, { random: () => 0.5 });
}

/** Σ_k w · W2 (silu(W1 x) ⊙ W3 x) in float64 from the checkpoint's f32 weights. */
async function reference(m: ModelCheckpoint, layerIdx: number, r: Routing, h: Float32Array): Promise<Float64Array> {
  const { dModel: D, dFf: F } = m.spec;
  const out = new Float64Array(r.n * D);
  for (let t = 0; t < r.n; t++) {
    for (let k = 0; k < r.topK; k++) {
      const w = await loadExpertWeights(m.ckpt, m.spec, layerIdx, r.ids[t * r.topK + k]);
      const act = new Float64Array(F);
      for (let j = 0; j < F; j++) {
        let g = 0;
        let u = 0;
        for (let i = 0; i < D; i++) {
          g += w.w1[j * D + i] * h[t * D + i];
          u += w.w3[j * D + i] * h[t * D + i];
        }
        act[j] = (g / (1 + Math.exp(-g))) * u;
      }
      for (let d = 0; d < D; d++) {
        let y = 0;
        for (let j = 0; j < F; j++) y += w.w2[d * F + j] * act[j];
        out[t * D + d] += r.weights[t * r.topK + k] * y;
      }
    }
  }
  return out;
}

/** ‖a − b‖ / ‖b‖ */
function relRms(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  let n = 0;
  for (let i = 0; i < b.length; i++) {
    e += (a[i] - b[i]) ** 2;
    n += b[i] ** 2;
  }
  return Math.sqrt(e / n);
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function placementFor(m: ModelCheckpoint, slices: number, bytes: number): Placement {
  const { spec } = m;
  const init = { model: m.id, nLayers: spec.nLayers, nExperts: spec.nExperts, expertBytes: bytes, minInstances: 3 };
  return initialPlacement({ ...init, slices, budgetBytes: 64 << 20 });
}

describe("slices", () => {
  it("cut the intermediate dimension on multiples of 32 and expand routing to units", () => {
    expect(maxSlices(96)).toBe(3);
    expect([0, 1].map((s) => sliceRange(96, 2, s))).toEqual([
      [0, 32],
      [32, 96],
    ]);
    expect([0, 1, 2].map((s) => sliceRange(100, 3, s))).toEqual([
      [0, 32],
      [32, 64],
      [64, 100],
    ]);
    expect(sliceRange(14336, 2, 1)).toEqual([7168, 14336]);
    expect(() => sliceRange(96, 4, 0)).toThrow(/1\.\.3 slices/);
    expect(unitExpert(unitOf(5, 1, 3), 3)).toEqual({ expert: 5, slice: 1 });
    const r = expandRouting({ n: 1, topK: 2, ids: Int32Array.of(4, -1), weights: Float32Array.of(0.75, 0) }, 2);
    expect([r.topK, [...r.ids], [...r.weights]]).toEqual([4, [8, 9, -1, -1], [0.75, 0.75, 0, 0]]);
  });

  it("are chosen from the expert's bytes against the host budget, or forced", () => {
    // Mixtral-8x7B's int8 expert (≈ 168 MiB) on a 96 MiB host: 2 slices; int4 fits whole.
    const mixtral = { dModel: 4096, dFf: 14336 };
    const bytes = (dtype: "q8" | "q4") => (s: number) => maxSliceBytes(dtype, mixtral.dModel, mixtral.dFf, s);
    expect(chooseSlices(mixtral.dFf, 96 << 20, bytes("q8"))).toBe(2);
    expect(chooseSlices(mixtral.dFf, 96 << 20, bytes("q4"))).toBe(1);
    expect(chooseSlices(mixtral.dFf, 96 << 20, bytes("q8"), 5)).toBe(5);
    expect(() => chooseSlices(96, 1 << 30, bytes("q8"), 4)).toThrow(/EXPERT_SLICES 4/);
    expect(chooseSlices(96, 10, bytes("q8"))).toBe(1); // nothing fits: the placement refuses, naming the budget
  });
});

describe("slices as placement units", () => {
  it("each slice gets its expert's load, and a hot expert's slices are replicated like experts", () => {
    const S = 2;
    const p = initialPlacement({
      model: "units",
      nLayers: 1,
      nExperts: 8,
      slices: S,
      expertBytes: 10,
      budgetBytes: 80,
      minInstances: 4,
      spareFraction: 0.5,
    });
    // The load report counts the expanded routing: expert 3 routed twice → both its units twice.
    const r = expandRouting({ n: 2, topK: 2, ids: Int32Array.of(3, 5, 3, 0), weights: new Float32Array(4) }, S);
    recordLoad(p, 0, r.ids, new Map());
    const sent: LoadReport[] = [];
    const reportLoad = async (report: LoadReport) => void sent.push(report);
    const env = { COORDINATOR: { getByName: () => ({ reportLoad }) } } as unknown as Env;
    flushLoad(env, "units", () => {}, true);
    expect(sent[0].nExperts).toBe(8 * S);
    expect([6, 7, 10, 11, 0, 1].map((u) => sent[0].counts[u])).toEqual([2, 2, 1, 1, 1, 1]);
    // Expert 3 carries most of the traffic: the planner sees units and replicates unit 6 and 7.
    const loads = [Array.from({ length: 8 * S }, (_, u) => (unitExpert(u, S).expert === 3 ? 400 : 10))];
    const plan = planPlacement({ placement: p, loads, expertBytes: 10, threshold: 0.02, maxCopies: 4 });
    const added = plan.ops.flatMap((o) => (o.op === "add-replica" ? [o.expert] : []));
    expect(new Set(added)).toEqual(new Set([unitOf(3, 0, S), unitOf(3, 1, S)]));
    const next = applyOps(p, plan.ops, plan.shares);
    expect(next.slices).toBe(S);
    expect(checkPlacementInvariants(next, undefined, 10)).toEqual([]);
  });
});

describe("sliced experts on mixtral-tiny", () => {
  it.each([2, 3])("one MoE layer in %i slices equals the unsliced layer and a float64 reference (1e-5)", async (S) => {
    const m = await fixtureModel();
    const whole = new ExpertStore(m, 64 << 20, "whole", newKernels);
    const sliced = new ExpertStore(m, 64 << 20, "sliced", newKernels, { slices: S });
    expect(sliced.slices).toBe(S);
    const r = routing(12);
    const h = activations(12, m.spec.dModel);
    for (const L of m.spec.moeLayers) {
      const a = await layer(whole, placementFor(m, 1, whole.expertBytes), L, r, h);
      const p = placementFor(m, S, sliced.expertBytes);
      expect([p.nExperts, p.slices]).toEqual([8 * S, S]);
      // One expert's slices sit on different instances: they run in parallel.
      expect(new Set(Array.from({ length: S }, (_, s) => p.replicas[L][s][0].instance)).size).toBe(S);
      const b = await layer(sliced, p, L, r, h);
      expect(maxDiff(a.out, b.out)).toBeLessThanOrEqual(1e-5);
      expect(maxDiff(b.out, await reference(m, L, r, h))).toBeLessThanOrEqual(1e-5);
    }
    // The budget counts each slice's real bytes (the last slice of 96 in 2 is the wider one).
    const units = sliced.loaded();
    expect(units.length).toBe(m.spec.moeLayers.length * 8 * S);
    const widths = Array.from({ length: S }, (_, s) => {
      const [c0, c1] = sliceRange(m.spec.dFf, S, s);
      return expertPackedBytes("f32", m.spec.dModel, c1 - c0);
    });
    expect(sliced.bytesLoaded).toBe(m.spec.moeLayers.length * 8 * widths.reduce((x, y) => x + y, 0));
  });

  it("int8-group quantized at load: slices hold the whole expert's groups", async () => {
    const m = await fixtureModel();
    const quant = "int8-group";
    const whole = new ExpertStore(m, 64 << 20, "whole", newKernels, { quant });
    const sliced = new ExpertStore(m, 64 << 20, "sliced", newKernels, { quant, slices: 3 });
    const r = routing(10);
    const h = activations(10, m.spec.dModel);
    const a = await layer(whole, placementFor(m, 1, whole.expertBytes), 1, r, h);
    const b = await layer(sliced, placementFor(m, 3, sliced.expertBytes), 1, r, h);
    const own = maxDiff(a.out, await reference(m, 1, r, h)); // the format's own error against f32
    expect(maxDiff(a.out, b.out)).toBeLessThanOrEqual(QUANT_SLICE_ATOL);
    expect(maxDiff(a.out, b.out)).toBeLessThan(own / 20);
  });

  it("int4 quantized at load: gate/up rows are the whole expert's, down's slice rows their own units", async () => {
    const m = await fixtureModel();
    const { spec } = m;
    const whole = await loadExpertQ4(m.ckpt, spec, 1, 5);
    const [c0, c1] = sliceRange(spec.dFf, 3, 1);
    const part = await loadExpertSliceQ4(m.ckpt, spec, 1, 5, { c0, c1 });
    const D = spec.dModel;
    expect(part.w1.q).toEqual(whole.w1.q.slice(c0 * D, c1 * D));
    expect(part.w3.scales).toEqual(whole.w3.scales.slice((c0 * D) / 32, (c1 * D) / 32));
    // Each slice of down is quantized as rows of its own (their power-of-two units from the slice's
    // maxima, as per-row int8 scales each slice row), and 8-bit activations are rounded per slice:
    // sliced vs whole is then a difference of two int4 quantizations, below either's error vs f32.
    const wholeStore = new ExpertStore(m, 64 << 20, "whole", newKernels, { quant: "int4" });
    const sliced = new ExpertStore(m, 64 << 20, "sliced", newKernels, { quant: "int4", slices: 3 });
    const r = routing(10);
    const h = activations(10, D);
    const a = await layer(wholeStore, placementFor(m, 1, wholeStore.expertBytes), 1, r, h);
    const b = await layer(sliced, placementFor(m, 3, sliced.expertBytes), 1, r, h);
    const want = await reference(m, 1, r, h);
    expect(relRms(b.out, a.out)).toBeLessThan(relRms(a.out, want) / 5); // measured 1.4% vs 15.6%
    expect(relRms(b.out, want)).toBeLessThan(1.1 * relRms(a.out, want));
  });

  it("int4 stored (convert --quant int4): a slice reads its rows, byte columns and scale groups", async () => {
    const q4 = await converted("int4");
    const { spec } = q4;
    const full = await loadExpertQ4(q4.ckpt, spec, 1, 5);
    const [c0, c1] = sliceRange(spec.dFf, 2, 1);
    const part = await loadExpertSliceQ4(q4.ckpt, spec, 1, 5, { c0, c1 });
    const D = spec.dModel;
    const w = c1 - c0;
    expect(part.w1.q).toEqual(full.w1.q.slice(c0 * D, c1 * D));
    expect(part.w3.scales).toEqual(full.w3.scales.slice((c0 * D) / 32, (c1 * D) / 32));
    const g = spec.dFf / 32;
    for (let d = 0; d < D; d++) {
      expect(part.w2.q.slice(d * w, (d + 1) * w)).toEqual(full.w2.q.slice(d * spec.dFf + c0, d * spec.dFf + c1));
      expect(part.w2.scales.slice((d * w) / 32, ((d + 1) * w) / 32)).toEqual(
        full.w2.scales.slice(d * g + c0 / 32, d * g + c1 / 32),
      );
    }
    const whole = new ExpertStore(q4, 64 << 20, "whole", newKernels);
    const sliced = new ExpertStore(q4, 64 << 20, "sliced", newKernels, { slices: 2 });
    expect(sliced.dtype).toBe("q4");
    const r = routing(8);
    const h = activations(8, D);
    const a = await layer(whole, placementFor(q4, 1, whole.expertBytes), 1, r, h);
    const b = await layer(sliced, placementFor(q4, 2, sliced.expertBytes), 1, r, h);
    // Same weights; int4 rounds the hidden activation to 8 bits per call, so per slice (module comment).
    const own = maxDiff(a.out, await reference(await fixtureModel(), 1, r, h));
    expect(maxDiff(a.out, b.out)).toBeLessThan(own / 5);
  });

  it("int8 stored (convert --quant int8): gate/up rows keep their scales, down keeps its rows' scales", async () => {
    const q8 = await converted("int8");
    const { spec } = q8;
    const full = await loadExpertQ8(q8.ckpt, spec, 0, 3);
    const [c0, c1] = sliceRange(spec.dFf, 3, 1);
    const part = await loadExpertSliceQ8(q8.ckpt, spec, 0, 3, { c0, c1 });
    const D = spec.dModel;
    const w = c1 - c0;
    expect(part.w1.q).toEqual(full.w1.q.slice(c0 * D, c1 * D));
    expect(part.w3.scales).toEqual(full.w3.scales.slice(c0, c1));
    expect(part.w2.scales).toEqual(full.w2.scales);
    for (let d = 0; d < D; d++)
      expect(part.w2.q.slice(d * w, (d + 1) * w)).toEqual(full.w2.q.slice(d * spec.dFf + c0, d * spec.dFf + c1));
    // The int8 kernels quantize the hidden activation per call, so a slice's differs from the
    // whole expert's by the activation rounding: within the int8 accuracy bound of the f32 layer.
    const f32 = await fixtureModel();
    const sliced = new ExpertStore(q8, 64 << 20, "sliced", newKernels, { slices: 3 });
    expect(sliced.dtype).toBe("q8");
    const r = routing(8);
    const h = activations(8, D);
    const want = await reference(f32, 0, r, h);
    const b = await layer(sliced, placementFor(q8, 3, sliced.expertBytes), 0, r, h);
    let e = 0;
    let n = 0;
    for (let i = 0; i < want.length; i++) {
      e += (b.out[i] - want[i]) ** 2;
      n += want[i] ** 2;
    }
    expect(Math.sqrt(e / n)).toBeLessThan(0.02);
  });

  it("refuses units past the experts' slices, and the budget is checked per slice", async () => {
    const m = await fixtureModel();
    const S = expertSlicesFor("f32", m.spec, 64 << 20, 2);
    const bytes = maxSliceBytes("f32", m.spec.dModel, m.spec.dFf, S);
    const tight = new ExpertStore(m, bytes, "tight", newKernels, { slices: S });
    await expect(tight.ensure(0, 16)).rejects.toThrow(/no expert slice \(unit\) 0:16/);
    await tight.ensure(0, 1); // the wider slice fills the budget …
    await expect(tight.ensure(0, 3)).rejects.toThrow(/expert slice \(unit\) 0:3 .* memory budget/);
  });

  it("reads column ranges in bounded runs of rows", async () => {
    const m = await fixtureModel();
    const name = "model.layers.0.block_sparse_moe.experts.2.w2.weight";
    const all = await m.ckpt.readF32(name);
    const F = m.spec.dFf;
    const cols = await m.ckpt.readF32Cols(name, 3, 20, 32, 64, 3 * F * 4); // 3 rows a run
    for (let r = 0; r < 20; r++)
      expect(Array.from(cols.subarray(r * 32, (r + 1) * 32))).toEqual(
        Array.from(all.subarray((3 + r) * F + 32, (3 + r) * F + 64)),
      );
  });
});
