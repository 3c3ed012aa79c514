/**
 * @module int8-group-checkpoint.test — `convert --quant int8-group` output read back: the stored form
 * is detected (F32 scales of the weight's rank; int4's are BF16), the adapters see the original
 * shapes through quantView, the experts read from `.qweight`/`.scales` equal the ones quantized at
 * load bit for bit (whole and as slices), and the bytes an ExpertStore counts are the group-wise int8
 * bytes.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { convertModel } from "../../../scripts/lib/convert-lib";
import { dirFileStore } from "../../../scripts/lib/dir-store";
import { ExpertStore } from "../../../src/experts/expert-store";
import { expertQ8gBytes } from "../../../src/kernels/dense-format";
import { loadKernels } from "../../../src/kernels/node";
import { Q8_EXPERT_GROUP } from "../../../src/kernels/packing";
import { expertTensorRefs, openModel } from "../../../src/model/architectures";
import { loadExpertSliceQ8g } from "../../../src/model/expert-slices";
import { expertStoredBytes, loadExpertQ8g, quantView, storedExpertQuant } from "../../../src/model/quantized";

const FIXTURE = new URL("../../fixtures/mixtral-tiny/", import.meta.url).pathname;

describe("int8-group checkpoints (convert --quant int8-group)", () => {
  it("are detected, read back exactly, and budgeted at their real bytes", async () => {
    const out = join(mkdtempSync(join(tmpdir(), "edge-moe-int8g-unit-")), "model");
    const report = await convertModel(FIXTURE, out, { quant: "int8-group" });
    expect(report.expertBytesOut / report.expertBytesIn).toBeCloseTo((1 + 4 / Q8_EXPERT_GROUP) / 4, 6);
    const f32 = await openModel(dirFileStore(FIXTURE));
    const q8g = await openModel(dirFileStore(out));
    const { spec } = f32;
    expect(storedExpertQuant(q8g.ckpt, spec)).toBe("int8-group");
    const layer = spec.moeLayers[0];
    const refs = expertTensorRefs(quantView(q8g.ckpt), spec, layer, 5);
    expect(refs.w1.shape).toEqual([spec.dFf, spec.dModel]);
    const fromFile = await loadExpertQ8g(q8g.ckpt, spec, layer, 5);
    const atLoad = await loadExpertQ8g(f32.ckpt, spec, layer, 5);
    for (const m of ["w1", "w3", "w2"] as const) {
      expect(fromFile[m].q).toEqual(atLoad[m].q);
      expect(fromFile[m].scales).toEqual(atLoad[m].scales);
    }
    const b = { c0: 32, c1: 64 };
    const sliceFile = await loadExpertSliceQ8g(q8g.ckpt, spec, layer, 5, b);
    const sliceLoad = await loadExpertSliceQ8g(f32.ckpt, spec, layer, 5, b);
    for (const m of ["w1", "w3", "w2"] as const) {
      expect(sliceFile[m].q).toEqual(sliceLoad[m].q);
      expect(sliceFile[m].scales).toEqual(sliceLoad[m].scales);
    }
    const bytes = expertQ8gBytes(spec.dModel, spec.dFf, Q8_EXPERT_GROUP);
    expect(expertStoredBytes(q8g.ckpt, spec)).toBe(bytes);
    expect(expertStoredBytes(f32.ckpt, spec, "int8-group")).toBe(bytes);
    const newKernels = (maxBytes: number) => loadKernels("best", { maxBytes });
    const stored = new ExpertStore({ id: "q8g", ...q8g }, 64 << 20, "stored", newKernels);
    const quantAtLoad = new ExpertStore({ id: "f32", ...f32 }, 64 << 20, "at load", newKernels, {
      quant: "int8-group",
    });
    expect([stored.dtype, quantAtLoad.dtype]).toEqual(["q8g", "q8g"]);
    const x = Float32Array.from({ length: 3 * spec.dModel }, (_, i) => Math.sin(i * 0.37));
    const items = [{ expert: 5, nTokens: 3 }];
    expect(await stored.run(layer, items, x)).toEqual(await quantAtLoad.run(layer, items, x));
    expect(stored.expertBytes).toBe(bytes);
  });
});
