/**
 * The placement planner's invariants over many seeded random inputs (property-style), its
 * contract over a few re-plans of Zipf loads (the EPLB baseline passes the same contract in
 * tests/bench-model/eplb.test.ts), plus the share solver against an exact min–max oracle.
 */
import { describe, expect, it } from "vitest";
import {
  applyOps,
  balanceRatios,
  checkPlacementInvariants,
  drainPlacement,
  instanceLoads,
  type InstanceInfo,
  type Placement,
  type PlacementOp,
  type Replica,
} from "../../../src/coordinator/placement";
import { planPlacement, waterFill, type PlannerInput } from "../../../src/coordinator/planner";
import { createRng as makeRng } from "../../../src/serving/sampling";

/** One layer, expert e on instance e mod N, one replica each. */
function roundRobinPlacement(
  nLayers: 1,
  nExperts: number,
  opts: { model: string; instances: InstanceInfo[] },
): Placement {
  const n = opts.instances.length;
  const replicas = [Array.from({ length: nExperts }, (_, e) => [{ instance: e % n, share: 1 }])];
  return { model: opts.model, version: 0, nLayers, nExperts, instances: opts.instances, replicas };
}

// ── random inputs ─────────────────────────────────────────────────────────────────────────────

interface Case {
  input: PlannerInput;
  bytes: number[][]; // [layer][expert]
  budgets: number[]; // per instance, including those add-instance may create
}

const randInt = (rng: () => number, lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1));

/** A valid random placement: every expert on ≥ 1 instance, extra replicas while memory allows. */
function randomCase(seed: number): Case {
  const rng = makeRng(seed);
  const nLayers = randInt(rng, 1, 3);
  const nExperts = randInt(rng, 3, 40);
  const nInstances = randInt(rng, 2, 12);
  const uniform = rng() < 0.5;
  const bytes = Array.from({ length: nLayers }, () =>
    Array.from({ length: nExperts }, () => (uniform ? 100 : randInt(rng, 50, 200))),
  );
  // Room for every expert once plus 0–3 spare slots of the largest expert per instance.
  const need = bytes.flat().reduce((a, b) => a + b, 0);
  const budget = Math.ceil(need / nInstances) + 200 * randInt(rng, 0, 3) + 200;
  const used = new Array<number>(nInstances).fill(0);
  const replicas: Replica[][][] = bytes.map((row) =>
    row.map((b) => {
      // First replica: the instance with the most free memory (always fits by construction).
      let best = 0;
      for (let i = 1; i < nInstances; i++) if (used[i] < used[best]) best = i;
      used[best] += b;
      const reps: Replica[] = [{ instance: best, share: 1 }];
      return reps;
    }),
  );
  // Extra replicas at random where memory allows.
  const extras = randInt(rng, 0, nLayers * nExperts);
  for (let k = 0; k < extras; k++) {
    const l = randInt(rng, 0, nLayers - 1);
    const e = randInt(rng, 0, nExperts - 1);
    const i = randInt(rng, 0, nInstances - 1);
    const reps = replicas[l][e];
    if (reps.some((r) => r.instance === i) || used[i] + bytes[l][e] > budget) continue;
    used[i] += bytes[l][e];
    reps.push({ instance: i, share: 0 });
  }
  for (const layer of replicas)
    for (const reps of layer) {
      const w = reps.map(() => rng() + 0.01);
      const s = w.reduce((a, b) => a + b, 0);
      reps.forEach((r, k) => (r.share = w[k] / s));
    }
  const placement: Placement = {
    model: "test",
    version: 7,
    nLayers,
    nExperts,
    instances: Array.from({ length: nInstances }, (_, id) => ({ id, name: `h${id}`, budgetBytes: budget })),
    replicas,
  };
  const s = 0.3 + rng() * 1.2;
  const loads = bytes.map((row) =>
    row.map(() => (rng() < 0.1 ? 0 : Math.round(10000 * (1 + randInt(rng, 0, nExperts)) ** -s * (0.5 + rng())))),
  );
  const maxInstances = rng() < 0.3 ? nInstances + randInt(rng, 1, 3) : nInstances;
  const input: PlannerInput = {
    placement,
    loads,
    expertBytes: uniform && rng() < 0.5 ? 100 : bytes,
    maxCopies: randInt(rng, 0, 10),
    threshold: rng() * 0.1,
    maxInstances,
    newInstanceBudgetBytes: budget,
    spread: rng() < 0.5 ? 0 : rng(),
  };
  return { input, bytes, budgets: Array.from({ length: maxInstances }, () => budget) };
}

