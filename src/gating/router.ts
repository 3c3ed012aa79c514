/**
 * @module Router kinds as data. A model spec names its router kind and knobs; `route` turns router
 * logits into (expert id, gate weight) pairs per token through ONE pipeline whose steps are chosen
 * by data, never by architecture (tinygrad's `ExpertGating` shape, not per-family branches):
 *
 *   logits ─(deployer knobs: temperature, noise)→ z ─(scoring: softmax | sigmoid)→ scores
 *   scores ─(+ per-layer selection bias)─(group limit)→ selection scores ─(top-k | capacity)→ ids
 *   weights = scores[ids] (unbiased) ─(renormalise?)─(× routed scale)
 *
 * Each router kind is a small table (`routerPlan`) of those choices.
 */
import { assignWithCapacity, capacityPerExpert } from "./capacity";
import { groupLimitInto } from "./group-limited-topk";
import { sigmoidInto, softmaxInto, topKInto } from "./softmax-topk";
import type { RoutingOptions } from "./options";
import { ROUTING_OFF } from "./options";

export type { RoutingOptions } from "./options";
export { ROUTING_OFF } from "./options";

/** softmax over all experts → top-k → optional renormalisation (Mixtral, Qwen-MoE, OLMoE, Granite-MoE). */
export interface SoftmaxTopKRouter {
  kind: "softmax-topk";
  /** Renormalise the k selected probabilities to sum to 1 (HF `norm_topk_prob`; Mixtral: true). */
  renormalize: boolean;
}

/**
 * DeepSeek's group-limited routing. The experts form `nGroup` equal groups; each token keeps its
 * `topkGroup` best groups and picks its top-k experts inside them.
 *  - DeepSeek-V3 (`noaux_tc`): sigmoid scores, `e_score_correction_bias` added for selection only,
 *    groups scored by the sum of their top-2 biased scores.
 *  - DeepSeek-V2 (`group_limited_greedy` / `greedy`): softmax scores, no bias, groups scored by
 *    their max.
 * The weights are the unbiased scores of the chosen experts, renormalised when `renormalize`,
 * then multiplied by `routedScale` (routed_scaling_factor).
 */
export interface GroupLimitedTopKRouter {
  kind: "group-limited-topk";
  scoring: "sigmoid" | "softmax";
  /** A per-layer bias [nExperts] is added to the scores for selection only. */
  selectionBias: boolean;
  nGroup: number;
  topkGroup: number;
  groupScore: "top2-sum" | "max";
  renormalize: boolean;
  routedScale: number;
}

export type RouterSpec = SoftmaxTopKRouter | GroupLimitedTopKRouter;

/** Routing of n tokens: ids and weights are [n, topK], per token in descending selection score. */
export interface Routing {
  n: number;
  topK: number;
  /** [n, topK]; -1 marks a slot dropped by the capacity limit (weight 0). */
  ids: Int32Array;
  weights: Float32Array; // [n, topK]
  /** (token, slot) assignments moved to a later choice because an expert was at capacity. */
  rerouted?: number;
  /** (token, slot) assignments that found no expert with room (they contribute nothing). */
  dropped?: number;
}

/** The pipeline choices a router kind stands for. */
interface RouterPlan {
  scoring: "softmax" | "sigmoid";
  selectionBias: boolean;
  groups: { n: number; keep: number; score: "top2-sum" | "max" } | null;
  renormalize: boolean;
  scale: number;
}

function routerPlan(spec: RouterSpec): RouterPlan {
  switch (spec.kind) {
    case "softmax-topk":
      return { scoring: "softmax", selectionBias: false, groups: null, renormalize: spec.renormalize, scale: 1 };
    case "group-limited-topk":
      return {
        scoring: spec.scoring,
        selectionBias: spec.selectionBias,
        groups: spec.nGroup > 1 ? { n: spec.nGroup, keep: spec.topkGroup, score: spec.groupScore } : null,
        renormalize: spec.renormalize,
        scale: spec.routedScale,
      };
  }
}

export interface RouteContext {
  /** [nExperts] selection bias of this layer (required when the router kind uses one). */
  bias?: Float32Array | null;
  /** Deployer knobs; all off by default. */
  options?: RoutingOptions;
  /** Uniform [0, 1) source for noisy top-k. */
  rng?: () => number;
}

