/**
 * Golden fixtures through the real serving path: bundled Worker in workerd, Coordinator and
 * ExpertHost DOs, R2 — logits ≤ 1e-4, greedy tokens and expert ids exact (scripts/lib/verify-lib.ts),
 * also with the experts forced into slices (EXPERT_SLICES).
 */
import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { verifyFixture, MOE_ATOL } from "../../scripts/lib/verify-lib";
import { expectMatchesReference, FIXTURES } from "./helpers";

describe.each(["mixtral-tiny", "mixtral-tiny-bf16", "deepseek-v3-tiny", "deepseek-v3-yarn"])(
  "golden fixture %s through workerd",
  (name) => {
    it("matches the reference logits, greedy tokens, routing and MoE output, with experts on 2 hosts", async () => {
      const r = await verifyFixture(join(FIXTURES, name), { hosts: 2 });
      expect(r.hosts).toBe(2);
      expect(r.rpcsPerLayer.every((n) => n >= 1 && n <= 2)).toBe(true);
      expectMatchesReference(r);
      expect(r.moeWeightDiff).toBeLessThanOrEqual(MOE_ATOL);
    });
  },
);

describe("sliced experts through workerd", () => {
  it.each([
    ["mixtral-tiny", 2, 0],
    ["mixtral-tiny-bf16", 3, 2],
  ] as const)("%s with every expert in %i slices (stages %i) matches the reference", async (name, slices, stages) => {
    const r = await verifyFixture(join(FIXTURES, name), { hosts: 2, expertSlices: slices, stages });
    expect(r.expertSlices).toBe(slices);
    expectMatchesReference(r);
  });
});