/** Replays ops one at a time: memory within budget and ≥ 1 replica per expert after every op. */
function replayOps(c: Case, ops: readonly PlacementOp[]): string[] {
  const problems: string[] = [];
  const p = c.input.placement;
  const sets = p.replicas.map((layer) => layer.map((reps) => new Set(reps.map((r) => r.instance))));
  let n = p.instances.length;
  const used = new Array<number>(c.budgets.length).fill(0);
  sets.forEach((layer, l) => layer.forEach((set, e) => set.forEach((i) => (used[i] += c.bytes[l][e]))));
  ops.forEach((op, k) => {
    if (op.op === "add-instance") {
      n++;
      if (n > c.budgets.length) problems.push(`op ${k}: grows past maxInstances`);
      return;
    }
    if (op.op === "remove-instance") {
      problems.push(`op ${k}: planPlacement never retires an instance`);
      return;
    }
    const set = sets[op.layer][op.expert];
    if (op.op === "add-replica") {
      if (set.has(op.instance)) problems.push(`op ${k}: co-locates expert (${op.layer}, ${op.expert})`);
      set.add(op.instance);
      used[op.instance] += c.bytes[op.layer][op.expert];
      if (used[op.instance] > c.budgets[op.instance]) problems.push(`op ${k}: instance ${op.instance} over budget`);
    } else {
      set.delete(op.instance);
      used[op.instance] -= c.bytes[op.layer][op.expert];
      if (set.size === 0) problems.push(`op ${k}: expert (${op.layer}, ${op.expert}) left without a replica`);
    }
  });
  return problems;
}

const SEEDS = Array.from({ length: Number(process.env.PLANNER_SEEDS ?? 300) }, (_, i) => i + 1);

// ── properties ────────────────────────────────────────────────────────────────────────────────

