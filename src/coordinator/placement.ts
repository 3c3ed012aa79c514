/**
 * @module The placement table: which ExpertHost instances hold which (layer, expert), and what
 * share of an expert's tokens each replica receives. Shared by the Coordinator (which owns and
 * versions it), the planner (which proposes diffs to it) and the Worker (which routes by it).
 * Below the types: the pure helpers that apply a diff to a table, drain it, fix its shares after
 * a partial apply, check its invariants, and measure its balance.
 */

/** One ExpertHost instance. `id` is its index in `Placement.instances`; `name` is its DO name. */
export interface InstanceInfo {
  id: number;
  name: string;
  /** Bytes of expert weights this instance may hold. */
  budgetBytes: number;
}

/** One loaded copy of an expert. */
export interface Replica {
  instance: number;
  /** Fraction of the expert's tokens routed to this replica; an expert's shares sum to 1. */
  share: number;
}

export interface Placement {
  model: string;
  /** Bumped on every published change; the Worker caches the table by it. */
  version: number;
  /** Rows of `replicas`: the model's MoE layers (dense layers have no experts to place). */
  nLayers: number;
  /** Placement units a layer: the model's experts × `slices`. */
  nExperts: number;
  /**
   * Slices per expert (src/experts/slices.ts); absent = 1. Unit e·slices + s is slice s of expert e:
   * everything below treats units as experts, only the Worker's fan-out and the ExpertStore know.
   */
  slices?: number;
  /**
   * Model layer index of each row, when not every layer is an MoE layer (DeepSeek's
   * first_k_dense_replace, Qwen's mlp_only_layers). Absent: row i is layer i.
   */
  layers?: number[];
  instances: InstanceInfo[];
  /** [layer][expert] → replicas (at least one each). */
  replicas: Replica[][][];
}

/** Row of `p.replicas` holding model layer `layer`, or -1 when that layer has no experts. */
export function placementRow(p: Placement, layer: number): number {
  if (!p.layers) return layer < p.nLayers ? layer : -1;
  return p.layers.indexOf(layer);
}

/** Model layer index of placement row `row`. */
export function modelLayer(p: Placement, row: number): number {
  return p.layers ? p.layers[row] : row;
}

/**
 * A step of a placement diff, as the planner proposes and the Coordinator applies it (`layer`: a
 * placement row). `remove-instance` retires the LAST instance, which must hold nothing once the
 * ops before it are applied: instance ids are indices that Workers and load reports rely on, so
 * only the tail can go without renumbering the rest.
 */
export type PlacementOp =
  | { op: "add-replica"; layer: number; expert: number; instance: number }
  | { op: "remove-replica"; layer: number; expert: number; instance: number }
  | { op: "add-instance" }
  | { op: "remove-instance"; instance: number };

/** Bytes of one expert's weights: one number for all, [layer][expert], or a function. */
export type ExpertBytes = number | readonly (readonly number[])[] | ((layer: number, expert: number) => number);

/** `ExpertBytes` as a function; throws a RangeError when the table's shape does not match. */
export function bytesFn(b: ExpertBytes, nLayers: number, nExperts: number): (layer: number, expert: number) => number {
  if (typeof b === "number") {
    if (!(b >= 0)) throw new RangeError(`expertBytes must be ≥ 0, got ${b}`);
    return () => b;
  }
  if (typeof b === "function") return b;
  if (b.length !== nLayers || b.some((row) => row.length !== nExperts)) {
    throw new RangeError(`expertBytes must be [${nLayers}][${nExperts}], got [${b.length}][${b[0]?.length ?? 0}]`);
  }
  return (l, e) => b[l][e];
}

// ── applying, draining and checking ───────────────────────────────────────────────────────────

export interface ApplyOptions {
  /** Describes an instance added by `add-instance`. Default: name `h<id>`, the largest budget. */
  newInstance?: (id: number) => InstanceInfo;
}

/**
 * Applies `ops` and installs `shares` (both from one `PlanResult`). Pure: returns a new placement
 * with `version + 1`. Throws if an op does not fit or the shares do not match the replica sets.
 */