/** logits: [n, nExperts] router outputs (x · Wgᵀ). */
export function route(
  spec: RouterSpec,
  logits: Float32Array,
  n: number,
  nExperts: number,
  topK: number,
  ctx: RouteContext = {},
): Routing {
  const plan = routerPlan(spec);
  const opts = ctx.options ?? ROUTING_OFF;
  const bias = plan.selectionBias ? ctx.bias : null;
  if (plan.selectionBias && (!bias || bias.length !== nExperts)) {
    throw new Error(`router needs a selection bias of ${nExperts} values, got ${bias ? bias.length : "none"}`);
  }
  const scores = new Float32Array(n * nExperts); // [n, nExperts] unbiased scores (weights come from these)
  const select = new Float32Array(n * nExperts); // [n, nExperts] selection scores, -Infinity = not allowed
  const z = new Float32Array(nExperts);
  for (let t = 0; t < n; t++) {
    const row = t * nExperts;
    z.set(logits.subarray(row, row + nExperts));
    perturbLogits(z, opts, ctx.rng);
    const s = scores.subarray(row, row + nExperts);
    if (plan.scoring === "softmax") softmaxInto(s, z);
    else sigmoidInto(s, z);
    const sel = select.subarray(row, row + nExperts);
    for (let e = 0; e < nExperts; e++) sel[e] = bias ? s[e] + bias[e] : s[e];
    if (plan.groups) groupLimitInto(sel, plan.groups.n, plan.groups.keep, plan.groups.score);
  }

  const ids = new Int32Array(n * topK);
  const weights = new Float32Array(n * topK);
  let rerouted = 0;
  let dropped = 0;
  if (opts.capacityFactor === null) {
    for (let t = 0; t < n; t++)
      topKInto(select.subarray(t * nExperts, (t + 1) * nExperts), topK, ids, weights, t * topK);
  } else {
    const r = assignWithCapacity(
      select,
      n,
      nExperts,
      topK,
      capacityPerExpert(opts.capacityFactor, n, nExperts, topK),
      ids,
    );
    rerouted = r.rerouted;
    dropped = r.dropped;
  }

  // Weights from the unbiased scores of the chosen experts; dropped slots weigh 0.
  for (let t = 0; t < n; t++) {
    const at = t * topK;
    let sum = 0;
    for (let j = 0; j < topK; j++) {
      const e = ids[at + j];
      weights[at + j] = e < 0 ? 0 : scores[t * nExperts + e];
      sum += weights[at + j];
    }
    if (plan.renormalize && sum > 0) for (let j = 0; j < topK; j++) weights[at + j] /= sum;
    if (plan.scale !== 1) for (let j = 0; j < topK; j++) weights[at + j] *= plan.scale;
  }
  return { n, topK, ids, weights, rerouted, dropped };
}

/** Deployer knobs on one token's logits, in place: z / temperature, then + N(0, noiseStd²). */
function perturbLogits(z: Float32Array, opts: RoutingOptions, rng: (() => number) | undefined): void {
  if (opts.temperature !== 1) for (let e = 0; e < z.length; e++) z[e] /= opts.temperature;
  if (opts.noiseStd > 0) {
    if (!rng) throw new Error("noisy top-k routing needs a random source");
    for (let e = 0; e < z.length; e++) z[e] += opts.noiseStd * gaussian(rng);
  }
}

/** Standard normal draw (Box–Muller). */
function gaussian(rng: () => number): number {
  const u = 1 - rng(); // (0, 1]
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
}

/**
 * A routing whose dropped slots (-1) are removed, as n' = kept assignments with topK = 1, plus the
 * token each row belongs to: the expert fan-out runs it unchanged, and the Worker sums rows back.
 */
export function flattenRouting(r: Routing): { routing: Routing; tokenOf: Int32Array } {
  let m = 0;
  for (let i = 0; i < r.ids.length; i++) if (r.ids[i] >= 0) m++;
  const ids = new Int32Array(m);
  const weights = new Float32Array(m);
  const tokenOf = new Int32Array(m);
  let at = 0;
  for (let i = 0; i < r.ids.length; i++) {
    if (r.ids[i] < 0) continue;
    ids[at] = r.ids[i];
    weights[at] = r.weights[i];
    tokenOf[at++] = Math.floor(i / r.topK);
  }
  return { routing: { n: m, topK: 1, ids, weights, rerouted: r.rerouted }, tokenOf };
}