describe("planPlacement: invariants over random inputs", () => {
  it("keeps every invariant, the copy budget and hysteresis, and predicts what it applies", () => {
    for (const seed of SEEDS) {
      const c = randomCase(seed);
      const plan = planPlacement(c.input);
      const ctx = `seed ${seed}`;
      const adds = plan.ops.filter((o) => o.op === "add-replica").length;
      expect(adds, ctx).toBe(plan.copies);
      expect(plan.copies, ctx).toBeLessThanOrEqual(c.input.maxCopies);
      expect(replayOps(c, plan.ops), ctx).toEqual([]);
      const next = applyOps(c.input.placement, plan.ops, plan.shares);
      expect(next.version, ctx).toBe(c.input.placement.version + 1);
      expect(checkPlacementInvariants(next, c.budgets.slice(0, next.instances.length), c.bytes), ctx).toEqual([]);
      for (const layer of plan.shares)
        for (const reps of layer) for (const r of reps) expect(r.share, ctx).toBeGreaterThanOrEqual(0);
      // Hysteresis: balanced within the threshold (shares alone) → no ops.
      if (plan.predicted.sharesOnly <= 1 + (c.input.threshold ?? 0.02)) expect(plan.ops, ctx).toEqual([]);
      // The prediction is the applied placement's balance under the same loads.
      const ratios = balanceRatios(next, c.input.loads);
      ratios.forEach((r, l) => expect(r, `${ctx} layer ${l}`).toBeCloseTo(plan.predicted.perLayer[l].after, 6));
      if (plan.ops.length > 0) {
        expect(plan.reason, ctx).toBe("planned");
        const drained = drainPlacement(c.input.placement, plan.ops);
        expect(
          checkPlacementInvariants(drained, c.budgets.slice(0, drained.instances.length), c.bytes),
          `${ctx} drain`,
        ).toEqual([]);
      }
    }
  });

  it("never plans a copy when maxCopies is 0, and never changes the replica sets then", () => {
    for (const seed of SEEDS.slice(0, 60)) {
      const c = randomCase(seed);
      const plan = planPlacement({ ...c.input, maxCopies: 0 });
      expect(plan.ops).toEqual([]);
      const next = applyOps(c.input.placement, [], plan.shares);
      expect(checkPlacementInvariants(next, c.budgets.slice(0, next.instances.length), c.bytes)).toEqual([]);
    }
  });

  it("re-planning with unchanged loads reaches a fixed point: no ops, same shares", () => {
    for (const seed of SEEDS) {
      const c = randomCase(seed);
      let placement = c.input.placement;
      let rounds = 0;
      for (; rounds < 40; rounds++) {
        const plan = planPlacement({ ...c.input, placement });
        if (plan.ops.length === 0) break;
        placement = applyOps(placement, plan.ops, plan.shares);
      }
      expect(rounds, `seed ${seed}`).toBeLessThan(40);
      // At the fixed point the shares are stable too.
      const a = planPlacement({ ...c.input, placement });
      const b = planPlacement({ ...c.input, placement: applyOps(placement, [], a.shares) });
      expect(b.ops).toEqual([]);
      const la = instanceLoads(applyOps(placement, [], a.shares), c.input.loads);
      const lb = instanceLoads(applyOps(placement, [], b.shares), c.input.loads);
      const mean = c.input.loads.flat().reduce((x, y) => x + y, 0) / placement.instances.length / placement.nLayers;
      la.forEach((row, l) =>
        row.forEach((v, i) => expect(Math.abs(v - lb[l][i]), `seed ${seed}`).toBeLessThanOrEqual(0.01 * mean + 1e-9)),
      );
    }
  });

  it("does nothing when already balanced within the threshold", () => {
    // 8 experts of equal load, 4 instances, two each: perfectly balanced.
    const instances = Array.from({ length: 4 }, (_, id) => ({ id, name: `h${id}`, budgetBytes: 400 }));
    const placement = roundRobinPlacement(1, 8, { model: "t", instances });
    const plan = planPlacement({
      placement,
      loads: [[100, 100, 100, 100, 100, 100, 100, 100]],
      expertBytes: 100,
      maxCopies: 8,
      threshold: 0.05,
    });
    expect(plan.ops).toEqual([]);
    expect(plan.reason).toBe("balanced");
    // Slightly off (3%): still within a 5% threshold.
    const off = planPlacement({
      placement,
      loads: [[103, 100, 100, 100, 100, 100, 100, 100]],
      expertBytes: 100,
      maxCopies: 8,
      threshold: 0.05,
    });
    expect(off.ops).toEqual([]);
  });

  it("replicates a hot expert onto free room and splits its load", () => {
    const instances = Array.from({ length: 4 }, (_, id) => ({ id, name: `h${id}`, budgetBytes: 300 }));
    const placement = roundRobinPlacement(1, 8, { model: "t", instances });
    const loads = [[800, 100, 100, 100, 100, 100, 100, 100]];
    const plan = planPlacement({ placement, loads, expertBytes: 100, maxCopies: 8, spread: 0 });
    expect(plan.reason).toBe("planned");
    // Balancing first: expert 0 onto the three other instances; then hedging spends the rest.
    expect(plan.ops.slice(0, 3)).toEqual(
      [1, 2, 3].map((instance) => ({ op: "add-replica", layer: 0, expert: 0, instance })),
    );
    expect(plan.predicted.sharesOnly).toBeCloseTo(900 / 375, 6);
    expect(plan.predicted.after).toBeLessThan(1.01);
  });

  it("evicts a spare replica, never the last one, when memory is full", () => {
    // 2 instances, 2 slots each: expert 0 and 1 on h0, expert 2 on h1 plus a spare of expert 1.
    const instances = [0, 1].map((id) => ({ id, name: `h${id}`, budgetBytes: 200 }));
    const placement: Placement = {
      model: "t",
      version: 1,
      nLayers: 1,
      nExperts: 3,
      instances,
      replicas: [
        [
          [{ instance: 0, share: 1 }],
          [
            { instance: 0, share: 1 },
            { instance: 1, share: 0 },
          ],
          [{ instance: 1, share: 1 }],
        ],
      ],
    };
    const plan = planPlacement({ placement, loads: [[1000, 10, 10]], expertBytes: 100, maxCopies: 2, spread: 0 });
    expect(plan.ops).toEqual([
      { op: "remove-replica", layer: 0, expert: 1, instance: 1 },
      { op: "add-replica", layer: 0, expert: 0, instance: 1 },
    ]);
  });

  it("adds an instance when memory is exhausted and growth is allowed", () => {
    const instances = [0, 1].map((id) => ({ id, name: `h${id}`, budgetBytes: 100 }));
    const placement = roundRobinPlacement(1, 2, { model: "t", instances });
    const plan = planPlacement({
      placement,
      loads: [[1000, 100]],
      expertBytes: 100,
      maxCopies: 2,
      maxInstances: 3,
      spread: 0,
    });
    expect(plan.ops[0]).toEqual({ op: "add-instance" });
    expect(plan.ops[1]).toEqual({ op: "add-replica", layer: 0, expert: 0, instance: 2 });
    const next = applyOps(placement, plan.ops, plan.shares);
    expect(next.instances).toHaveLength(3);
    expect(checkPlacementInvariants(next, undefined, 100)).toEqual([]);
  });

  it("names the bad field", () => {
    const c = randomCase(1);
    expect(() => planPlacement({ ...c.input, loads: c.input.loads.map((r) => r.map(() => -1)) })).toThrow(
      /loads\[0\]\[0\] must be a finite number ≥ 0/,
    );
    expect(() => planPlacement({ ...c.input, maxCopies: 1.5 })).toThrow(/maxCopies must be an integer/);
    expect(() => planPlacement({ ...c.input, loads: [] })).toThrow(/loads has 0 layers/);
  });
});

// ── the planner contract ───────────────────────────────────────────────────────────────────────

type PlannerUnderTest = (placement: Placement, loads: number[][], slotsPerInstance: number) => Placement;

