/**
 * @module YaRN frequencies and scales (src/model/rope.ts) against values computed here, independently,
 * in float64 from the YaRN formulas, against the deepseek-v3-yarn fixture's oracle values, and the
 * config parser's acceptance of DeepSeek-V2/V3 rope_scaling.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../../src/model/config";
import {
  plainInvFreq,
  ropeFrequencies,
  yarnAttentionScale,
  yarnCorrectionRange,
  yarnCosSinScale,
  yarnInvFreq,
  type YarnSpec,
} from "../../../src/model/rope";
import { DEEPSEEK_V2_LITE, DEEPSEEK_V3 } from "../../support/family-configs";
import { expectModelError } from "./helpers";

const FIXTURE = new URL("../../fixtures/deepseek-v3-yarn/", import.meta.url);
const readJson = (f: string): Record<string, unknown> =>
  JSON.parse(readFileSync(new URL(f, FIXTURE), "utf8")) as Record<string, unknown>;
/** Copies of the published configs (see scripts/configs/README.md). */
const SHARED_CONFIG = (name: string) => new URL(`../../../scripts/configs/${name}`, import.meta.url);

/** Independent float64 YaRN: wavelength per pair, ramp between the beta_fast and beta_slow wavelengths. */
function referenceInvFreq(theta: number, d: number, y: YarnSpec): number[] {
  const dimFor = (rot: number) => (d * Math.log(y.originalMaxPositions / (2 * Math.PI * rot))) / (2 * Math.log(theta));
  const lo = Math.max(0, Math.floor(dimFor(y.betaFast)));
  let hi = Math.min(d - 1, Math.ceil(dimFor(y.betaSlow)));
  if (hi === lo) hi += 0.001;
  const out: number[] = [];
  for (let i = 0; i < d / 2; i++) {
    const f = theta ** (-(2 * i) / d);
    const t = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
    out.push(f * (1 - t) + (f / y.factor) * t);
  }
  return out;
}
const m = (f: number, x: number) => (f <= 1 ? 1 : 0.1 * x * Math.log(f) + 1);

const V3_YARN: YarnSpec = {
  factor: 40,
  originalMaxPositions: 4096,
  betaFast: 32,
  betaSlow: 1,
  mscale: 1,
  mscaleAllDim: 1,
};
// biome-ignore lint/suspicious/noApproximativeNumericConstant: DeepSeek-V2-Lite's config value, not √½.
const V2_LITE_MSCALE = 0.707;
const V2_LITE_YARN: YarnSpec = { ...V3_YARN, mscale: V2_LITE_MSCALE, mscaleAllDim: V2_LITE_MSCALE };

describe("YaRN math", () => {
  it("matches the deepseek-v3-yarn oracle's inv_freq and softmax scale", () => {
    const golden = readJson("golden.json") as { extra: { rope_inv_freq: number[]; softmax_scale: number } };
    const spec = parseConfig(readJson("config.json"));
    const r = ropeFrequencies(spec.rope);
    expect(yarnCorrectionRange(spec.rope.yarn as YarnSpec, 10000, 8)).toEqual([0, 1]);
    // The oracle computed in float32 (torch): equal within 2 float32 ulps.
    golden.extra.rope_inv_freq.forEach((v, i) => expect(Math.abs(r.invFreq[i] - v) / v).toBeLessThan(2.5e-7));
    expect(r.cosSinScale).toBe(1);
    expect(spec.attention.scale).toBeCloseTo(golden.extra.softmax_scale, 12);
    expect(r.softmaxScaleMul).toBeCloseTo((0.1 * Math.log(4) + 1) ** 2, 14);
  });

  it("equals an independent float64 computation on the published DeepSeek shapes", () => {
    for (const [y, d] of [
      [V3_YARN, 64],
      [V2_LITE_YARN, 64],
      [{ ...V3_YARN, factor: 4, originalMaxPositions: 16 }, 8],
    ] as const) {
      const got = yarnInvFreq(10000, d, y);
      const want = referenceInvFreq(10000, d, y);
      for (let i = 0; i < want.length; i++) expect(got[i]).toBeCloseTo(want[i], 15);
    }
    // V3 at 4096 positions: pairs below the fast boundary keep θ-frequency, those past the slow one are /40.
    const [lo, hi] = yarnCorrectionRange(V3_YARN, 10000, 64);
    expect([lo, hi]).toEqual([10, 23]);
    const plain = plainInvFreq(10000, 64);
    const yarn = yarnInvFreq(10000, 64, V3_YARN);
    expect(yarn[lo]).toBe(plain[lo]);
    expect(yarn[31]).toBeCloseTo(plain[31] / 40, 18);
  });

  it("scales the softmax by mscale_all_dim² and cos/sin by mscale / mscale_all_dim (V2 as V3)", () => {
    expect(yarnAttentionScale(V3_YARN)).toBeCloseTo(m(40, 1) ** 2, 14);
    expect(yarnAttentionScale(V2_LITE_YARN)).toBeCloseTo(m(40, V2_LITE_MSCALE) ** 2, 14);
    expect(yarnCosSinScale(V2_LITE_YARN)).toBe(1);
    expect(yarnCosSinScale({ ...V3_YARN, mscale: 1, mscaleAllDim: 0 })).toBeCloseTo(m(40, 1), 14);
    expect(yarnAttentionScale({ ...V3_YARN, mscaleAllDim: 0 })).toBe(1);
    // factor 1: no magnitude change at all.
    expect(yarnAttentionScale({ ...V3_YARN, factor: 1 })).toBe(1);
  });

  it("is plain RoPE without yarn", () => {
    const r = ropeFrequencies({ theta: 1e6, rotDim: 16, yarn: null });
    expect(r).toMatchObject({ cosSinScale: 1, softmaxScaleMul: 1 });
    expect(r.invFreq[3]).toBeCloseTo(1e6 ** (-6 / 16), 15);
  });
});

