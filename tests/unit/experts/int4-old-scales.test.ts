/**
 * @module int4-old-scales.test — an int4 checkpoint converted before the kernel held group scales as
 * integer subs of one power of two per row: a row whose small scale has more bits than a sub keeps
 * is refused at load with a ModelFormatError naming the tensor and the fix, not loaded with that
 * scale rounded (silently changed weights).
 */
import { mkdtempSync, openSync, closeSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { convertModel } from "../../../scripts/lib/convert-lib";
import { dirFileStore } from "../../../scripts/lib/dir-store";
import { inexactQ4Scale, Q4_GROUP, quantizeQ4g } from "../../../src/kernels/q4g-format";
import { expertTensorRefs, openModel } from "../../../src/model/architectures";
import { ModelFormatError } from "../../../src/model/errors";
import { loadExpertSliceQ4 } from "../../../src/model/expert-slices";
import { loadExpertQ4, quantNames, quantView } from "../../../src/model/quantized";

const FIXTURE = new URL("../../fixtures/mixtral-tiny/", import.meta.url).pathname;
/** bf16 1.0, and ≈ 0.01227 = 2^-7 · 201/128: eight significant bits seven binades below the row's largest. */
const ONE = 0x3f80;
const OLD_SMALL = 0x3c49;

describe("int4 scales the kernel cannot hold exactly", () => {
  it("are found by inexactQ4Scale; the quantizer's own scales never are", () => {
    expect(inexactQ4Scale(Uint16Array.of(ONE, OLD_SMALL, ONE, ONE), 2)).toBe(1);
    expect(inexactQ4Scale(Uint16Array.of(ONE, 0x3c00, ONE, 0), 2)).toBe(-1);
    const w = Float32Array.from({ length: 8 * 256 }, (_, i) => Math.sin(i * 0.91) * (i % 256 < 32 ? 40 : 0.01));
    const m = quantizeQ4g(w, 8, 256, Q4_GROUP);
    expect(inexactQ4Scale(m.scales, 256 / Q4_GROUP)).toBe(-1);
  });

  it("make an old-format checkpoint refuse to load, naming the tensor and `convert --quant int4`", async () => {
    const out = join(mkdtempSync(join(tmpdir(), "edge-moe-int4-old-")), "model");
    await convertModel(FIXTURE, out, { quant: "int4" });
    const before = await openModel(dirFileStore(out));
    const { spec } = before;
    const layer = spec.moeLayers[0];
    const ref = expertTensorRefs(quantView(before.ckpt), spec, layer, 5).w1;
    const scales = quantNames(ref.tensor).scales;
    const info = before.ckpt.info(scales);
    expect(info.dtype).toBe("BF16");
    // Row 0 of expert 5's w1 as an older converter could write it: a large scale and a small one
    // rounded to bf16 on its own, not to a sub of the row's unit.
    const at = info.offset + ref.firstRow * info.shape[info.shape.length - 1] * 2;
    const fd = openSync(join(out, info.file), "r+");
    writeSync(fd, new Uint8Array(Uint16Array.of(ONE, OLD_SMALL).buffer), 0, 4, at);
    closeSync(fd);
    const after = await openModel(dirFileStore(out));
    const err = await loadExpertQ4(after.ckpt, spec, layer, 5).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelFormatError);
    expect((err as ModelFormatError).tensor).toBe(scales);
    expect((err as Error).message).toContain(scales);
    expect((err as Error).message).toContain("convert --quant int4");
    const slice = await loadExpertSliceQ4(after.ckpt, spec, layer, 5, { c0: 0, c1: Q4_GROUP }).catch((e: unknown) => e);
    expect(slice).toBeInstanceOf(ModelFormatError);
    // The other experts' scales are untouched and still load.
    await expect(loadExpertQ4(after.ckpt, spec, layer, 4)).resolves.toBeDefined();
  });
});
