/**
 * Router kinds against hand-computed cases: softmax top-k with and without renormalisation,
 * DeepSeek's group-limited top-k (group masking, bias for selection only, renormalise, scale), and
 * the deployer knobs (temperature, capacity with next-choice rerouting and drops, noise).
 */
import { describe, expect, it } from "vitest";
import {
  flattenRouting,
  route,
  ROUTING_OFF,
  type GroupLimitedTopKRouter,
  type Routing,
} from "../../../src/gating/router";
import { parseRoutingOptions } from "../../../src/gating/options";
import { capacityPerExpert } from "../../../src/gating/capacity";

/** Logits whose sigmoid is p. */
const logit = (p: number) => Math.log(p / (1 - p));
const rows = (r: Routing) =>
  Array.from({ length: r.n }, (_, t) => ({
    ids: Array.from(r.ids.subarray(t * r.topK, (t + 1) * r.topK)),
    w: Array.from(r.weights.subarray(t * r.topK, (t + 1) * r.topK)),
  }));
const closeAll = (a: number[], b: number[], digits = 6) => {
  expect(a.length).toBe(b.length);
  a.forEach((v, i) => expect(v).toBeCloseTo(b[i], digits));
};

const V3: GroupLimitedTopKRouter = {
  kind: "group-limited-topk",
  scoring: "sigmoid",
  selectionBias: true,
  nGroup: 4,
  topkGroup: 2,
  groupScore: "top2-sum",
  renormalize: true,
  routedScale: 2.5,
};
// Sigmoid scores by expert; groups of 2: g0 = {0, 1}, g1 = {2, 3}, g2 = {4, 5}, g3 = {6, 7}.
const P = [0.9, 0.1, 0.6, 0.55, 0.7, 0.65, 0.2, 0.3];
const V3_LOGITS = Float32Array.from(P.map(logit));

describe("softmax-topk", () => {
  const logits = Float32Array.from([1, 3, 2, 0]); // softmax ∝ e, e³, e², 1
  const Z = Math.E + Math.E ** 3 + Math.E ** 2 + 1;
  it("renormalised: top-k of softmax, weights sum to 1", () => {
    const r = rows(route({ kind: "softmax-topk", renormalize: true }, logits, 1, 4, 2))[0];
    expect(r.ids).toEqual([1, 2]);
    closeAll(r.w, [Math.E ** 3 / (Math.E ** 3 + Math.E ** 2), Math.E ** 2 / (Math.E ** 3 + Math.E ** 2)]);
  });
  it("not renormalised: the softmax probabilities themselves", () => {
    const r = rows(route({ kind: "softmax-topk", renormalize: false }, logits, 1, 4, 2))[0];
    expect(r.ids).toEqual([1, 2]);
    closeAll(r.w, [Math.E ** 3 / Z, Math.E ** 2 / Z]);
  });
  it("ties go to the lower index, per token", () => {
    const r = rows(route({ kind: "softmax-topk", renormalize: true }, Float32Array.from([0, 0, 0, 5, 5, 0]), 2, 3, 2));
    expect(r.map((x) => x.ids)).toEqual([
      [0, 1],
      [0, 1],
    ]);
    closeAll(r[0].w, [0.5, 0.5]);
  });
});