describe("parseConfig with YaRN (DeepSeek families)", () => {
  it("accepts the published DeepSeek-V2-Lite and V3 rope_scaling", () => {
    const v2 = JSON.parse(readFileSync(SHARED_CONFIG("deepseek-v2-lite.json"), "utf8")) as Record<string, unknown>;
    const s2 = parseConfig(v2);
    expect(s2.rope.yarn).toEqual(V2_LITE_YARN);
    expect(s2.router).toMatchObject({ scoring: "softmax", nGroup: 1, renormalize: false, routedScale: 1 });
    expect(s2.attention.scale).toBeCloseTo((1 / Math.sqrt(192)) * m(40, V2_LITE_MSCALE) ** 2, 14);
    const v3 = JSON.parse(readFileSync(SHARED_CONFIG("deepseek-v3.json"), "utf8")) as Record<string, unknown>;
    delete v3.quantization_config; // what convert writes after dequantizing fp8
    expect(parseConfig(v3).rope.yarn).toEqual(V3_YARN);
  });

  it("accepts rope_type as well as type, and applies defaults", () => {
    const s = parseConfig({
      ...DEEPSEEK_V2_LITE,
      rope_scaling: { rope_type: "yarn", factor: 4, original_max_position_embeddings: 16 },
    });
    expect(s.rope.yarn).toEqual({
      factor: 4,
      originalMaxPositions: 16,
      betaFast: 32,
      betaSlow: 1,
      mscale: 1,
      mscaleAllDim: 0,
    });
    expect(s.attention.scale).toBeCloseTo(1 / 4, 15);
  });

  describe("rejects, naming the field", () => {
    const yarn = { type: "yarn", factor: 4, original_max_position_embeddings: 16 };
    const cases: [string, unknown, string[]][] = [
      ["a non-object", "yarn", ["rope_scaling", "object"]],
      ["another type", { type: "dynamic", factor: 2 }, ["rope_scaling.type", "dynamic"]],
      ["type and rope_type disagreeing", { ...yarn, rope_type: "linear" }, ["rope_scaling.rope_type", "disagrees"]],
      ["a missing factor", { type: "yarn", original_max_position_embeddings: 16 }, ["rope_scaling.factor", "missing"]],
      ["a factor < 1", { ...yarn, factor: 0.5 }, ["rope_scaling.factor", "≥ 1"]],
      ["a missing original length", { type: "yarn", factor: 4 }, ["rope_scaling.original_max_position_embeddings"]],
      [
        "a fractional original length",
        { ...yarn, original_max_position_embeddings: 1.5 },
        ["original_max_position_embeddings", "integer"],
      ],
      ["beta_fast ≤ beta_slow", { ...yarn, beta_fast: 1, beta_slow: 2 }, ["rope_scaling.beta_fast", "beta_slow"]],
      ["a negative mscale", { ...yarn, mscale_all_dim: -1 }, ["rope_scaling.mscale_all_dim"]],
      ["an unknown key", { ...yarn, truncate: false }, ["rope_scaling.truncate", "not supported"]],
    ];
    for (const [what, rs, words] of cases) {
      it(what, async () => {
        await expectModelError(() => parseConfig({ ...DEEPSEEK_V3, rope_scaling: rs }), words);
      });
    }
  });
});
