/**
 * @module row-independence.test — an ExpertStore's output row for a token depends only on that
 * token and the expert, never on which other rows share the call (batch size, position in the
 * chunk, other experts): the Worker's fixed-order combine then makes the layer output independent
 * of how the fan-out grouped the rows. Checked bit for bit on f32 and int8 experts and every
 * kernel build.
 */
import { readFileSync, readdirSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ExpertStore, TOKEN_CHUNK } from "../../../src/experts/expert-store";
import type { Q8Path } from "../../../src/kernels/index";
import { loadKernels } from "../../../src/kernels/node";
import { openModel } from "../../../src/model/architectures";
import { memoryFileStore } from "../../../src/model/safetensors";
import type { ModelCheckpoint } from "../../../src/platform/model-store";

async function fixtureModel(name = "mixtral-tiny"): Promise<ModelCheckpoint> {
  const dir = new URL(`../../fixtures/${name}/`, import.meta.url);
  const files: Record<string, Uint8Array> = {};
  for (const f of readdirSync(dir)) if (f !== "golden.json") files[f] = new Uint8Array(readFileSync(new URL(f, dir)));
  const { spec, ckpt } = await openModel(memoryFileStore(files));
  return { id: name, spec, ckpt };
}

function tokens(n: number, d: number, seed: number): Float32Array {
  return Float32Array.from({ length: n * d }, (_, i) => Math.sin(seed * 7.1 + i * 0.37) * (1 + (i % 5)));
}

const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

/** Every int8 dot path the relaxed build can take here (its 4-token tiles, hi/lo digits included). */
const RELAXED_Q8: Q8Path[] = loadKernels("relaxed").q8Paths;

describe.each([
  ...(["scalar", "simd", "relaxed", "best"] as const).flatMap((flavor) =>
    (["none", "int8"] as const).map((quant) => [flavor, quant, "dot_i16x8"] as const),
  ),
  ...RELAXED_Q8.filter((p) => p !== "dot_i16x8").map((p) => ["relaxed", "int8", p] as const),
])("ExpertStore rows on the %s kernels", (flavor, quant, q8Path) => {
  it(`are bit-identical alone and in any batch (quant ${quant}, ${q8Path})`, async () => {
    const m = await fixtureModel();
    const { dModel } = m.spec;
    const kernels = (maxBytes: number) => loadKernels(flavor, { maxBytes, q8Path });
    const store = new ExpertStore(m, 64 << 20, "test", kernels, { quant });
    const n = TOKEN_CHUNK + 7; // crosses a chunk boundary
    const x = tokens(n, dModel, 3);
    // One call: expert 2 takes every token, expert 5 takes them again after it.
    const items = [
      { expert: 2, nTokens: n },
      { expert: 5, nTokens: n },
    ];
    const batched = await store.run(0, items, Float32Array.from([...x, ...x]));
    for (const t of [0, 1, 5, TOKEN_CHUNK - 1, TOKEN_CHUNK, n - 1]) {
      const row = x.subarray(t * dModel, (t + 1) * dModel);
      const alone2 = await store.run(0, [{ expert: 2, nTokens: 1 }], row);
      const alone5 = await store.run(0, [{ expert: 5, nTokens: 1 }], row);
      expect(bits(alone2)).toEqual(bits(batched.subarray(t * dModel, (t + 1) * dModel)));
      expect(bits(alone5)).toEqual(bits(batched.subarray((n + t) * dModel, (n + t + 1) * dModel)));
    }
  });
});
