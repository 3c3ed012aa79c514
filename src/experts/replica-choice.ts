/**
 * @module Which replica serves each routed token (pure apart from the per-isolate load table).
 */
import type { Replica } from "../coordinator/placement";
import { numberVar, perEnv } from "../platform/env";
import { dispatchLeastLoaded } from "./dispatch";

/** One expert's share of a layer call: token indices into the batch and their top-k slots. */
export interface Assignment {
  expert: number;
  tokens: number[]; // token indices into the layer's batch
  slots: number[]; // matching top-k slot per token (to find the gate weight)
}

// Least-loaded dispatch (./dispatch.ts): each expert's rows are water-filled over its replicas'
// instances by this isolate's view of their load — rows it has in flight plus rows it sent
// recently (decaying with a half-life of RECENT_HALF_LIFE_MS) — so a busy or just-used instance is
// avoided; the planner's shares break ties, so an idle isolate follows the planner's split. Which
// replica serves a row never changes the result: ./combine.ts adds the rows in a fixed order.

const RECENT_HALF_LIFE_MS = 1000;
const DEFAULT_PASS_ROWS = 4;

/**
 * DISPATCH_PASS_ROWS: the fixed cost of one expert pass on an ExpertHost — the read of the
 * expert's weights, paid once however many rows the pass brings — in row-equivalents (the time
 * of one row's compute). Dispatch counts it for every replica it sends rows to, so a few rows of an
 * expert stay on one replica and only a batch large enough to pay for a second read is split.
 * 0 = rows only (the dispatch before the pass cost). The default is measured on the demo's f32
 * experts (README, Continuous batching); int8 experts, a quarter of the bytes, measure lower.
 */
export const dispatchPassRows = perEnv((env) => numberVar(env, "DISPATCH_PASS_ROWS", DEFAULT_PASS_ROWS, { min: 0 }));

export interface InstanceLoad {
  recent: number[];
  inflight: number[];
  at: number;
  /** Placement version the recent rows were sent under. */
  version?: number;
}

const instanceLoads = new Map<string, InstanceLoad>();

/**
 * This isolate's load view for `model`. Recent rows are forgotten when the placement version
 * changes: they would keep an instance marked busy after the planner moved load off it; rows in
 * flight are real and kept.
 */
export function loadOf(model: string, version?: number): InstanceLoad {
  let l = instanceLoads.get(model);
  if (!l) instanceLoads.set(model, (l = { recent: [], inflight: [], at: Date.now(), version }));
  if (version !== undefined && l.version !== version) {
    l.recent = [];
    l.version = version;
  }
  const now = Date.now();
  if (now > l.at) {
    const keep = 0.5 ** ((now - l.at) / RECENT_HALF_LIFE_MS);
    for (let i = 0; i < l.recent.length; i++) l.recent[i] = (l.recent[i] ?? 0) * keep;
    l.at = now;
  }
  return l;
}

/**
 * Chooses replicas for one layer call's experts; returns the parts per instance. `passRows`: the
 * pass cost in row-equivalents (`dispatchPassRows`; 0 = rows only), weighed within this call only:
 * the isolate's load view across calls stays in rows, the currency of the planner's load reports
 * (counting passes there too would steer rows off instances that host many experts, which the
 * planner reads as imbalance and answers with more replicas). Failed
 * instances are skipped; when every replica of an expert has failed, they are retried in turn (a
 * DO that was reset mid-call usually answers the second time). Instances that must not be retried
 * at all are left out of `replicasOf` by the caller.
 */
export function assignReplicas(
  experts: Assignment[],
  replicasOf: (expert: number) => readonly Replica[],
  failed: ReadonlySet<number>,
  attempt: number,
  load: InstanceLoad,
  random: () => number,
  passRows = 0,
): Map<number, Assignment[]> {
  const live = experts.map((a) => {
    const all = replicasOf(a.expert);
    let reps = all.filter((r) => !failed.has(r.instance) && r.share > 0);
    if (reps.length === 0) reps = all.filter((r) => !failed.has(r.instance));
    if (reps.length === 0) reps = [all[attempt % all.length]];
    return reps;
  });
  const nInstances = Math.max(0, ...live.flat().map((r) => r.instance + 1), load.recent.length, load.inflight.length);
  const instanceLoad = new Float64Array(nInstances);
  for (let i = 0; i < nInstances; i++) instanceLoad[i] = (load.recent[i] ?? 0) + (load.inflight[i] ?? 0);
  const counts = dispatchLeastLoaded(
    experts.map((a) => a.tokens.length),
    live,
    instanceLoad,
    { random, passRows },
  );
  const byInstance = new Map<number, Assignment[]>();
  experts.forEach((a, q) => {
    let from = 0;
    live[q].forEach((r, k) => {
      const n = counts[q][k];
      if (n <= 0) return;
      load.recent[r.instance] = (load.recent[r.instance] ?? 0) + n;
      let list = byInstance.get(r.instance);
      if (!list) byInstance.set(r.instance, (list = []));
      list.push({ expert: a.expert, tokens: a.tokens.slice(from, from + n), slots: a.slots.slice(from, from + n) });
      from += n;
    });
  });
  return byInstance;
}
