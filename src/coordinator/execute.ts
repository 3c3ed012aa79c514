/**
 * @module Make-before-break execution of a re-plan's diff: publish the table without the removed
 * replicas, wait until every Worker has seen it, unload them; load the added replicas (naming new
 * instances); publish the final table with the shares fixed for any load that failed (the rest of
 * the plan still applies).
 */
import {
  applyOps,
  drainPlacement,
  modelLayer,
  sharesAfter,
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
  const adds = ops.filter((o): o is Extract<PlacementOp, { op: "add-replica" }> => o.op === "add-replica");
  const failed = new Set<string>();
  const failedLoads: string[] = [];
  await Promise.all(
    [...groupByInstance(current, adds)].map(async ([i, refs]) => {
      const inst = instances[i];
      let message = "";
      try {
        const r = await deps.host(inst.name).load(model, refs, inst.name);
        if (r.ok) return;
        message = r.message;
      } catch (err) {
        message = err instanceof Error ? err.message : String(err);
      }
      for (const o of adds) if (o.instance === i) failed.add(`${o.layer}:${o.expert}:${i}`);
      failedLoads.push(`${inst.name}: ${message}`);
    }),
  );
  const applied = ops.filter((o) => o.op !== "add-replica" || !failed.has(`${o.layer}:${o.expert}:${o.instance}`));
  const finalShares = sharesAfter(live, applied, shares);
  const next = applyOps(live, applied, finalShares, { newInstance: (id) => instances[id] });
  const placement = { ...next, version: current.version + 1 };
  deps.publish(placement, applied.map(opSummary).join(" ") || "no change");
  return { placement, failedLoads, applied };
}

function opSummary(o: PlacementOp): string {
  return o.op === "add-instance"
    ? "+instance"
    : `${o.op === "add-replica" ? "+" : "-"}${o.layer}:${o.expert}@${o.instance}`;
}

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