export function applyOps(
  placement: Placement,
  ops: readonly PlacementOp[],
  shares: readonly (readonly (readonly Replica[])[])[],
  opts: ApplyOptions = {},
): Placement {
  const instances = placement.instances.slice();
  const maxBudget = Math.max(...instances.map((i) => i.budgetBytes));
  const sets = placement.replicas.map((layer) => layer.map((reps) => new Set(reps.map((r) => r.instance))));
  for (const op of ops) {
    if (op.op === "add-instance") {
      const id = instances.length;
      instances.push(opts.newInstance ? opts.newInstance(id) : { id, name: `h${id}`, budgetBytes: maxBudget });
      continue;
    }
    if (op.op === "remove-instance") {
      if (op.instance !== instances.length - 1 || op.instance === 0)
        throw new RangeError(`remove-instance: ${op.instance} is not the last instance (of ${instances.length})`);
      if (sets.some((layer) => layer.some((set) => set.has(op.instance))))
        throw new RangeError(`remove-instance: instance ${op.instance} still holds experts`);
      instances.pop();
      continue;
    }
    const set = sets[op.layer]?.[op.expert];
    if (!set) throw new RangeError(`${op.op}: no expert (${op.layer}, ${op.expert})`);
    if (!Number.isInteger(op.instance) || op.instance < 0 || op.instance >= instances.length)
      throw new RangeError(`${op.op}: no instance ${op.instance}`);
    if (op.op === "add-replica") {
      if (set.has(op.instance))
        throw new RangeError(`add-replica: expert (${op.layer}, ${op.expert}) is already on instance ${op.instance}`);
      set.add(op.instance);
    } else {
      if (!set.delete(op.instance))
        throw new RangeError(`remove-replica: expert (${op.layer}, ${op.expert}) is not on instance ${op.instance}`);
      if (set.size === 0)
        throw new RangeError(`remove-replica: expert (${op.layer}, ${op.expert}) would have no replica`);
    }
  }
  const replicas = sets.map((layer, l) =>
    layer.map((set, e) => {
      const given = shares[l]?.[e];
      if (!given || given.length !== set.size || given.some((r) => !set.has(r.instance))) {
        throw new RangeError(`shares for expert (${l}, ${e}) do not match its replicas after the ops`);
      }
      return given.map((r) => ({ instance: r.instance, share: r.share }));
    }),
  );
  return { ...placement, version: placement.version + 1, instances, replicas };
}

/**
 * The table to publish BEFORE executing `ops` (make-before-break): the live placement without
 * the replicas the ops remove, their shares handed to the expert's other replicas pro rata
 * (evenly when those had none). Every expert keeps a replica: the planner never removes the last
 * replica that existed before the plan. Then: remove, load, and publish `applyOps(...)`.
 */
export function drainPlacement(placement: Placement, ops: readonly PlacementOp[]): Placement {
  const removed = new Set(
    ops.flatMap((op) => (op.op === "remove-replica" ? [`${op.layer}:${op.expert}:${op.instance}`] : [])),
  );
  if (removed.size === 0) return placement;
  const replicas = placement.replicas.map((layer, l) =>
    layer.map((reps, e) => {
      const kept = reps.filter((r) => !removed.has(`${l}:${e}:${r.instance}`));
      if (kept.length === reps.length) return reps.map((r) => ({ ...r }));
      if (kept.length === 0) throw new RangeError(`ops remove every replica of expert (${l}, ${e})`);
      const sum = kept.reduce((a, r) => a + r.share, 0);
      return kept.map((r) => ({ instance: r.instance, share: sum > 1e-12 ? r.share / sum : 1 / kept.length }));
    }),
  );
  return { ...placement, version: placement.version + 1, replicas };
}

