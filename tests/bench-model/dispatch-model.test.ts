/**
 * The benchmark's dispatch model (scripts/lib/dispatch-model.ts): rows are conserved under every
 * replica choice, the whole-window oracle is never worse than a static split, least-loaded calls
 * approach the oracle where the shares alone cannot.
 */
import { describe, expect, it } from "vitest";
import type { Placement, Replica } from "../../src/coordinator/placement";
import { DispatchModel, maxOverMean, oracleRows, splitRows } from "../../scripts/lib/dispatch-model";
import { makeRng } from "../../scripts/lib/workloads";

function placementOf(replicas: Replica[][], nInstances: number): Placement {
  const instances = Array.from({ length: nInstances }, (_, id) => ({ id, name: `h${id}`, budgetBytes: 1e9 }));
  return { model: "t", version: 1, nLayers: 1, nExperts: replicas.length, instances, replicas: [replicas] };
}

/** Expert 0 (50 rows) only on instance 0; expert 1 (100 rows) on 0 and 1 with the planner's shares. */
const RIGID = placementOf(
  [
    [{ instance: 0, share: 1 }],
    [
      { instance: 0, share: 0.25 },
      { instance: 1, share: 0.75 },
    ],
  ],
  2,
);

describe("dispatch model", () => {
  it("conserves every row under split, oracle and least-loaded", () => {
    const rng = makeRng(3);
    const n = 6;
    const replicas: Replica[][] = Array.from({ length: 20 }, () => {
      const a = Math.floor(rng() * n);
      const b = (a + 1 + Math.floor(rng() * (n - 1))) % n;
      return rng() < 0.5
        ? [{ instance: a, share: 1 }]
        : [
            { instance: a, share: 0.3 },
            { instance: b, share: 0.7 },
          ];
    });
    const p = placementOf(replicas, n);
    const counts = replicas.map(() => Math.floor(rng() * 200));
    const total = counts.reduce((x, y) => x + y, 0);
    const sum = (xs: ArrayLike<number>) => Array.from(xs).reduce((x, y) => x + y, 0);
    expect(sum(splitRows(replicas, counts, n))).toBeCloseTo(total, 6);
    expect(sum(oracleRows(replicas, counts, n))).toBeCloseTo(total, 6);
    const model = new DispatchModel(
      n,
      { rowsPerBatch: 8, dispatchers: 3, halfLifeWindows: 0.5, resetOnChange: true },
      1,
    );
    expect(sum(model.rows(p, 0, counts))).toBe(total);
    expect(maxOverMean(oracleRows(replicas, counts, n), n)).toBeLessThanOrEqual(
      maxOverMean(splitRows(replicas, counts, n), n) + 1e-9,
    );
  });

  it("least-loaded calls balance what the shares alone cannot", () => {
    const counts = [50, 100];
    // The oracle fills both instances to 75.
    expect(Array.from(oracleRows(RIGID.replicas[0], counts, 2)).map(Math.round)).toEqual([75, 75]);
    const ll = new DispatchModel(2, { rowsPerBatch: 3, dispatchers: 1, halfLifeWindows: 4, resetOnChange: true }, 7);
    let llMax = 0;
    for (let t = 0; t < 10; t++) llMax = maxOverMean(ll.rows(RIGID, 0, counts), 2);
    expect(llMax).toBeLessThan(1.1); // ~75 / 75
    // The shares alone put 50 + 25 on instance 0 and 75 on instance 1 here; shift them and only
    // dispatch can re-balance.
    const skewed = placementOf(
      [
        [{ instance: 0, share: 1 }],
        [
          { instance: 0, share: 0.5 },
          { instance: 1, share: 0.5 },
        ],
      ],
      2,
    );
    expect(maxOverMean(splitRows(skewed.replicas[0], counts, 2), 2)).toBeGreaterThan(1.3); // 100 / 75
    const ll2 = new DispatchModel(2, { rowsPerBatch: 3, dispatchers: 1, halfLifeWindows: 4, resetOnChange: true }, 7);
    for (let t = 0; t < 10; t++) llMax = maxOverMean(ll2.rows(skewed, 0, counts), 2);
    expect(llMax).toBeLessThan(1.1);
  });
});
