/** EMA load windows: half-life, fast attack, multi-window folds, idle decay, trend, rows. */
import { describe, expect, it } from "vitest";
import {
  alphaFromHalfLife,
  createLoadWindow,
  decayIdle,
  foldWindow,
  forecastLoads,
  fromRows,
  loadVariance,
  smoothedLoads,
  toRows,
} from "../../../src/coordinator/load-window";

const symmetric = { alpha: 0.5, riseAlpha: 0.5, trendAlpha: 0 };

describe("load windows", () => {
  it("halves an old window's weight every half-life", () => {
    const a = alphaFromHalfLife(3);
    expect((1 - a) ** 3).toBeCloseTo(0.5, 12);
    expect(() => alphaFromHalfLife(0)).toThrow(/halfLifeWindows must be a positive number/);
  });

  it("takes the first window as is, then mixes with weight alpha", () => {
    let w = createLoadWindow(1, 2, symmetric);
    w = foldWindow(w, { expertCounts: [[100, 10]] });
    expect(smoothedLoads(w)).toEqual([[100, 10]]);
    w = foldWindow(w, { expertCounts: [[0, 30]] });
    expect(smoothedLoads(w)).toEqual([[50, 20]]);
  });

  it("follows rises at riseAlpha and falls at alpha", () => {
    let w = createLoadWindow(1, 1, { alpha: 0.25, riseAlpha: 1, trendAlpha: 0 });
    w = foldWindow(w, { expertCounts: [[100]] });
    w = foldWindow(w, { expertCounts: [[200]] });
    expect(smoothedLoads(w)[0][0]).toBe(200);
    w = foldWindow(w, { expertCounts: [[0]] });
    expect(smoothedLoads(w)[0][0]).toBe(150);
  });

  it("treats a fold spanning w windows as w windows of its average rate", () => {
    const one = foldWindow(
      foldWindow(foldWindow(createLoadWindow(1, 1, symmetric), { expertCounts: [[80]] }), { expertCounts: [[40]] }),
      { expertCounts: [[40]] },
    );
    const two = foldWindow(foldWindow(createLoadWindow(1, 1, symmetric), { expertCounts: [[80]] }), {
      expertCounts: [[80]],
      windows: 2,
    });
    expect(smoothedLoads(two)[0][0]).toBeCloseTo(smoothedLoads(one)[0][0], 12);
    expect(two.windows).toBe(3);
  });

  it("decays idle experts geometrically and drops them below dropBelow", () => {
    let w = foldWindow(createLoadWindow(1, 2, { ...symmetric, dropBelow: 1 }), { expertCounts: [[64, 3]] });
    w = decayIdle(w, 2);
    expect(smoothedLoads(w)).toEqual([[16, 0]]);
    expect(toRows(w).experts.map((r) => r.expert)).toEqual([0]);
  });

  it("forecasts a linear ramp with its trend", () => {
    let w = createLoadWindow(1, 1, { alpha: 0.5, riseAlpha: 0.5, trendAlpha: 0.5 });
    for (let t = 0; t < 40; t++) w = foldWindow(w, { expertCounts: [[100 + 10 * t]] });
    // After 40 windows of +10 per window the forecast is close to the next count (500).
    expect(forecastLoads(w)[0][0]).toBeGreaterThan(495);
    expect(forecastLoads(w)[0][0]).toBeLessThan(505);
    expect(smoothedLoads(w)[0][0]).toBeLessThan(495); // the plain EMA lags
  });

  it("tracks the forecast error as variance, starting Poisson", () => {
    let w = foldWindow(createLoadWindow(1, 1, { ...symmetric, varianceAlpha: 1 }), { expertCounts: [[100]] });
    expect(loadVariance(w)[0][0]).toBe(100);
    w = foldWindow(w, { expertCounts: [[130]] });
    expect(loadVariance(w)[0][0]).toBe(900);
  });

  it("round-trips through rows, and grows per-instance rates as instances appear", () => {
    let w = createLoadWindow(2, 3, { halfLifeWindows: 2 });
    w = foldWindow(w, {
      expertCounts: [
        [1, 0, 3],
        [0, 5, 0],
      ],
      instanceCounts: [4, 5],
    });
    w = foldWindow(w, {
      expertCounts: [
        [2, 0, 1],
        [0, 7, 0],
      ],
      instanceCounts: [4, 5, 6],
    });
    const rows = toRows(w);
    expect(rows.instances).toHaveLength(3);
    const back = fromRows(JSON.parse(JSON.stringify(rows)));
    expect(back).toEqual(w);
  });

  it("names the bad input", () => {
    const w = createLoadWindow(1, 2);
    expect(() => foldWindow(w, { expertCounts: [[1, 2, 3]] })).toThrow(/expertCounts\[0\] has 3 experts, expected 2/);
    expect(() => foldWindow(w, { expertCounts: [[1, -2]] })).toThrow(/finite and ≥ 0/);
    expect(() => createLoadWindow(0, 2)).toThrow(/nLayers must be an integer ≥ 1/);
    expect(() =>
      fromRows({
        meta: toRows(w).meta,
        experts: [{ layer: 3, expert: 0, rate: 1, variance: 0, trend: 0 }],
        instances: [],
      }),
    ).toThrow(/outside 1 layers × 2 experts/);
  });
});
