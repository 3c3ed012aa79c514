/**
 * The Worker's forward pass (src/serving/forward.ts) run in Node against every golden fixture,
 * with routed experts computed locally: logits of every prompt position, greedy decode over the
 * KV cache, expert ids of every MoE layer, and the MoE block fed the golden block input. The
 * end-to-end check through workerd, Durable Objects and R2 is `npm run verify -- <fixture>`.
 */
import { describe, expect, it } from "vitest";
import { readFileSync, readdirSync } from "node:fs";
import { maxAbsDiff, nodeModel, runPrompt } from "../../support/forward-helpers";
import type { Golden } from "../../../scripts/lib/verify-lib";

/** The fixtures in tests/fixtures all carry greedy_logits. */
type FixtureGolden = Golden & { extra: { greedy_logits: number[][] } };

function fixture(name: string) {
  const dir = new URL(`../../fixtures/${name}/`, import.meta.url);
  const files: Record<string, Uint8Array> = {};
  for (const f of readdirSync(dir)) if (f !== "golden.json") files[f] = new Uint8Array(readFileSync(new URL(f, dir)));
  const golden = JSON.parse(readFileSync(new URL("golden.json", dir), "utf8")) as FixtureGolden;
  return { files, golden };
}

const sortedPairs = (ids: ArrayLike<number>, w: ArrayLike<number>) =>
  Array.from(ids, (id, i) => [id, w[i]] as [number, number]).sort((a, b) => a[0] - b[0]);

describe("forward pass vs golden fixtures (Node, local experts)", () => {
  for (const name of ["mixtral-tiny", "mixtral-tiny-bf16", "deepseek-v3-tiny", "deepseek-v3-yarn"]) {
    it(name, async () => {
      const { files, golden } = fixture(name);
      const m = await nodeModel(files);
      const r = await runPrompt(m, golden.prompt_ids, golden.greedy_ids.length);
      expect(maxAbsDiff(r.logits, golden.logits)).toBeLessThan(1e-4);
      expect(r.greedyIds).toEqual(golden.greedy_ids);
      expect(maxAbsDiff(r.greedyLogits, golden.extra.greedy_logits)).toBeLessThan(1e-4);
      const layers = golden.extra.routing_all_layers ?? {};
      expect(Object.keys(r.routing).map(Number)).toEqual(m.spec.moeLayers);
      for (const [L, ids] of Object.entries(layers)) {
        ids.forEach((g, t) =>
          expect([...r.routing[Number(L)][t]].sort((a, b) => a - b)).toEqual([...g].sort((a, b) => a - b)),
        );
      }

      const ml = golden.moe_layer;
      const input = Float32Array.from(ml.input.flat(2) as number[]);
      const { out, routing } = await m.model.moeBlock(ml.layer, input, m.experts, () => 0.5);
      const gOut = ml.output.flat(2) as number[];
      expect(Math.max(...Array.from(out, (v, i) => Math.abs(v - gOut[i])))).toBeLessThan(1e-5);
      ml.expert_ids.forEach((ids, t) => {
        const ours = sortedPairs(
          routing.ids.subarray(t * routing.topK, (t + 1) * routing.topK),
          routing.weights.subarray(t * routing.topK, (t + 1) * routing.topK),
        );
        const gold = sortedPairs(ids, ml.expert_weights[t]);
        expect(ours.map((p) => p[0])).toEqual(gold.map((p) => p[0]));
        ours.forEach((p, i) => expect(Math.abs(p[1] - gold[i][1])).toBeLessThan(1e-5));
      });
    });
  }
});
