/**
 * @module Load telemetry from the Worker to the Coordinator: counted on the hot path (a few integer
 * adds per routed token), sent off it — at most every LOAD_FLUSH_MS per isolate and model, from
 * `ctx.waitUntil`. The Coordinator answers a report with its placement version; a newer one than
 * the counts were routed with makes the isolate re-check its placement at once instead of within
 * PLACEMENT_CHECK_MS, so a replica made for a hot spot is used within one report interval.
 */
import type { Placement } from "../coordinator/placement";
import { markPlacementStale } from "./placement-cache";
import type { LoadReport } from "./protocol";

export const LOAD_FLUSH_MS = 250;

interface PendingLoad extends LoadReport {
  lastFlush: number;
  any: boolean;
  scheduled: boolean;
}

const pendingLoads = new Map<string, PendingLoad>();

function pendingFor(placement: Placement): PendingLoad {
  let p = pendingLoads.get(placement.model);
  if (!p || p.nExperts !== placement.nExperts || p.nLayers !== placement.nLayers) {
    p = {
      model: placement.model,
      nLayers: placement.nLayers,
      nExperts: placement.nExperts,
      counts: new Array(placement.nLayers * placement.nExperts).fill(0),
      calls: new Array(placement.nLayers).fill(0),
      instanceRows: {},
      version: placement.version,
      lastFlush: Date.now(),
      any: false,
      scheduled: false,
    };
    pendingLoads.set(placement.model, p);
  }
  return p;
}

/**
 * Counts one layer call: `ids` are its routed expert ids ([n, topK], -1 = dropped slot, not
 * counted) at placement row `row`; `rowsByInstance` the rows each instance served.
 */
export function recordLoad(
  placement: Placement,
  row: number,
  ids: ArrayLike<number>, // [n, topK]
  rowsByInstance: ReadonlyMap<number, number>,
): void {
  const report = pendingFor(placement);
  const base = row * placement.nExperts;
  for (let i = 0; i < ids.length; i++) if (ids[i] >= 0) report.counts[base + ids[i]]++;
  if (report.calls && row < report.calls.length) report.calls[row]++;
  for (const [instance, rows] of rowsByInstance) {
    report.instanceRows[instance] = (report.instanceRows[instance] ?? 0) + rows;
  }
  report.version = placement.version;
  report.any = true;
}

/** Sends the load counted so far to the Coordinator when LOAD_FLUSH_MS have passed (never blocks the caller). */
export function flushLoad(env: Env, model: string, waitUntil: (p: Promise<unknown>) => void, force = false): void {
  const p = pendingLoads.get(model);
  if (!p?.any) return;
  const now = Date.now();
  if (!force && now - p.lastFlush < LOAD_FLUSH_MS) return;
  const { nLayers, nExperts, counts, calls, instanceRows, version } = p;
  const report: LoadReport = { model, nLayers, nExperts, counts, calls, instanceRows, version };
  p.counts = new Array(p.nLayers * p.nExperts).fill(0);
  p.calls = new Array(p.nLayers).fill(0);
  p.instanceRows = {};
  p.lastFlush = now;
  p.any = false;
  waitUntil(
    env.COORDINATOR.getByName(model)
      .reportLoad(report)
      .then((live) => {
        if (typeof live === "number" && live > version) markPlacementStale(model);
      })
      .catch((err: unknown) => {
        console.warn(`load report for ${model} lost: ${err instanceof Error ? err.message : String(err)}`);
      }),
  );
}

/**
 * At the end of a request: make sure what it counted is sent within LOAD_FLUSH_MS even if no
 * other request comes (one delayed flush per isolate and model at a time).
 */
export function flushLoadSoon(env: Env, model: string, waitUntil: (p: Promise<unknown>) => void): void {
  const p = pendingLoads.get(model);
  if (!p?.any || p.scheduled) return;
  p.scheduled = true;
  const wait = Math.max(0, LOAD_FLUSH_MS - (Date.now() - p.lastFlush));
  waitUntil(
    new Promise<void>((resolve) =>
      setTimeout(() => {
        p.scheduled = false;
        flushLoad(env, model, waitUntil, true);
        resolve();
      }, wait),
    ),
  );
}
