/**
 * @module Consolidation after a burst (pure): once the replicas a burst added are released, some
 * experts may sit alone on instances the burst added (a balancing move evicted their original copy
 * to make room), so one token's fan-out reaches more ExpertHosts than in the fresh placement — more
 * RPCs per layer for the same work. This moves every such expert back to its home (the instance
 * `initialPlacement` gives it), or, for one on an added instance whose home is full, to the fresh
 * instance with the most room, and then retires the trailing instances left empty.
 *
 * Only the released state is consolidated (no expert replicated): while any expert holds a replica
 * the load still wants it, and moving lone copies then would fight the replication. A move is an
 * add-replica on the destination and a remove-replica of the old copy; the Coordinator executes it
 * add-first (execute.ts `executeMoves`), so a copy is always servable. Budgets: a destination must
 * hold its new copies on top of everything it holds now (its old copies leave only after the drain).
 */
import { homeInstance } from "../initial-placement";
import { applyOps, bytesFn, sharesAfter, type ExpertBytes, type Placement, type PlacementOp } from "../placement";
import { stateLatencyMs } from "./latency";
import { buildState, type PlannerInput } from "./state";

export interface ConsolidationInput {
  placement: Placement;
  expertBytes: ExpertBytes;
  /** Instances of the model's fresh placement: homes are among the first `homeInstances`. */
  homeInstances: number;
  /** Most moves (each one weight copy) per plan. */
  maxCopies: number;
}

/**
 * add-replica / remove-replica pairs that move lone experts home, then remove-instance ops for the
 * empty tail past the fresh placement's instances (last first). Empty when nothing moves or is
 * retired, or while any expert is replicated. Deterministic.
 */
export function planConsolidation(input: ConsolidationInput): PlacementOp[] {
  const p = input.placement;
  const n = p.instances.length;
  const home = Math.max(1, Math.min(input.homeInstances, n));
  if (p.replicas.some((row) => row.some((reps) => reps.length !== 1))) return [];
  const bytes = bytesFn(input.expertBytes, p.nLayers, p.nExperts);
  const used = new Array<number>(n).fill(0);
  const held = new Array<number>(n).fill(0);
  // Experts off their home: the ones on added instances first (they widen the fan-out), then those
  // moved between fresh instances (they leave a layer's experts bunched on fewer instances).
  const off: { layer: number; expert: number; from: number; to: number; added: boolean }[] = [];
  p.replicas.forEach((row, l) =>
    row.forEach((reps, e) => {
      const from = reps[0].instance;
      used[from] += bytes(l, e);
      held[from]++;
      const to = homeInstance(l, e, p.nExperts, home);
      if (from !== to) off.push({ layer: l, expert: e, from, to, added: from >= home });
    }),
  );
  off.sort((a, b) => Number(b.added) - Number(a.added) || a.layer - b.layer || a.expert - b.expert);
  const room = (i: number, b: number) => used[i] + b <= p.instances[i].budgetBytes;
  const adds: PlacementOp[] = [];
  const removes: PlacementOp[] = [];
  for (const m of off) {
    if (adds.length >= input.maxCopies) break;
    const b = bytes(m.layer, m.expert);
    let to = room(m.to, b) ? m.to : -1;
    if (to < 0 && m.added) {
      // Home full: any fresh instance with room still shrinks the fan-out; the emptiest one.
      for (let i = 0; i < home; i++) if (room(i, b) && (to < 0 || used[i] < used[to])) to = i;
    }
    if (to < 0) continue;
    used[to] += b;
    held[to]++;
    held[m.from]--;
    adds.push({ op: "add-replica", layer: m.layer, expert: m.expert, instance: to });
    removes.push({ op: "remove-replica", layer: m.layer, expert: m.expert, instance: m.from });
  }
  const retire: PlacementOp[] = [];
  for (let i = n - 1; i >= home && held[i] === 0; i--) retire.push({ op: "remove-instance", instance: i });
  return [...adds, ...removes, ...retire];
}

/**
 * Modelled latency (ms per token over all layers, `planner/latency.ts`) of the live placement and
 * of the one after `ops`, under `input`'s loads and call rate; null without a latency model. Lone
 * experts have a share of 1, so no share re-balance is needed on either side.
 */
export function consolidationLatency(
  input: PlannerInput,
  ops: readonly PlacementOp[],
): { before: number; after: number } | null {
  const model = input.latency;
  if (!model?.calls.some((c) => c > 0)) return null;
  const p = input.placement;
  const n = p.instances.length;
  // Retired instances are empty: keeping them listed changes no layer call.
  const moves = ops.filter((o) => o.op !== "remove-instance");
  const moved = applyOps(p, moves, sharesAfter(p, moves, null));
  const before = stateLatencyMs(buildState(input), n, model);
  const after = stateLatencyMs(buildState({ ...input, placement: moved }), n, model);
  return { before, after };
}
