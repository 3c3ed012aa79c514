/**
 * @module Reconcile: tells every ExpertHost the placement may name which experts it is assigned;
 * each unloads the experts of the model it holds beyond them. Run by the Coordinator after a
 * restart (a make-before-break may have been cut between loading and publishing, or between
 * publishing a drain and unloading) and after a failed change, so no host keeps memory for
 * experts that no placement routes to.
 */
import { expertsByInstance } from "./initial-placement";
import type { Placement } from "./placement";
import { hostName, type ExpertRef } from "../experts/protocol";

/** What one reconcile did: per host, the experts it unloaded, or why it could not be asked. */
export interface ReconcileReport {
  at: number;
  version: number;
  unloaded: Record<string, ExpertRef[]>;
  failed: string[];
}

/** The ExpertHost RPC reconcile needs. */
export interface ReconcileTarget {
  reconcile(
    model: string,
    assigned: ExpertRef[],
  ): Promise<{ ok: true; unloaded: ExpertRef[] } | { ok: false; code: string; message: string }>;
}

/**
 * Asks every instance of `p`, and the ones past it up to `maxInstances` (an interrupted
 * add-instance may have loaded one, named as the Coordinator names new instances), to keep only
 * what `p` assigns it. A host that cannot be reached is reported in `failed`; the caller retries.
 */
export async function reconcileHosts(
  p: Placement,
  maxInstances: number,
  host: (name: string) => ReconcileTarget,
): Promise<ReconcileReport> {
  const report: ReconcileReport = { at: Date.now(), version: p.version, unloaded: {}, failed: [] };
  const assigned = expertsByInstance(p);
  const n = Math.max(p.instances.length, maxInstances);
  const names = Array.from({ length: n }, (_, i) => p.instances[i]?.name ?? hostName(p.model, i));
  await Promise.all(
    names.map(async (name, i) => {
      try {
        const r = await host(name).reconcile(p.model, assigned[i] ?? []);
        if (!r.ok) report.failed.push(`${name}: ${r.code}: ${r.message}`);
        else if (r.unloaded.length > 0) report.unloaded[name] = r.unloaded;
      } catch (err) {
        report.failed.push(`${name}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }),
  );
  return report;
}
