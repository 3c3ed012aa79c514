/**
 * @module The planner's input, its validation, and the mutable working state a plan is built in
 * (per layer: loads, replica sets, shares, instance loads; per instance: bytes used).
 */
import { bytesFn, type ExpertBytes, type Placement } from "../placement";
import type { LatencyModel } from "./latency";

export interface PlannerInput {
  placement: Placement;
  /** [layer][expert] forecast tokens per window (load-window.ts `forecastLoads`). */
  loads: readonly (readonly number[])[];
  expertBytes: ExpertBytes;
  /** Bytes each instance may hold: one for all or per instance. Default: each instance's `budgetBytes`. */
  budgetBytes?: number | readonly number[];
  /** Most add-replica ops (weight copies) per plan. Removals copy nothing; they only make room. */
  maxCopies: number;
  /** Hysteresis: no ops while every layer's max/mean, after re-balancing shares, is ≤ 1 + threshold. Default 0.02. */
  threshold?: number;
  /** Balancing moves stop once every layer is ≤ 1 + target. Default threshold / 2. */
  target?: number;
  /**
   * The plan is kept only if Σ over layers of (drop of the busiest instance's load / layer mean)
   * is at least this; otherwise only new shares are returned. Default threshold / 2.
   */
  minGain?: number;
  /** Instances the placement may grow to with `add-instance`. Default: the current count. */
  maxInstances?: number;
  /** Budget of an added instance. Default: the largest current budget. */
  newInstanceBudgetBytes?: number;
  /** [layer][expert] variance of next window's load (tokens²). Default: Poisson (= load). */
  loadVariance?: readonly (readonly number[])[];
  /**
   * Relative variance (σ²/load²) of every expert's next-window load added to `loadVariance`:
   * drift and burstiness the counts do not show. 0 fits shares exactly; large values tend to
   * even splits. Default 0.2.
   */
  spread?: number;
  /** Spend copies left after balancing on hedging (see the module comment). Default true. */
  hedge?: boolean;
  /** A hedge that evicts must shrink the largest load per replica by more than this fraction. Default 0.25. */
  hedgeMargin?: number;
  /** Cap on Gauss–Seidel sweeps per share re-balance; it stops earlier when converged. Default 200. */
  maxSweeps?: number;
  /**
   * Measured costs and the call rate: moves are then kept only while they lower the modelled
   * layer latency (`latency.ts`). Absent: balance alone decides (as before the model).
   */
  latency?: LatencyModel;
  /** With `latency`: the plan must lower the modelled latency by at least this fraction. Default 0.05. */
  minLatencyGain?: number;
}

// ── state ─────────────────────────────────────────────────────────────────────────────────────

export interface LayerState {
  load: Float64Array; // [nExperts] tokens per window
  /** [nExperts] relative variance of next window's load: Var / load². */
  rho: Float64Array;
  inst: number[][]; // [nExperts] → instances holding a replica
  share: number[][]; // [nExperts] → shares, parallel to inst
  /** [nExperts] → replicas that existed before this plan and are still there. */
  original: Int32Array;
  /** [nExperts] → replicas this plan added (a fast "no" before looking in `State.added`). */
  addedTo: Int32Array;
  instLoad: number[]; // [nInstances]
  experts: number[][]; // [nInstances] → experts with a replica there
  total: number;
  /** Experts with ≥ 2 replicas and load, hottest first; null when replica sets changed. */
  multi: number[] | null;
  /** [nExperts] → water-filling order of the expert's replicas, kept between sweeps (or undefined). */
  order: (number[] | undefined)[];

  /** Scratch for rebalanceAround: visit stamps per expert and instance, and work lists. */
  stamp: number;
  expertSeen: Int32Array;
  instSeen: number[];
  near: number[];
  queue: number[];
}

/** A replica a move removes to make room (on the move's destination instance). */
export interface Eviction {
  layer: number;
  expert: number;
}

export interface State {
  nLayers: number;
  layers: LayerState[];
  budget: number[];
  used: number[];
  bytes: (layer: number, expert: number) => number;
  /** Replicas added by this plan, as addedKey(): never evicted again in the same plan. */
  added: Set<number>;
  /** bestHedge's per-instance cheapest evictions; see hedgeEvictions. */
  hedgeCache: { n: number; ev: Eviction[][]; af: number[][]; dirty: boolean[] };
  nExperts: number;
  maxSweeps: number;
}

