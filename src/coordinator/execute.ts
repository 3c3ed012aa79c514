/**
 * @module Make-before-break execution of a re-plan's diff: publish the table without the removed
 * replicas, wait until every Worker has seen it, unload them; load the added replicas (naming new
 * instances); publish the final table with the shares fixed for any load that failed (the rest of
 * the plan still applies). Moves of an expert's only copy (consolidation) run the other way round:
 * `executeMoves`.
 */
import {
  applyOps,
  drainPlacement,
  modelLayer,
  sharesAfter,
  type InstanceInfo,
  type Placement,
  type PlacementOp,
  type Replica,
} from "./placement";
import { hostName, type ExpertHostStats, type ExpertLoadResult, type ExpertRef } from "../experts/protocol";

/** The ExpertHost RPCs a change needs. */
export interface ExecuteTarget {
  load(model: string, experts: ExpertRef[], name?: string): Promise<ExpertLoadResult>;
  unload(model: string, experts: ExpertRef[]): Promise<ExpertHostStats>;
}

export interface ExecuteDeps {
  host(name: string): ExecuteTarget;
  /** Writes and serves `p` as the current placement. */
  publish(p: Placement, summary: string): void;
  /** How long Workers take to see a published version (and finish calls made under the last). */
  drainMs: number;
}

/** What a change did: the final placement, the loads that failed, the ops that took effect. */
export interface Executed {
  placement: Placement;
  failedLoads: string[];
  applied: PlacementOp[];
  /** Hosts whose unload failed (they may hold copies no version routes to: reconcile them). */
  failedUnloads?: string[];
}

/** Executes `ops` (with the planned `shares`) on `live`; see the module comment. */
export async function executePlan(
  live: Placement,
  ops: PlacementOp[],
  shares: Replica[][][] | null,
  deps: ExecuteDeps,
): Promise<Executed> {
  const model = live.model;
  let current = live;
  const removes = ops.filter((o): o is Extract<PlacementOp, { op: "remove-replica" }> => o.op === "remove-replica");
  if (removes.length > 0) {
    // Publish the table without the removed replicas, wait until every Worker has seen it and
    // in-flight calls have finished, then free the memory.
    const drained = drainPlacement(current, ops);
    current = { ...drained, version: current.version + 1 };
    deps.publish(current, `drain ${removes.length} replica(s)`);
    await new Promise((r) => setTimeout(r, deps.drainMs));
    const byInstance = groupByInstance(current, removes);
    await Promise.all(
      [...byInstance].map(([i, refs]) =>
        deps
          .host(current.instances[i].name)
          .unload(model, refs)
          .catch(() => null),
      ),
    );
  }
  // New instances get names now; the planner numbers them after the existing ones.
  const instances = current.instances.slice();
  const budget = Math.max(...instances.map((i) => i.budgetBytes));
  for (const op of ops) {
    if (op.op === "add-instance")
      instances.push({ id: instances.length, name: hostName(model, instances.length), budgetBytes: budget });
  }
  const { failed, failedLoads } = await loadAdds(current, instances, ops, deps);
  const applied = ops.filter((o) => o.op !== "add-replica" || !failed.has(key(o)));
  const finalShares = sharesAfter(live, applied, shares);
  const next = applyOps(live, applied, finalShares, { newInstance: (id) => instances[id] });
  const placement = { ...next, version: current.version + 1 };
  deps.publish(placement, applied.map(opSummary).join(" ") || "no change");
  return { placement, failedLoads, applied };
}

/**
 * Executes moves (planner/consolidate.ts: add-replica + remove-replica of the same expert, then
 * remove-instance ops) add-first, since the removed copy is the expert's only one: load the new
 * copies; publish the table with them in place of the old ones and without the retired instances
 * (a Worker still on the previous version reaches the old copies, loaded until the drain ends);
 * wait the drain; unload the old copies. A move whose copy did not load keeps its old copy, and an
 * instance still holding one stays listed.
 */
