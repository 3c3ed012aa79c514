/**
 * @module The sizing plan on published configs: byte counts worked out by hand from the shapes,
 * instance counts, the sliced-expert and oversize-layer blockers, and refusals naming the field.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { expertBytes, isRefusal, planModel, specForPlan, type PlanBudgets } from "../../../scripts/lib/plan-lib";

const config = (name: string) =>
  JSON.parse(readFileSync(new URL(`../../../scripts/configs/${name}.json`, import.meta.url), "utf8")) as Record<
    string,
    unknown
  >;
const BUDGETS: PlanBudgets = {
  stageMb: 96,
  headMb: 96,
  expertMb: 96,
  expertDtype: "int8",
  subrequestLimit: 1000,
  tokens: 256,
};
const COSTS = { rpcMs: 1, userRttMs: 40, nsPerWeight: 1, kernelSource: "test" };
const MIB = 1 << 20;

function plan(name: string, b: Partial<PlanBudgets> = {}) {
  const r = specForPlan(name, config(name));
  if (isRefusal(r)) throw new Error(r.message);
  return planModel(name, r.spec, { ...BUDGETS, ...b }, COSTS, r.notes);
}

describe("plan", () => {
  it("sizes Qwen3-30B-A3B from its shapes", () => {
    const p = plan("qwen3-30b-a3b");
    // int8 expert: 3·2048·768 weights + one f32 scale per row (768 + 768 + 2048 rows).
    expect(expertBytes(2048, 768, "int8")).toBe(3 * 2048 * 768 + 4 * (2 * 768 + 2048));
    expect(p.expert.expertsPerInstance).toBe(Math.floor((96 * MIB) / p.expert.bytesPerExpert));
    expect(p.expert.instances).toBe(Math.ceil((48 * 128) / p.expert.expertsPerInstance));
    // q,o: 2048·32·128 each; k,v: 2048·4·128 each; router 128·2048; at 1 + 4/64 bytes a weight, plus 2 f32 norms.
    const weights = 2 * 2048 * 32 * 128 + 2 * 2048 * 4 * 128 + 128 * 2048;
    expect(p.stage.bytesPerLayer).toBe(Math.ceil(weights * 1.0625) + 8 * 2048);
    expect(p.stage.instances).toBe(Math.ceil(48 / Math.floor((96 * MIB) / p.stage.bytesPerLayer)));
    // Embedding + lm_head (untied), 151936 × 2048 each.
    expect(p.head.bytes).toBe(2 * Math.ceil(151936 * 2048 * 1.0625));
    expect(p.rpcsPerToken).toBe(p.stage.instances + 48 * 8 + p.head.instances);
    expect(p.subrequests.maxTokens).toBe(Math.floor(1000 / p.rpcsPerToken));
    expect(p.blockers).toEqual([]);
  });

  it("needs slices for Mixtral-8x7B's int8 experts, not for int4 ones", () => {
    const p = plan("mixtral-8x7b");
    expect(p.expert.slicesPerExpert).toBe(2);
    expect(p.blockers.join(" ")).toMatch(/slices/);
    const q4 = plan("mixtral-8x7b", { expertDtype: "int4" });
    // Two weights a byte and one bf16 scale per 32: 94.5 MiB, just inside a 96 MiB host.
    expect(q4.expert.bytesPerExpert).toBe(3 * 4096 * 14336 * (0.5 + 2 / 32));
    expect(q4.expert.slicesPerExpert).toBe(1);
    expect(q4.blockers).toEqual([]);
    expect(plan("mixtral-8x7b", { expertDtype: "f32" }).expert.slicesPerExpert).toBe(
      Math.ceil((3 * 4096 * 14336 * 4) / (96 * MIB)),
    );
  });

  it("plans DeepSeek-V3 after fp8 dequantization and names its oversize layers", () => {
    const p = plan("deepseek-v3");
    expect(p.notes.join(" ")).toMatch(/fp8/);
    expect(p.blockers.join(" ")).toMatch(/StageHost/);
    expect(plan("deepseek-v2-lite").blockers).toEqual([]);
  });

  it("refuses gpt-oss and Llama 4, naming the field", () => {
    for (const name of ["gpt-oss-20b", "llama-4-scout"]) {
      const r = specForPlan(name, config(name));
      expect(isRefusal(r) && r.field).toBe("model_type");
    }
  });
});
