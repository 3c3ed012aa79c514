/**
 * @module int4-checkpoint.test — `convert --quant int4` output read back: the stored form is detected
 * (scales of the weight's rank), the adapters see the original shapes through quantView, the experts
 * read from `.qweight`/`.scales` equal the ones quantized at load bit for bit, and the bytes an
 * ExpertStore counts are the int4 bytes.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { convertModel } from "../../../scripts/lib/convert-lib";
import { dirFileStore } from "../../../scripts/lib/dir-store";
import { ExpertStore } from "../../../src/experts/expert-store";
import { loadKernels } from "../../../src/kernels/node";
import { expertQ4gBytes, Q4_GROUP } from "../../../src/kernels/q4g-format";
import { expertTensorRefs, openModel } from "../../../src/model/architectures";
import { expertStoredBytes, loadExpertQ4, quantView, storedExpertQuant } from "../../../src/model/quantized";

const FIXTURE = new URL("../../fixtures/mixtral-tiny/", import.meta.url).pathname;

describe("int4 checkpoints (convert --quant int4)", () => {
  it("are detected, read back exactly, and budgeted at their real bytes", async () => {
    const out = join(mkdtempSync(join(tmpdir(), "edge-moe-int4-unit-")), "model");
    const report = await convertModel(FIXTURE, out, { quant: "int4" });
    expect(report.expertBytesOut / report.expertBytesIn).toBeCloseTo((0.5 + 2 / Q4_GROUP) / 4, 6);
    const f32 = await openModel(dirFileStore(FIXTURE));
    const q4 = await openModel(dirFileStore(out));
    const { spec } = f32;
    expect(storedExpertQuant(f32.ckpt, spec)).toBe("none");
    expect(storedExpertQuant(q4.ckpt, spec)).toBe("int4");
    const refs = expertTensorRefs(quantView(q4.ckpt), spec, spec.moeLayers[0], 5);
    expect(refs.w1.shape).toEqual([spec.dFf, spec.dModel]);
    const fromFile = await loadExpertQ4(q4.ckpt, spec, spec.moeLayers[0], 5);
    const atLoad = await loadExpertQ4(f32.ckpt, spec, spec.moeLayers[0], 5);
    for (const m of ["w1", "w3", "w2"] as const) {
      expect(fromFile[m].q).toEqual(atLoad[m].q);
      expect(fromFile[m].scales).toEqual(atLoad[m].scales);
    }
    expect(expertStoredBytes(q4.ckpt, spec)).toBe(expertQ4gBytes(spec.dModel, spec.dFf, Q4_GROUP));
    expect(expertStoredBytes(f32.ckpt, spec, "int4")).toBe(expertQ4gBytes(spec.dModel, spec.dFf, Q4_GROUP));
    const newKernels = (maxBytes: number) => loadKernels("best", { maxBytes });
    const stored = new ExpertStore({ id: "q4", ...q4 }, 64 << 20, "stored", newKernels);
    const quantAtLoad = new ExpertStore({ id: "f32", ...f32 }, 64 << 20, "at load", newKernels, { quant: "int4" });
    expect(stored.dtype).toBe("q4");
    expect(quantAtLoad.dtype).toBe("q4");
    const x = Float32Array.from({ length: 3 * spec.dModel }, (_, i) => Math.sin(i * 0.37));
    const items = [{ expert: 5, nTokens: 3 }];
    expect(await stored.run(spec.moeLayers[0], items, x)).toEqual(await quantAtLoad.run(spec.moeLayers[0], items, x));
  });
});