export async function executeMoves(live: Placement, ops: PlacementOp[], deps: ExecuteDeps): Promise<Executed> {
  const model = live.model;
  const { failed, failedLoads } = await loadAdds(live, live.instances, ops, deps);
  const moved = new Set(
    ops.flatMap((o) => (o.op === "add-replica" && !failed.has(key(o)) ? [`${o.layer}:${o.expert}`] : [])),
  );
  const removes = ops.filter(
    (o): o is Extract<PlacementOp, { op: "remove-replica" }> =>
      o.op === "remove-replica" && moved.has(`${o.layer}:${o.expert}`),
  );
  const kept: PlacementOp[] = [...ops.filter((o) => o.op === "add-replica" && !failed.has(key(o))), ...removes];
  const mid = applyOps(live, kept, sharesAfter(live, kept, null));
  const holding = new Set(mid.replicas.flatMap((row) => row.flatMap((reps) => reps.map((r) => r.instance))));
  let last = mid.instances.length - 1;
  for (const o of ops) {
    if (o.op !== "remove-instance" || o.instance !== last || holding.has(last)) continue;
    kept.push(o);
    last--;
  }
  // Every load failed and nothing can be retired: publish nothing (a new version would only make
  // every Worker refresh its placement for the same table).
  if (kept.length === 0) return { placement: live, failedLoads, applied: [], failedUnloads: [] };
  const next = applyOps(live, kept, sharesAfter(live, kept, null));
  const placement = { ...next, version: live.version + 1 };
  deps.publish(placement, kept.map(opSummary).join(" "));
  const failedUnloads: string[] = [];
  if (removes.length > 0) {
    await new Promise((r) => setTimeout(r, deps.drainMs));
    await Promise.all(
      [...groupByInstance(live, removes)].map(([i, refs]) =>
        deps
          .host(live.instances[i].name)
          .unload(model, refs)
          .catch((err: unknown) => {
            failedUnloads.push(`${live.instances[i].name}: ${err instanceof Error ? err.message : String(err)}`);
          }),
      ),
    );
  }
  return { placement, failedLoads, applied: kept, failedUnloads };
}

/** Loads the add-replica ops' experts, one call per instance; the keys (`key`) of those that failed. */
async function loadAdds(
  p: Placement,
  instances: readonly InstanceInfo[],
  ops: readonly PlacementOp[],
  deps: ExecuteDeps,
): Promise<{ failed: Set<string>; failedLoads: string[] }> {
  const adds = ops.filter((o): o is Extract<PlacementOp, { op: "add-replica" }> => o.op === "add-replica");
  const failed = new Set<string>();
  const failedLoads: string[] = [];
  await Promise.all(
    [...groupByInstance(p, adds)].map(async ([i, refs]) => {
      const inst = instances[i];
      let message = "";
      try {
        const r = await deps.host(inst.name).load(p.model, refs, inst.name);
        if (r.ok) return;
        message = r.message;
      } catch (err) {
        message = err instanceof Error ? err.message : String(err);
      }
      for (const o of adds) if (o.instance === i) failed.add(key(o));
      failedLoads.push(`${inst.name}: ${message}`);
    }),
  );
  return { failed, failedLoads };
}

function opSummary(o: PlacementOp): string {
  if (o.op === "add-instance") return "+instance";
  if (o.op === "remove-instance") return `-instance ${o.instance}`;
  return `${o.op === "add-replica" ? "+" : "-"}${o.layer}:${o.expert}@${o.instance}`;
}

const key = (o: { layer: number; expert: number; instance: number }) => `${o.layer}:${o.expert}:${o.instance}`;

/** Ops (placement rows) grouped by instance, as ExpertHost refs (model layers). */
function groupByInstance(
  p: Placement,
  ops: { layer: number; expert: number; instance: number }[],
): Map<number, ExpertRef[]> {
  const m = new Map<number, ExpertRef[]>();
  for (const o of ops) {
    let list = m.get(o.instance);
    if (!list) m.set(o.instance, (list = []));
    list.push({ layer: modelLayer(p, o.layer), expert: o.expert });
  }
  return m;
}
