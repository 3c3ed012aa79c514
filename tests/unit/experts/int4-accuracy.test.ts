/**
 * @module int4-accuracy.test — the model-level cost of int4 experts (4-bit groups of 32, bf16
 * scales, 16-bit activations; src/kernels/q4g-format.ts) on the golden fixtures, through the
 * Worker's forward pass with ExpertStores (scripts/lib/bench-accuracy.ts): f32 vs int4 experts
 * quantized at load exactly as `convert --quant int4` writes them, 8 seeded prompts × 32 greedy
 * steps. Measured 90–93% greedy-token agreement, relative logit RMS 6–7% (docs-snippets/h8-readme.md):
 * short of issue 14's 98%, because 4-bit rounding of these fixtures' random weights costs ≈ 7% of
 * each expert's output (a least-squares scale search per group did not change it). Tested: ≥ 87%
 * greedy agreement, relative logit RMS ≤ 9%, at ≤ 15% of the f32 bytes.
 */
import { readFileSync, readdirSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { openModel } from "../../../src/model/architectures";
import { memoryFileStore } from "../../../src/model/safetensors";
import { measureInt8Accuracy } from "../../../scripts/lib/bench-accuracy";

async function fixture(name: string) {
  const dir = new URL(`../../fixtures/${name}/`, import.meta.url);
  const files: Record<string, Uint8Array> = {};
  for (const f of readdirSync(dir)) if (f !== "golden.json") files[f] = new Uint8Array(readFileSync(new URL(f, dir)));
  return openModel(memoryFileStore(files));
}

describe("int4 experts vs f32 on the fixtures (forward pass, greedy decode)", () => {
  for (const name of ["mixtral-tiny", "mixtral-tiny-bf16", "deepseek-v3-tiny"]) {
    it(name, async () => {
      const { spec, ckpt } = await fixture(name);
      const r = await measureInt8Accuracy(name, spec, ckpt, { quant: "int4", decode: 32 });
      expect(r.int8Path).toBe("int4 g32");
      expect(r.bytesInt8 / r.bytesF32).toBeLessThan(0.15);
      expect(r.greedyAgreement).toBeGreaterThanOrEqual(0.87);
      expect(r.relLogitRms).toBeLessThanOrEqual(0.09);
    });
  }
});