describe("group-limited-topk (DeepSeek-V3)", () => {
  it("keeps the 2 best groups by top-2 sum, so the single best expert can lose", () => {
    // Group scores: g0 = 1.0, g1 = 1.15, g2 = 1.35, g3 = 0.5 → keep g2, g1; expert 0 (0.9) is excluded.
    const r = rows(route(V3, V3_LOGITS, 1, 8, 2, { bias: new Float32Array(8) }))[0];
    expect(r.ids).toEqual([4, 5]);
    closeAll(r.w, [(0.7 / 1.35) * 2.5, (0.65 / 1.35) * 2.5]);
  });

  it("adds the bias for selection only: weights come from the unbiased scores", () => {
    // Selection: [.9, .1, .6, .55, .7, .65, .65, .8] → groups g3 = 1.45, g2 = 1.35 kept → 7 (0.8), 4 (0.7).
    const bias = Float32Array.from([0, 0, 0, 0, 0, 0, 0.45, 0.5]);
    const r = rows(route(V3, V3_LOGITS, 1, 8, 2, { bias }))[0];
    expect(r.ids).toEqual([7, 4]);
    // Unbiased: s7 = 0.3, s4 = 0.7 → renormalised 0.3, 0.7, × 2.5.
    closeAll(r.w, [0.3 * 2.5, 0.7 * 2.5]);
  });

  it("without renormalisation the weights are the scores × routed scale", () => {
    const r = rows(
      route({ ...V3, renormalize: false, routedScale: 2 }, V3_LOGITS, 1, 8, 2, { bias: new Float32Array(8) }),
    )[0];
    expect(r.ids).toEqual([4, 5]);
    closeAll(r.w, [1.4, 1.3]);
  });

  it("one group is plain sigmoid top-k", () => {
    const r = rows(
      route({ ...V3, nGroup: 1, topkGroup: 1, routedScale: 1 }, V3_LOGITS, 1, 8, 3, { bias: new Float32Array(8) }),
    )[0];
    expect(r.ids).toEqual([0, 4, 5]);
    closeAll(r.w, [0.9 / 2.25, 0.7 / 2.25, 0.65 / 2.25]);
  });

  it(
    "masks excluded groups with -inf, as DeepSeek's inference code " +
      "(HF's 0-fill differs only for negative biased scores)",
    () => {
      // Biased scores of the kept groups are negative: -inf masking still picks inside the kept groups.
      const bias = Float32Array.from([-1, -1, -1, -1, -1, -1, -1, -1]);
      const r = rows(route(V3, V3_LOGITS, 1, 8, 2, { bias }))[0];
      expect(r.ids).toEqual([4, 5]);
    },
  );

  it("requires the per-layer bias when the kind uses one", () => {
    expect(() => route(V3, V3_LOGITS, 1, 8, 2)).toThrow(/selection bias of 8 values/);
    expect(() => route(V3, V3_LOGITS, 1, 8, 2, { bias: new Float32Array(4) })).toThrow(/got 4/);
  });

  it("routes several tokens independently", () => {
    const two = new Float32Array(16);
    two.set(V3_LOGITS, 0);
    two.set([...V3_LOGITS].reverse(), 8);
    const r = rows(route(V3, two, 2, 8, 2, { bias: new Float32Array(8) }));
    expect(r[0].ids).toEqual([4, 5]);
    // Reversed: scores [.3, .2, .65, .7, .55, .6, .1, .9]: groups g0 .5, g1 1.35, g2 1.15, g3 1.0 → keep g1, g2.
    expect(r[1].ids).toEqual([3, 2]);
  });
});

describe("group-limited-topk (DeepSeek-V2: softmax, groups by max)", () => {
  it("scores groups by their best expert", () => {
    // softmax of these logits keeps their order; groups of 2 by max: g0 = e0 (3), g1 = e3 (2.9),
    // g2 = e4 (1), g3 = e7 (2.95).
    const logits = Float32Array.from([3, 2.99, 0, 2.9, 1, 0, 0, 2.95]);
    const spec = {
      kind: "group-limited-topk",
      scoring: "softmax",
      selectionBias: false,
      nGroup: 4,
      topkGroup: 2,
      groupScore: "max",
      renormalize: false,
      routedScale: 16,
    } as const;
    const r = rows(route(spec, logits, 1, 8, 3))[0];
    // Keep g0 (3) and g3 (2.95): candidates e0, e1, e6, e7 → e0, e1, e7 (e3 at 2.9 is excluded).
    expect(r.ids).toEqual([0, 1, 7]);
    const z = [...logits].reduce((s, l) => s + Math.exp(l), 0);
    closeAll(
      r.w,
      [3, 2.99, 2.95].map((l) => (16 * Math.exp(l)) / z),
      5,
    );
  });
});

