/**
 * @module The Worker's in-flight and queued generations as cluster-wide gauges. A gauge is a
 * current value, not a delta, so it cannot be merged like the counters (`registry.ts`): two
 * isolates each holding 3 requests are 6, and an isolate that was evicted mid-request must stop
 * counting. So each isolate sends its own current values under a random isolate id with every
 * flush (and re-sends them while non-zero at least every LOAD_HEARTBEAT_MS, `recorder.ts`); the
 * MetricsHub keeps the latest report per isolate, stamped with its own clock on receipt, and a
 * scrape sums the reports younger than LOAD_TTL_MS. A zero report removes the isolate, so an idle
 * deployment holds no entries; a report that stopped arriving ages out.
 */

/** What one isolate reports: its generations holding a slot and those waiting for one. */
export interface IsolateLoad {
  isolate: string;
  inflight: number;
  queued: number;
}

export interface WorkerLoadTotals {
  inflight: number;
  queued: number;
  /** Isolates whose fresh report is non-zero. */
  isolates: number;
}

/** A busy isolate re-reports at least this often, so a live stream never ages out. */
export const LOAD_HEARTBEAT_MS = 5000;
/** Three missed heartbeats: the isolate is gone (evicted, crashed) and its values no longer count. */
export const LOAD_TTL_MS = 3 * LOAD_HEARTBEAT_MS;
/** Bound on the table: more isolates than this reporting at once drops the stalest. */
const MAX_ISOLATES = 4096;

export class IsolateLoads {
  #latest = new Map<string, { inflight: number; queued: number; at: number }>();

  /** Records an isolate's current values as of `now` (the hub's clock). */
  report(load: IsolateLoad, now: number): void {
    const inflight = Math.max(0, Math.floor(load.inflight) || 0);
    const queued = Math.max(0, Math.floor(load.queued) || 0);
    this.#latest.delete(load.isolate); // re-insert: the map stays ordered by last report
    if (inflight === 0 && queued === 0) return;
    this.#latest.set(load.isolate, { inflight, queued, at: now });
    if (this.#latest.size > MAX_ISOLATES) this.#latest.delete(this.#latest.keys().next().value as string);
  }

  /** Sums the fresh reports and forgets the stale ones. */
  totals(now: number): WorkerLoadTotals {
    const t: WorkerLoadTotals = { inflight: 0, queued: 0, isolates: 0 };
    for (const [id, r] of this.#latest) {
      if (now - r.at > LOAD_TTL_MS) {
        this.#latest.delete(id);
        continue;
      }
      t.inflight += r.inflight;
      t.queued += r.queued;
      t.isolates++;
    }
    return t;
  }
}
