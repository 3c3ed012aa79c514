/**
 * @module expert-rows.test — an expert read undecoded (readExpertRows) decodes, in any runs of rows,
 * to the values loadExpertWeights returns (f32 and bf16 fixtures), and an ExpertStore blob packed
 * from it (in Wasm) holds the reference JS packer's bytes.
 */
import { describe, expect, it } from "vitest";
import { ExpertStore } from "../../../src/experts/expert-store";
import { loadKernels } from "../../../src/kernels/node";
import { expertPackedBytes, packExpertF32 } from "../../../src/kernels/packing";
import { loadExpertWeights, openModel } from "../../../src/model/architectures";
import { readExpertRows } from "../../../src/model/expert-rows";
import { memoryFileStore } from "../../../src/model/safetensors";
import { FIXTURES, fixtureFiles } from "./helpers";

async function open(fixture: (typeof FIXTURES)[number]) {
  const files = fixtureFiles(fixture);
  delete files["golden.json"];
  return openModel(memoryFileStore(files, fixture));
}

describe.each(FIXTURES)("readExpertRows (%s)", (fixture) => {
  it("decodes any run of rows to loadExpertWeights' values", async () => {
    const { spec, ckpt } = await open(fixture);
    const { dModel, dFf } = spec;
    for (const layer of spec.moeLayers) {
      for (const expert of [0, spec.nExperts - 1]) {
        const want = await loadExpertWeights(ckpt, spec, layer, expert);
        const got = await readExpertRows(ckpt, spec, layer, expert);
        for (const [name, rows, cols] of [
          ["w1", dFf, dModel],
          ["w3", dFf, dModel],
          ["w2", dModel, dFf],
        ] as const) {
          const out = new Float32Array(rows * cols).fill(Number.NaN);
          for (let r0 = 0, n = 1; r0 < rows; r0 += n, n += 2) {
            const m = Math.min(n, rows - r0);
            got[name].copyRows(r0, m, out.subarray(r0 * cols, (r0 + m) * cols));
          }
          expect(out, `${layer}:${expert} ${name}`).toEqual(want[name]);
        }
      }
    }
  });

  it("an ExpertStore packs it into the reference packer's bytes", async () => {
    const { spec, ckpt } = await open(fixture);
    const { dModel, dFf } = spec;
    const bytes = expertPackedBytes("f32", dModel, dFf);
    let kernels = loadKernels("best");
    const store = new ExpertStore({ id: fixture, spec, ckpt }, 64 << 20, "test", (maxBytes) => {
      kernels = loadKernels("best", { maxBytes });
      return kernels;
    });
    expect(store.dtype).toBe("f32");
    const layer = spec.moeLayers[0];
    const loaded = await store.ensure(layer, 1);
    const w = await loadExpertWeights(ckpt, spec, layer, 1);
    const want = new Float32Array(bytes / 4);
    packExpertF32(want, w.w1, w.w3, w.w2, dModel, dFf);
    expect(Buffer.from(kernels.u8(loaded.blob, bytes)).equals(Buffer.from(want.buffer))).toBe(true);
    expect(store.loads).toBe(1);
  });
});