describe("deployer knobs", () => {
  const logits = Float32Array.from([2, 1, 0.5, -1, 1.5, 0.1, 0, -0.5]); // 2 tokens × 4 experts
  const plain = route({ kind: "softmax-topk", renormalize: true }, logits, 2, 4, 2);

  it("off reproduces the published routing exactly", () => {
    const r = route({ kind: "softmax-topk", renormalize: true }, logits, 2, 4, 2, { options: ROUTING_OFF });
    expect(r.ids).toEqual(plain.ids);
    expect(r.weights).toEqual(plain.weights);
    expect([r.rerouted, r.dropped]).toEqual([0, 0]);
    const bigCapacity = route({ kind: "softmax-topk", renormalize: true }, logits, 2, 4, 2, {
      options: { ...ROUTING_OFF, capacityFactor: 100 },
    });
    expect(bigCapacity.ids).toEqual(plain.ids);
    expect(bigCapacity.weights).toEqual(plain.weights);
  });

  it("temperature divides the logits: same choice, flatter weights", () => {
    const r = route({ kind: "softmax-topk", renormalize: true }, logits, 2, 4, 2, {
      options: { ...ROUTING_OFF, temperature: 2 },
    });
    expect(r.ids).toEqual(plain.ids);
    // Token 0 picks e0 (2) and e1 (1): weights softmax([1, 0.5]).
    closeAll(Array.from(r.weights.subarray(0, 2)), [1 / (1 + Math.exp(-0.5)), 1 - 1 / (1 + Math.exp(-0.5))]);
  });

  it("noisy top-k: seeded noise is reproducible, and large noise changes choices", () => {
    const seeded = (seed: number) => {
      let s = seed;
      return () => (s = (s * 16807) % 2147483647) / 2147483647;
    };
    const spec = { kind: "softmax-topk", renormalize: true } as const;
    const opts = { options: { ...ROUTING_OFF, noiseStd: 5 } };
    const a = route(spec, logits, 2, 4, 2, { ...opts, rng: seeded(7) });
    const b = route(spec, logits, 2, 4, 2, { ...opts, rng: seeded(7) });
    expect(a.ids).toEqual(b.ids);
    let changed = false;
    for (let seed = 1; seed < 20 && !changed; seed++)
      changed = route(spec, logits, 2, 4, 2, { ...opts, rng: seeded(seed) }).ids.some((id, i) => id !== plain.ids[i]);
    expect(changed).toBe(true);
    expect(() => route(spec, logits, 2, 4, 2, opts)).toThrow(/random source/);
  });

  it("capacity: an expert beyond capacity sends the token to its next choice", () => {
    // 4 tokens all prefer e0; second choices e1, e2, e3, e1. topK 1, factor 1 → capacity 1.
    const l = Float32Array.from([3, 2, 0, 0, 3, 0, 2, 0, 3, 0, 0, 2, 3, 2, 0, 0]);
    const r = route({ kind: "softmax-topk", renormalize: true }, l, 4, 4, 1, {
      options: { ...ROUTING_OFF, capacityFactor: 1 },
    });
    expect(Array.from(r.ids)).toEqual([0, 2, 3, 1]);
    expect([r.rerouted, r.dropped]).toEqual([3, 0]);
    expect(Array.from(r.weights)).toEqual([1, 1, 1, 1]);
  });

  it("capacity: assignments that find no room are dropped (id -1, weight 0) and counted", () => {
    // 4 tokens, 2 experts, top-1, factor 0.5 → capacity 1 each. t0 → e0; t1 prefers e0 (full) → e1;
    // t2 and t3 find both full and are dropped.
    const l = Float32Array.from([1, 0, 1, 0, 0, 1, 1, 0]);
    const r = route({ kind: "softmax-topk", renormalize: true }, l, 4, 2, 1, {
      options: { ...ROUTING_OFF, capacityFactor: 0.5 },
    });
    expect(Array.from(r.ids)).toEqual([0, 1, -1, -1]);
    expect(Array.from(r.weights)).toEqual([1, 1, 0, 0]);
    expect([r.rerouted, r.dropped]).toEqual([1, 2]);
    // The runnable form: only kept rows, each with its token.
    const flat = flattenRouting(r);
    expect([flat.routing.n, flat.routing.topK]).toEqual([2, 1]);
    expect(Array.from(flat.routing.ids)).toEqual([0, 1]);
    expect(Array.from(flat.tokenOf)).toEqual([0, 1]);
  });

  it("capacity is slot-major: every first choice is served before any second choice", () => {
    // 2 tokens, 3 experts, top-2, capacity 1. Token 0: e0 > e1 > e2; token 1: e1 > e0 > e2.
    const l = Float32Array.from([3, 2, 0, 2, 3, 0]);
    const r = route({ kind: "softmax-topk", renormalize: false }, l, 2, 3, 2, {
      options: { ...ROUTING_OFF, capacityFactor: 0.75 },
    });
    expect(capacityPerExpert(0.75, 2, 3, 2)).toBe(1);
    // Slot 0: t0 → e0, t1 → e1. Slot 1: t0 → e1 full → e2; t1 → e0 full, e2 full → dropped.
    expect(Array.from(r.ids)).toEqual([0, 2, 1, -1]);
    expect([r.rerouted, r.dropped]).toEqual([1, 1]);
  });

  it("capacity respects DeepSeek's group limit", () => {
    const r = route(V3, V3_LOGITS, 1, 8, 2, {
      bias: new Float32Array(8),
      options: { ...ROUTING_OFF, capacityFactor: 8 },
    });
    expect(Array.from(r.ids)).toEqual([4, 5]);
  });
});

describe("parseRoutingOptions", () => {
  it("unset or empty vars leave every knob off", () => {
    expect(parseRoutingOptions({})).toEqual(ROUTING_OFF);
    expect(parseRoutingOptions({ ROUTER_TEMPERATURE: "", CAPACITY_FACTOR: "", ROUTER_NOISE_STD: "" })).toEqual(
      ROUTING_OFF,
    );
  });
  it("reads the three vars", () => {
    expect(
      parseRoutingOptions({ ROUTER_TEMPERATURE: "0.7", CAPACITY_FACTOR: "1.25", ROUTER_NOISE_STD: "0.1" }),
    ).toEqual({ temperature: 0.7, capacityFactor: 1.25, noiseStd: 0.1 });
  });
  it("names the var in errors", () => {
    expect(() => parseRoutingOptions({ ROUTER_TEMPERATURE: "0" })).toThrow(/ROUTER_TEMPERATURE must be a number > 0/);
    expect(() => parseRoutingOptions({ CAPACITY_FACTOR: "lots" })).toThrow(/CAPACITY_FACTOR/);
    expect(() => parseRoutingOptions({ ROUTER_NOISE_STD: "-1" })).toThrow(/ROUTER_NOISE_STD must be a number ≥ 0/);
  });
});