const PLANNERS: Record<string, PlannerUnderTest> = {
  "edge-moe": (placement, loads) => {
    const plan = planPlacement({ placement, loads, expertBytes: 1, maxCopies: 6 });
    return applyOps(placement, plan.ops, plan.shares);
  },
};

for (const [name, planner] of Object.entries(PLANNERS)) {
  describe(`planner contract: ${name}`, () => {
    it("yields valid placements within slot budgets over random Zipf loads", () => {
      for (const seed of SEEDS.slice(0, 80)) {
        const rng = makeRng(seed * 13);
        const nInstances = randInt(rng, 2, 10);
        const nExperts = nInstances * randInt(rng, 1, 4);
        const slots = nExperts / nInstances + randInt(rng, 0, 3);
        const instances = Array.from({ length: nInstances }, (_, id) => ({ id, name: `h${id}`, budgetBytes: slots }));
        let placement = roundRobinPlacement(1, nExperts, { model: "t", instances });
        for (let w = 0; w < 3; w++) {
          const loads = [
            Array.from({ length: nExperts }, (_, e) => Math.round(1000 / (1 + ((e * 7 + w * 3) % nExperts)) ** 1.1)),
          ];
          placement = planner(placement, loads, slots);
          expect(checkPlacementInvariants(placement, undefined, 1), `${name} seed ${seed}`).toEqual([]);
        }
      }
    });
  });
}

// ── shares ────────────────────────────────────────────────────────────────────────────────────

describe("waterFill", () => {
  it("fills the lowest bins to one level", () => {
    const out: number[] = [];
    waterFill([0, 2, 10], 6, out);
    expect(out).toEqual([4, 2, 0]); // level 4
    waterFill([5], 3, out);
    expect(out[0]).toBe(3);
    waterFill([1, 1, 1], 3, out);
    expect(out).toEqual([1, 1, 1]);
  });
});

/** Exact optimum of min over shares of the busiest instance: bisection on max flow. */
function exactMinMax(reps: number[][], loads: readonly number[], n: number): number {
  const total = loads.reduce((a, b) => a + b, 0);
  const feasible = (cap: number): boolean => {
    // Nodes: 0 source, 1..E experts, E+1..E+n instances, E+n+1 sink. Edmonds–Karp on a small graph.
    const E = loads.length;
    const N = E + n + 2;
    const c = Array.from({ length: N }, () => new Float64Array(N));
    loads.forEach((L, e) => {
      c[0][1 + e] = L;
      for (const i of reps[e]) c[1 + e][1 + E + i] = Infinity;
    });
    for (let i = 0; i < n; i++) c[1 + E + i][N - 1] = cap;
    let flow = 0;
    for (;;) {
      const prev = new Int32Array(N).fill(-1);
      prev[0] = 0;
      const queue = [0];
      while (queue.length && prev[N - 1] < 0) {
        const u = queue.shift()!;
        for (let v = 0; v < N; v++)
          if (prev[v] < 0 && c[u][v] > 1e-12) {
            prev[v] = u;
            queue.push(v);
          }
      }
      if (prev[N - 1] < 0) break;
      let push = Infinity;
      for (let v = N - 1; v !== 0; v = prev[v]) push = Math.min(push, c[prev[v]][v]);
      for (let v = N - 1; v !== 0; v = prev[v]) {
        c[prev[v]][v] -= push;
        c[v][prev[v]] += push;
      }
      flow += push;
    }
    return flow >= total - 1e-6 * total;
  };
  let lo = total / n;
  let hi = total;
  for (let it = 0; it < 50; it++) {
    const mid = (lo + hi) / 2;
    if (feasible(mid)) hi = mid;
    else lo = mid;
  }
  return hi;
}

describe("share re-balancing", () => {
  it("reaches the exact min–max load (within 1% of the mean) when spread is 0", () => {
    for (const seed of SEEDS.slice(0, 40)) {
      const c = randomCase(seed * 31);
      const layer = 0;
      const placement = { ...c.input.placement };
      const loads = c.input.loads;
      const zero = loads.map((row) => row.map(() => 0));
      const plan = planPlacement({ ...c.input, placement, maxCopies: 0, spread: 0, loadVariance: zero });
      const got = Math.max(...instanceLoads(applyOps(placement, [], plan.shares), loads)[layer]);
      const reps = placement.replicas[layer].map((rs) => rs.map((r) => r.instance));
      const n = placement.instances.length;
      const best = exactMinMax(reps, loads[layer], n);
      const mean = loads[layer].reduce((a, b) => a + b, 0) / n;
      expect(got, `seed ${seed}`).toBeGreaterThanOrEqual(best - 1e-6 * mean);
      expect(got - best, `seed ${seed}`).toBeLessThanOrEqual(0.01 * mean + 1e-9);
    }
  });
});
