/**
 * Least-loaded dispatch: row conservation, rigid experts, local optimality (no row can move to a
 * less-loaded replica and lower the pair's maximum), the call's busiest instance against the
 * fractional optimum, and share-weighted tie-breaks for an idle caller.
 */
import { describe, expect, it } from "vitest";
import { dispatchLeastLoaded } from "../../../src/experts/dispatch";
import type { Replica } from "../../../src/coordinator/placement";
import { createRng as makeRng } from "../../../src/serving/sampling";

const randInt = (rng: () => number, lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1));

function randomCall(seed: number): { tokens: number[]; replicas: Replica[][]; load: Float64Array; n: number } {
  const rng = makeRng(seed);
  const n = randInt(rng, 1, 12);
  const nExperts = randInt(rng, 1, 30);
  const replicas = Array.from({ length: nExperts }, () => {
    const k = randInt(rng, 1, Math.min(n, 4));
    const picked = new Set<number>();
    while (picked.size < k) picked.add(randInt(rng, 0, n - 1));
    const w = [...picked].map(() => rng() + 0.01);
    const s = w.reduce((a, b) => a + b, 0);
    return [...picked].map((instance, r) => ({ instance, share: w[r] / s }));
  });
  const tokens = replicas.map(() => (rng() < 0.3 ? 0 : randInt(rng, 1, rng() < 0.2 ? 200 : 8)));
  const load = Float64Array.from({ length: n }, () => (rng() < 0.5 ? 0 : randInt(rng, 0, 50)));
  return { tokens, replicas, load, n };
}

describe("dispatchLeastLoaded", () => {
  it("conserves rows, gives single-replica experts all theirs, and updates the loads", () => {
    for (let seed = 1; seed <= 300; seed++) {
      const c = randomCall(seed);
      const before = Float64Array.from(c.load);
      const out = dispatchLeastLoaded(c.tokens, c.replicas, c.load, { random: makeRng(seed + 1) });
      const expected = Float64Array.from(before);
      out.forEach((row, e) => {
        expect(row).toHaveLength(c.replicas[e].length);
        expect(
          row.reduce((a, b) => a + b, 0),
          `seed ${seed} expert ${e}`,
        ).toBe(c.tokens[e]);
        for (const x of row) expect(Number.isInteger(x) && x >= 0).toBe(true);
        if (c.replicas[e].length === 1) expect(row[0]).toBe(c.tokens[e]);
        row.forEach((x, r) => (expected[c.replicas[e][r].instance] += x));
      });
      expect(Array.from(c.load)).toEqual(Array.from(expected));
    }
  });

  it("leaves no row that could move to a lighter replica and lower the pair's maximum (enough sweeps)", () => {
    for (let seed = 1; seed <= 300; seed++) {
      const c = randomCall(seed);
      const out = dispatchLeastLoaded(c.tokens, c.replicas, c.load, { random: makeRng(seed), sweeps: 30 });
      out.forEach((row, e) => {
        const reps = c.replicas[e];
        for (let a = 0; a < reps.length; a++) {
          if (row[a] === 0) continue;
          for (let b = 0; b < reps.length; b++) {
            // Moving one row a → b helps only if load[b] + 1 < load[a].
            expect(c.load[reps[b].instance] + 1, `seed ${seed} expert ${e}`).toBeGreaterThanOrEqual(
              c.load[reps[a].instance] - 1e-9,
            );
          }
        }
      });
    }
  });

  const title =
    "with the default single sweep, the call's busiest instance is within a few rows of the sweep-converged one";
  it(title, () => {
    let worse = 0;
    for (let seed = 1; seed <= 300; seed++) {
      const a = randomCall(seed);
      const b = randomCall(seed);
      dispatchLeastLoaded(a.tokens, a.replicas, a.load, { random: makeRng(seed) });
      dispatchLeastLoaded(b.tokens, b.replicas, b.load, { random: makeRng(seed), sweeps: 30 });
      const ma = Math.max(...a.load);
      const mb = Math.max(...b.load);
      expect(ma, `seed ${seed}`).toBeLessThanOrEqual(mb + 0.1 * mb + 2);
      if (ma > mb + 1) worse++;
    }
    expect(worse).toBeLessThan(30);
  });

  it("an idle caller follows the shares: one token at a time, equal loads, ties by share", () => {
    const replicas: Replica[][] = [
      [
        { instance: 0, share: 0.75 },
        { instance: 1, share: 0.25 },
      ],
    ];
    const rng = makeRng(5);
    const hits = [0, 0];
    for (let k = 0; k < 4000; k++) {
      const out = dispatchLeastLoaded([1], replicas, new Float64Array(2), { random: rng });
      hits[0] += out[0][0];
      hits[1] += out[0][1];
    }
    expect(hits[0] / 4000).toBeGreaterThan(0.72);
    expect(hits[0] / 4000).toBeLessThan(0.78);
  });

  it("water-fills a hot expert around a rigid one", () => {
    // Expert 0 (rigid, 50 rows) on instance 0; expert 1 (100 rows) on instances 0 and 1.
    const replicas: Replica[][] = [
      [{ instance: 0, share: 1 }],
      [
        { instance: 0, share: 0.5 },
        { instance: 1, share: 0.5 },
      ],
    ];
    const load = new Float64Array(2);
    const out = dispatchLeastLoaded([50, 100], replicas, load, { random: makeRng(1) });
    expect(out).toEqual([[50], [25, 75]]);
    expect(Array.from(load)).toEqual([75, 75]);
  });

  it("reuses `out` and overwrites every row", () => {
    const replicas: Replica[][] = [
      [{ instance: 0, share: 1 }],
      [
        { instance: 0, share: 0.5 },
        { instance: 1, share: 0.5 },
      ],
    ];
    const out = [[9], [9, 9]];
    const got = dispatchLeastLoaded([0, 4], replicas, new Float64Array(2), { out, random: makeRng(1) });
    expect(got).toBe(out);
    expect(out).toEqual([[0], [2, 2]]);
  });
});

