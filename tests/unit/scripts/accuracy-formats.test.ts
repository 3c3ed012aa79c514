/**
 * @module accuracy-formats.test — the pieces `npm run bench:accuracy` reports with
 * (scripts/lib/accuracy-formats.ts): the Wilson interval, the i.i.d.-Gaussian statistics (on
 * Gaussian, heavy-tailed and correlated inputs), the injected noise's relative RMS, and that each
 * TS weight format's error sits where its bit count puts it on Gaussian weights.
 */
import { describe, expect, it } from "vitest";
import {
  GaussianCheck,
  gaussianNoise,
  gaussianSource,
  sqError,
  WEIGHT_FORMATS,
  wilson,
} from "../../../scripts/lib/accuracy-formats";

const gaussian = (seed: number, n: number) => Float32Array.from({ length: n }, gaussianSource(seed));

describe("wilson", () => {
  it("matches the textbook interval and stays inside [0, 1]", () => {
    const [lo, hi] = wilson(254, 256);
    expect(lo).toBeCloseTo(0.9719, 3);
    expect(hi).toBeCloseTo(0.9979, 3);
    const [lo1, hi1] = wilson(1024, 1024);
    expect(hi1).toBe(1);
    expect(lo1).toBeGreaterThan(0.996);
    expect(wilson(0, 10)[0]).toBe(0);
  });
});

describe("GaussianCheck", () => {
  it("reads i.i.d. Gaussian weights as such", () => {
    const c = new GaussianCheck();
    c.add(gaussian(3, 256 * 512), 256, 512);
    const r = c.result();
    expect(Math.abs(r.excessKurtosis)).toBeLessThan(0.05);
    expect(Math.abs(r.lag1Corr)).toBeLessThan(4 * r.corrNoise);
    expect(Math.abs(r.rowCorr)).toBeLessThan(4 * r.corrNoise);
    expect(r.beyond3Sigma).toBeGreaterThan(0.0022);
    expect(r.beyond3Sigma).toBeLessThan(0.0032);
    expect(r.rowVarianceRatio).toBeGreaterThan(0.8);
    expect(r.rowVarianceRatio).toBeLessThan(1.2);
  });

  it("flags heavy tails, correlation along rows and rows of different scales", () => {
    const g = gaussian(4, 128 * 256);
    const heavy = new GaussianCheck();
    heavy.add(
      g.map((v) => v ** 3),
      128,
      256,
    );
    expect(heavy.result().excessKurtosis).toBeGreaterThan(5);
    const smooth = new GaussianCheck();
    smooth.add(
      g.map((v, i) => v + (i % 256 > 0 ? g[i - 1] : 0)),
      128,
      256,
    );
    expect(smooth.result().lag1Corr).toBeGreaterThan(0.4);
    const scaled = new GaussianCheck();
    scaled.add(
      g.map((v, i) => v * (1 + (Math.floor(i / 256) % 2))),
      128,
      256,
    );
    expect(scaled.result().rowVarianceRatio).toBeGreaterThan(10);
  });
});

describe("weight formats and noise", () => {
  const [rows, cols] = [64, 256];
  const w = gaussian(7, rows * cols).map((v) => 0.02 * v);
  const rel = (back: Float32Array) => {
    const [e, s] = sqError(w, back);
    return Math.sqrt(e / s);
  };

  it("gaussianNoise adds the requested relative RMS, the same for the same key", () => {
    const noisy = gaussianNoise(0.05)(w, rows, cols, "0:1:w1");
    expect(rel(noisy)).toBeGreaterThan(0.048);
    expect(rel(noisy)).toBeLessThan(0.052);
    expect(gaussianNoise(0.05)(w, rows, cols, "0:1:w1")).toEqual(noisy);
    expect(gaussianNoise(0.05)(w, rows, cols, "0:1:w3")).not.toEqual(noisy);
  });

  it("every format's error is above the rate–distortion bound 2^-bits and in its class", () => {
    for (const f of WEIGHT_FORMATS) {
      const e = rel(f.transform(Float32Array.from(w), rows, cols, "k"));
      expect(e).toBeGreaterThanOrEqual(f.name === "f32" ? 0 : 2 ** -f.bits);
      if (f.bits >= 8) expect(e).toBeLessThan(0.01);
      else expect(e).toBeGreaterThan(0.05);
      if (f.bits < 8) expect(e).toBeLessThan(0.11);
    }
  });
});