/** Shares for `placement` after `ops`: the ones given where they fit, renormalised over what exists. */
export function sharesAfter(
  placement: Placement,
  ops: readonly PlacementOp[],
  planned: readonly (readonly (readonly Replica[])[])[] | null,
): Replica[][][] {
  const sets = placement.replicas.map((row) => row.map((reps) => new Set(reps.map((r) => r.instance))));
  for (const op of ops) {
    if (op.op === "add-replica") sets[op.layer][op.expert].add(op.instance);
    else if (op.op === "remove-replica") sets[op.layer][op.expert].delete(op.instance);
  }
  return sets.map((row, l) =>
    row.map((set, e) => {
      const given = (planned?.[l]?.[e] ?? placement.replicas[l][e]).filter((r) => set.has(r.instance));
      const missing = [...set].filter((i) => !given.some((r) => r.instance === i));
      const all = [
        ...given.map((r) => ({ instance: r.instance, share: r.share })),
        ...missing.map((instance) => ({ instance, share: 0 })),
      ];
      const sum = all.reduce((s, r) => s + r.share, 0);
      return all.map((r) => ({ instance: r.instance, share: sum > 1e-12 ? r.share / sum : 1 / all.length }));
    }),
  );
}

/**
 * Everything wrong with a placement, as messages (empty when fine): experts without a replica,
 * two replicas of one expert on one instance, unknown instances, negative shares or shares not
 * summing to 1, instances holding more bytes than their budget.
 */
export function checkPlacementInvariants(
  placement: Placement,
  budgets: number | readonly number[] | undefined,
  expertBytes: ExpertBytes,
): string[] {
  const problems: string[] = [];
  const n = placement.instances.length;
  const bytes = bytesFn(expertBytes, placement.nLayers, placement.nExperts);
  const used = new Array<number>(n).fill(0);
  if (placement.replicas.length !== placement.nLayers)
    problems.push(`replicas has ${placement.replicas.length} layers, nLayers is ${placement.nLayers}`);
  placement.replicas.forEach((layer, l) => {
    if (layer.length !== placement.nExperts)
      problems.push(`layer ${l} has ${layer.length} experts, nExperts is ${placement.nExperts}`);
    layer.forEach((reps, e) => {
      if (reps.length === 0) problems.push(`expert (${l}, ${e}) has no replica`);
      const seen = new Set<number>();
      let sum = 0;
      for (const r of reps) {
        if (!Number.isInteger(r.instance) || r.instance < 0 || r.instance >= n)
          problems.push(`expert (${l}, ${e}) is on unknown instance ${r.instance}`);
        else used[r.instance] += bytes(l, e);
        if (seen.has(r.instance)) problems.push(`expert (${l}, ${e}) has two replicas on instance ${r.instance}`);
        seen.add(r.instance);
        if (!(r.share >= 0) || !Number.isFinite(r.share))
          problems.push(`expert (${l}, ${e}) has share ${r.share} on instance ${r.instance}`);
        sum += r.share;
      }
      if (reps.length > 0 && Math.abs(sum - 1) > 1e-6) problems.push(`expert (${l}, ${e}) shares sum to ${sum}, not 1`);
    });
  });
  for (let i = 0; i < n; i++) {
    const budget =
      budgets === undefined ? placement.instances[i].budgetBytes : typeof budgets === "number" ? budgets : budgets[i];
    if (used[i] > budget) problems.push(`instance ${i} holds ${used[i]} bytes, over its budget of ${budget}`);
  }
  return problems;
}

/** [layer][instance] tokens each instance serves under `loads` ([layer][expert]) and the shares. */
export function instanceLoads(placement: Placement, loads: readonly (readonly number[])[]): number[][] {
  return placement.replicas.map((layer, l) => {
    const out = new Array<number>(placement.instances.length).fill(0);
    layer.forEach((reps, e) => {
      for (const r of reps) out[r.instance] += loads[l][e] * r.share;
    });
    return out;
  });
}

/** [layer] max/mean instance load under `loads` (1 for a layer without load). */
export function balanceRatios(placement: Placement, loads: readonly (readonly number[])[]): number[] {
  return instanceLoads(placement, loads).map((row) => {
    let total = 0;
    let max = 0;
    for (const v of row) {
      total += v;
      if (v > max) max = v;
    }
    return total > 0 ? max / (total / row.length) : 1;
  });
}