describe("dispatchLeastLoaded with a pass cost (an expert's weight read per replica used)", () => {
  const two: Replica[][] = [
    [
      { instance: 0, share: 0.5 },
      { instance: 1, share: 0.5 },
    ],
  ];
  const PASS = 4;

  it("keeps a few rows on one replica (the least loaded; ties by share) and counts the pass", () => {
    const hits = [0, 0];
    for (let seed = 1; seed <= 200; seed++) {
      const load = new Float64Array(2);
      const out = dispatchLeastLoaded([4], two, load, { random: makeRng(seed), passRows: PASS });
      expect(out[0].filter((x) => x > 0)).toEqual([4]);
      expect([...load].sort()).toEqual([0, 4 + PASS]);
      hits[out[0][0] > 0 ? 0 : 1]++;
    }
    expect(Math.min(...hits)).toBeGreaterThan(60);
    // Unequal loads: the lighter replica takes them all.
    const load = Float64Array.from([3, 0]);
    expect(dispatchLeastLoaded([4], two, load, { random: makeRng(1), passRows: PASS })).toEqual([[0, 4]]);
    // Without a pass cost the same call splits them (the dispatch before): two weight reads.
    expect(dispatchLeastLoaded([4], two, new Float64Array(2), { random: makeRng(1) })).toEqual([[2, 2]]);
  });

  it("splits a large batch, where a second read pays for itself", () => {
    const load = new Float64Array(2);
    expect(dispatchLeastLoaded([400], two, load, { random: makeRng(1), passRows: PASS })).toEqual([[200, 200]]);
    expect(Array.from(load)).toEqual([200 + PASS, 200 + PASS]);
    // The break-even: a split must shorten the busiest instance by more than one pass.
    for (let n = 1; n <= 40; n++) {
      const out = dispatchLeastLoaded([n], two, new Float64Array(2), { random: makeRng(n), passRows: PASS });
      expect(out[0].filter((x) => x > 0).length, `${n} rows`).toBe(n > 2 * PASS ? 2 : 1);
    }
  });

  it("moves rows off a busy replica when worth it, and not onto it when not", () => {
    // Busy instance 0: a few rows all go to the idle one, even past the busy one's level.
    let load = Float64Array.from([100, 0]);
    expect(dispatchLeastLoaded([8], two, load, { random: makeRng(1), passRows: PASS })).toEqual([[0, 8]]);
    load = Float64Array.from([6, 0]);
    expect(dispatchLeastLoaded([8], two, load, { random: makeRng(1), passRows: PASS })).toEqual([[0, 8]]);
    // A large batch still fills both to one level (pass included): 10 + 4 + 95 = 0 + 4 + 105.
    load = Float64Array.from([10, 0]);
    expect(dispatchLeastLoaded([200], two, load, { random: makeRng(1), passRows: PASS })).toEqual([[95, 105]]);
    expect(Array.from(load)).toEqual([109, 109]);
    // Three replicas, one busy: the rows water-fill the two idle ones only.
    const three: Replica[][] = [[0, 1, 2].map((instance) => ({ instance, share: 1 / 3 }))];
    load = Float64Array.from([0, 500, 0]);
    expect(dispatchLeastLoaded([300], three, load, { random: makeRng(1), passRows: PASS })).toEqual([[150, 0, 150]]);
  });

  it("conserves rows and adds rows plus one pass per replica used to the loads", () => {
    for (let seed = 1; seed <= 300; seed++) {
      const c = randomCall(seed);
      const expected = Float64Array.from(c.load);
      const out = dispatchLeastLoaded(c.tokens, c.replicas, c.load, { random: makeRng(seed), passRows: PASS });
      out.forEach((row, e) => {
        expect(
          row.reduce((a, b) => a + b, 0),
          `seed ${seed} expert ${e}`,
        ).toBe(c.tokens[e]);
        for (const x of row) expect(Number.isInteger(x) && x >= 0).toBe(true);
        row.forEach((x, r) => {
          if (x > 0) expected[c.replicas[e][r].instance] += x + PASS;
        });
      });
      for (let i = 0; i < c.n; i++) expect(c.load[i], `seed ${seed} instance ${i}`).toBeCloseTo(expected[i], 9);
    }
  });

  it("leaves no expert on one replica that a second one would lighten by more than a pass", () => {
    for (let seed = 1; seed <= 300; seed++) {
      const c = randomCall(seed);
      const opts = { random: makeRng(seed), passRows: PASS, sweeps: 30 };
      const out = dispatchLeastLoaded(c.tokens, c.replicas, c.load, opts);
      out.forEach((row, e) => {
        const reps = c.replicas[e];
        const used = reps.flatMap((_, k) => (row[k] > 0 ? [k] : []));
        if (used.length !== 1) return;
        const t = c.load[reps[used[0]].instance];
        for (let u = 0; u < reps.length; u++) {
          if (u === used[0]) continue;
          // Moving y rows to u (which then pays a pass) levels the two at y = (t − u − pass) / 2:
          // the busiest of the pair drops by y, which must not beat the pass it costs (± a row).
          const y = Math.min(row[used[0]], (t - c.load[reps[u].instance] - PASS) / 2);
          expect(y, `seed ${seed} expert ${e}`).toBeLessThanOrEqual(PASS + 1);
        }
      });
    }
  });
});