export const EPS = 1e-12;

export function validate(input: PlannerInput): void {
  const p = input.placement;
  const n = p.instances.length;
  if (n < 1) throw new RangeError(`placement has no instances`);
  if (input.loads.length !== p.nLayers)
    throw new RangeError(`loads has ${input.loads.length} layers, the placement ${p.nLayers}`);
  input.loads.forEach((row, l) => {
    if (row.length !== p.nExperts)
      throw new RangeError(`loads[${l}] has ${row.length} experts, the placement ${p.nExperts}`);
    for (let e = 0; e < row.length; e++) {
      const v = row[e];
      if (!(v >= 0) || !Number.isFinite(v))
        throw new RangeError(`loads[${l}][${e}] must be a finite number ≥ 0, got ${v}`);
    }
  });
  if (!Number.isInteger(input.maxCopies) || input.maxCopies < 0)
    throw new RangeError(`maxCopies must be an integer ≥ 0, got ${input.maxCopies}`);
  if (p.replicas.length !== p.nLayers)
    throw new RangeError(`placement.replicas has ${p.replicas.length} layers, nLayers is ${p.nLayers}`);
  const seen = new Int32Array(n).fill(-1); // instance → last (layer, expert) stamp that used it
  let stamp = 0;
  p.replicas.forEach((layer, l) => {
    if (layer.length !== p.nExperts)
      throw new RangeError(`placement.replicas[${l}] has ${layer.length} experts, nExperts is ${p.nExperts}`);
    for (let e = 0; e < layer.length; e++, stamp++) {
      const reps = layer[e];
      if (reps.length === 0) throw new RangeError(`expert (${l}, ${e}) has no replica`);
      for (const r of reps) {
        if (!Number.isInteger(r.instance) || r.instance < 0 || r.instance >= n)
          throw new RangeError(`expert (${l}, ${e}) has a replica on unknown instance ${r.instance}`);
        if (seen[r.instance] === stamp)
          throw new RangeError(`expert (${l}, ${e}) has two replicas on instance ${r.instance}`);
        seen[r.instance] = stamp;
      }
    }
  });
}

export function buildState(input: PlannerInput): State {
  const p = input.placement;
  const n = p.instances.length;
  const bytes = bytesFn(input.expertBytes, p.nLayers, p.nExperts);
  const b = input.budgetBytes;
  const budget = p.instances.map((info, i) =>
    b === undefined ? info.budgetBytes : typeof b === "number" ? b : (b[i] ?? info.budgetBytes),
  );
  const used = new Array<number>(n).fill(0);
  const spread = input.spread ?? 0.2;
  const layers: LayerState[] = p.replicas.map((layer, l) => {
    const load = Float64Array.from(input.loads[l]);
    const rho = new Float64Array(load.length);
    const original = new Int32Array(load.length);
    const inst: number[][] = [];
    const share: number[][] = [];
    const experts: number[][] = Array.from({ length: n }, () => []);
    const instLoad = new Array<number>(n).fill(0);
    let total = 0;
    layer.forEach((reps, e) => {
      const L = load[e];
      const v = input.loadVariance?.[l]?.[e] ?? L;
      rho[e] = L > 0 ? Math.min(1e3, v / (L * L)) + spread : 0;
      original[e] = reps.length;
      let sum = 0;
      for (const r of reps) sum += Math.max(r.share, 0);
      const sh = reps.map((r) => (sum > EPS ? Math.max(0, r.share) / sum : 1 / reps.length));
      const is = reps.map((r) => r.instance);
      inst.push(is);
      share.push(sh);
      is.forEach((i, k) => {
        experts[i].push(e);
        instLoad[i] += L * sh[k];
        used[i] += bytes(l, e);
      });
      total += L;
    });
    return {
      load,
      rho,
      inst,
      share,
      original,
      addedTo: new Int32Array(load.length),
      instLoad,
      experts,
      total,
      multi: null,
      order: [],
      stamp: 0,
      expertSeen: new Int32Array(load.length),
      instSeen: new Array<number>(n).fill(0),
      near: [],
      queue: [],
    };
  });
  return {
    nLayers: p.nLayers,
    nExperts: p.nExperts,
    layers,
    budget,
    used,
    bytes,
    added: new Set(),
    maxSweeps: input.maxSweeps ?? 200,
    hedgeCache: { n: -1, ev: [], af: [], dirty: [] },
  };
}
