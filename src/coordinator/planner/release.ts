/**
 * @module Releasing replicas that no longer pay (pure): with the latency model, an extra replica
 * goes when the layer calls are no slower without it at the current load — a rarely-used replica
 * still adds its instance to the calls that reach it, holds memory, and once the load that made it
 * worth its copy is gone it only costs. Hysteresis against flapping: a plan adds a replica only
 * when it gains `minLatencyGain`; a replica is released only when losing it costs less than
 * `maxLatencyLoss` (smaller).
 */
import type { PlacementOp } from "../placement";
import { stateLatencyMs } from "./latency";
import { removeReplica } from "./moves";
import { rebalanceAround, rebalanceLayer } from "./shares";
import { buildState, validate, type PlannerInput } from "./state";

/** A replica is released when the modelled latency without it is at most this fraction higher. */
export const DEFAULT_MAX_LATENCY_LOSS = 0.005;

/** Sweeps after a tentative removal (its neighbours take its rows). */
const SWEEPS = 4;

/**
 * remove-replica ops for the extra replicas the model says do not pay (none without
 * `input.latency`), least-used first; every expert keeps its first-listed (oldest) replica.
 */
export function planRelease(input: PlannerInput, maxLatencyLoss = DEFAULT_MAX_LATENCY_LOSS): PlacementOp[] {
  const model = input.latency;
  if (!model?.calls.some((c) => c > 0)) return [];
  validate(input);
  const st = buildState(input);
  const n = input.placement.instances.length;
  for (const ls of st.layers) rebalanceLayer(ls, n, st.maxSweeps);
  const candidates: { layer: number; expert: number; instance: number; rows: number }[] = [];
  st.layers.forEach((ls, l) =>
    ls.inst.forEach((is, e) => {
      for (let r = 1; r < is.length; r++)
        candidates.push({ layer: l, expert: e, instance: is[r], rows: ls.load[e] * ls.share[e][r] });
    }),
  );
  candidates.sort((a, b) => a.rows - b.rows || a.layer - b.layer || a.expert - b.expert || a.instance - b.instance);
  const ops: PlacementOp[] = [];
  let current = stateLatencyMs(st, n, model);
  for (const c of candidates) {
    const ls = st.layers[c.layer];
    if (ls.inst[c.expert][0] === c.instance || !ls.inst[c.expert].includes(c.instance)) continue;
    // Tentative: keep what the removal and its re-balance change, to undo it.
    const saved = {
      inst: ls.inst.map((x) => x.slice()),
      share: ls.share.map((x) => x.slice()),
      experts: ls.experts.map((x) => x.slice()),
      instLoad: ls.instLoad.slice(),
      original: ls.original[c.expert],
      used: st.used[c.instance],
    };
    removeReplica(st, c.layer, c.expert, c.instance);
    rebalanceAround(ls, c.expert, SWEEPS);
    const after = stateLatencyMs(st, n, model);
    if (after <= current * (1 + maxLatencyLoss)) {
      current = after;
      ops.push({ op: "remove-replica", layer: c.layer, expert: c.expert, instance: c.instance });
      continue;
    }
    ls.inst = saved.inst;
    ls.share = saved.share;
    ls.experts = saved.experts;
    ls.instLoad = saved.instLoad;
    ls.original[c.expert] = saved.original;
    ls.order = [];
    ls.multi = null;
    st.used[c.instance] = saved.used;
  }
  return ops;
}
