/**
 * @module MetricsHub: the one Durable Object that every Worker isolate flushes its metric deltas
 * to (`recorder.ts`). It merges them into cluster-wide totals, keeps a short timeline for the
 * dashboard (tokens/s and TTFT over time), and persists all of it so a restart of the hub does not
 * reset counters — series by series, pruning models and instances that stopped reporting
 * (./hub-state.ts). Re-plan counters are not here: each Coordinator keeps its own in SQLite and a
 * scrape reads them (`scrape.ts`).
 */
import { DurableObject } from "cloudflare:workers";
import { HubState, type TimelineSlot } from "./hub-state";
import { IsolateLoads, type IsolateLoad, type WorkerLoadTotals } from "./isolate-loads";
import type { MetricDelta } from "./registry";

export { SLOT_MS, type TimelineSlot } from "./hub-state";

export interface HubSnapshot {
  metrics: MetricDelta;
  /** Models that generated anything, most recent first. */
  models: string[];
  timeline: TimelineSlot[];
  flushes: number;
  startedAt: number;
  /** In-flight and queued generations summed over the isolates that reported recently. */
  workerLoad: WorkerLoadTotals;
}

export class MetricsHub extends DurableObject<Env> {
  #state: HubState | null = null;
  #startedAt = Date.now();
  // Not persisted: a gauge is current state, and busy isolates re-report within a heartbeat.
  #loads = new IsolateLoads();

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    void ctx.blockConcurrencyWhile(async () => {
      this.#state = await HubState.load(ctx.storage, Date.now());
    });
  }

  /** Folds one isolate's delta in (called from the isolate's waitUntil, never on a request's path). */
  async ingest(delta: MetricDelta, at: number, load?: IsolateLoad): Promise<void> {
    if (load) this.#loads.report(load, Date.now());
    if (delta.counters.length === 0 && delta.histograms.length === 0) return; // a load heartbeat only
    await this.#state!.ingest(delta, at, Date.now());
  }

  async snapshot(): Promise<HubSnapshot> {
    const s = this.#state!;
    return {
      metrics: s.metrics.toDelta(),
      models: s.models,
      timeline: s.timeline,
      flushes: s.flushes,
      startedAt: this.#startedAt,
      workerLoad: this.#loads.totals(Date.now()),
    };
  }
}
