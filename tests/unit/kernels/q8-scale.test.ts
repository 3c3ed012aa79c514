/**
 * @module q8-scale.test — the error-minimising int8 scale (src/kernels/q8-scale.ts) as both int8
 * quantizers use it: per-row experts (quantizeRowsQ8) and group-wise experts (quantizeQ8g with
 * Q8_DIVISORS; dense stages keep its absmax default). The format is unchanged (q ∈ [-127, 127], one
 * f32 scale), so these check what the search promises: every scale is max|w| / d for a listed
 * divisor, never more squared error than absmax on its own row or group, measurably less on Gaussian
 * weights, and bit-identical to absmax when only 127 is listed (what earlier checkpoints hold).
 */
import { describe, expect, it } from "vitest";
import { dequantizeQ8g, quantizeQ8g } from "../../../src/kernels/dense-format";
import { dequantizeQ8, quantizeRowsQ8 } from "../../../src/kernels/packing";
import { Q8_DIVISORS, q8Value, searchQ8Scale } from "../../../src/kernels/q8-scale";
import { randn, rng } from "./helpers";

/** Σ (w − ŵ)² over [k0, k1). */
function sqErr(w: Float32Array, back: Float32Array, k0: number, k1: number): number {
  let e = 0;
  for (let k = k0; k < k1; k++) e += (w[k] - back[k]) ** 2;
  return e;
}

/** Seeded Gaussian weights (Box–Muller on the helpers' uniform source): what the fixtures hold. */
function gaussian(seed: number, len: number, sigma: number): Float32Array {
  const next = rng(seed);
  return Float32Array.from(
    { length: len },
    () => sigma * Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next()),
  );
}

function amaxOf(w: Float32Array, k0: number, k1: number): number {
  let m = 0;
  for (let k = k0; k < k1; k++) m = Math.max(m, Math.abs(w[k]));
  return m;
}

describe("searchQ8Scale", () => {
  it("returns max|w| / d for a listed divisor, absmax on ties, [0, 0] for a zero group", () => {
    const w = randn(rng(11), 64, 1);
    const [s, inv] = searchQ8Scale(w, 0, 64);
    const amax = amaxOf(w, 0, 64);
    expect(Q8_DIVISORS.some((d) => s === Math.fround(amax / d) && inv === Math.fround(d / amax))).toBe(true);
    expect(searchQ8Scale(new Float32Array(8), 0, 8)).toEqual([0, 0]);
    // One non-zero weight: every divisor ≤ 127 represents it exactly; absmax (listed first) is kept.
    const one = new Float32Array([0, 0.5, 0, 0]);
    expect(searchQ8Scale(one, 0, 4)).toEqual([Math.fround(0.5 / 127), Math.fround(127 / 0.5)]);
  });

  it("q8Value rounds half to even and clamps to ±127", () => {
    expect([0.5, 1.5, -2.5, 200, -300].map((v) => q8Value(v, 1))).toEqual([0, 2, -2, 127, -127]);
  });
});

describe("int8 quantizers with searched scales", () => {
  const [rows, cols] = [48, 96];
  const w = gaussian(5, rows * cols, 0.02);
  w.fill(0, 7 * cols, 8 * cols); // a zero row

  it("quantizeRowsQ8: per row never worse than absmax, ≥ 2.5% less RMS error overall", () => {
    const searched = quantizeRowsQ8(w, rows, cols);
    const absmax = quantizeRowsQ8(w, rows, cols, [127]);
    const bs = dequantizeQ8(searched, rows, cols);
    const ba = dequantizeQ8(absmax, rows, cols);
    let [es, ea] = [0, 0];
    for (let j = 0; j < rows; j++) {
      const [k0, k1] = [j * cols, (j + 1) * cols];
      const amax = amaxOf(w, k0, k1);
      expect(Q8_DIVISORS.some((d) => searched.scales[j] === Math.fround(amax / d))).toBe(true);
      expect(absmax.scales[j]).toBe(Math.fround(amax / 127));
      const [rs, ra] = [sqErr(w, bs, k0, k1), sqErr(w, ba, k0, k1)];
      expect(rs).toBeLessThanOrEqual(ra);
      es += rs;
      ea += ra;
    }
    for (const v of searched.q) expect(Math.abs(v)).toBeLessThanOrEqual(127);
    expect(searched.scales[7]).toBe(0);
    expect(Math.sqrt(es / ea)).toBeLessThan(0.975);
  });

  it("quantizeQ8g (groups of 32, as experts load them): never worse per group, ≥ 7% less", () => {
    const group = 32;
    const searched = quantizeQ8g(w, rows, cols, group, Q8_DIVISORS);
    const absmax = quantizeQ8g(w, rows, cols, group);
    const bs = dequantizeQ8g(searched);
    const ba = dequantizeQ8g(absmax);
    let [es, ea] = [0, 0];
    for (let g = 0; g < (rows * cols) / group; g++) {
      const [k0, k1] = [g * group, (g + 1) * group];
      const amax = amaxOf(w, k0, k1);
      expect(absmax.scales[g]).toBe(Math.fround(amax / 127));
      const [gs, ga] = [sqErr(w, bs, k0, k1), sqErr(w, ba, k0, k1)];
      expect(gs).toBeLessThanOrEqual(ga);
      es += gs;
      ea += ga;
    }
    expect(Math.sqrt(es / ea)).toBeLessThan(0.93);
  });

  it("a ragged last group and its zero padding are searched like any other", () => {
    const c = 40; // groups of 32: the second holds 8 weights and 24 zeros of padding
    const x = randn(rng(9), 3 * c, 1);
    const m = quantizeQ8g(x, 3, c, 32, Q8_DIVISORS);
    for (let j = 0; j < 3; j++) {
      expect(Array.from(m.q.subarray(j * 64 + 40, j * 64 + 64)).every((v) => v === 0)).toBe(true);
      const amax = amaxOf(x, j * c + 32, j * c + 40);
      expect(Q8_DIVISORS.some((d) => m.scales[2 * j + 1] === Math.fround(amax / d))).toBe(true);
    }
  });
});
