/**
 * @module MetricsHub: the one Durable Object that every Worker isolate flushes its metric deltas
 * to (`recorder.ts`). It merges them into cluster-wide totals, keeps a short timeline for the
 * dashboard (tokens/s and TTFT over time), counts re-plans it is shown (the Coordinator keeps
 * only its last reports), and persists all of it so a restart of the hub does not reset counters.
 */
import { DurableObject } from "cloudflare:workers";
import type { ReplanReport } from "../coordinator/coordinator";
import { METRICS } from "./catalog";
import { IsolateLoads, type IsolateLoad, type WorkerLoadTotals } from "./isolate-loads";
import { MetricSet, type MetricDelta } from "./registry";

/** Width of one timeline slot and how many are kept (10 minutes). */
export const SLOT_MS = 2000;
const MAX_SLOTS = 300;
/** Re-plan reports remembered per model to recognise ones already counted. */
const MAX_SEEN_REPLANS = 200;

export interface TimelineSlot {
  /** Slot start (ms since epoch). */
  t: number;
  requests: number;
  refusals: number;
  promptTokens: number;
  completionTokens: number;
  ttftSum: number;
  ttftCount: number;
}

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

interface Persisted {
  metrics: MetricDelta;
  models: string[];
  timeline: TimelineSlot[];
  flushes: number;
  seen: Record<string, string[]>;
}

const REPLANS = {
  name: "edge_moe_replans_total",
  help: "Re-plans the Coordinator ran, by model, trigger and outcome.",
  type: "counter",
} as const;
const REPLICA_OPS = {
  name: "edge_moe_placement_ops_total",
  help: "Placement changes applied by re-plans, by model and op (add-replica = a copy).",
  type: "counter",
} as const;
const LOAD_FAILURES = {
  name: "edge_moe_replica_load_failures_total",
  help: "Replica loads that failed during a re-plan, by model.",
  type: "counter",
} as const;
export const HUB_DEFS = [REPLANS, REPLICA_OPS, LOAD_FAILURES];

export class MetricsHub extends DurableObject<Env> {
  #metrics = new MetricSet();
  #models: string[] = [];
  #timeline: TimelineSlot[] = [];
  #flushes = 0;
  #seen = new Map<string, string[]>();
  #startedAt = Date.now();
  // Not persisted: a gauge is current state, and busy isolates re-report within a heartbeat.
  #loads = new IsolateLoads();

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    void ctx.blockConcurrencyWhile(async () => {
      const saved = await ctx.storage.get<Persisted>("state");
      if (!saved) return;
      this.#metrics.merge(saved.metrics);
      this.#models = saved.models;
      this.#timeline = saved.timeline;
      this.#flushes = saved.flushes;
      this.#seen = new Map(Object.entries(saved.seen));
    });
  }

  /** Folds one isolate's delta in (called from the isolate's waitUntil, never on a request's path). */
  async ingest(delta: MetricDelta, at: number, load?: IsolateLoad): Promise<void> {
    if (load) this.#loads.report(load, Date.now());
    if (delta.counters.length === 0 && delta.histograms.length === 0) return; // a load heartbeat only
    this.#metrics.merge(delta);
    this.#flushes++;
    const slot = this.#slot(at);
    for (const c of delta.counters) {
      if (c.name === METRICS.requests.name) slot.requests += c.value;
      else if (c.name === METRICS.refusals.name) slot.refusals += c.value;
      else if (c.name === METRICS.promptTokens.name) slot.promptTokens += c.value;
      else if (c.name === METRICS.completionTokens.name) slot.completionTokens += c.value;
      if (c.labels.model && c.name === METRICS.generations.name) this.#noteModel(c.labels.model);
    }
    for (const h of delta.histograms) {
      if (h.name !== METRICS.ttft.name) continue;
      slot.ttftSum += h.sum;
      slot.ttftCount += h.count;
    }
    await this.#save();
  }

  /** Counts re-plan reports not seen before (a scrape or dashboard read passes the Coordinator's last ones). */
  async noteReplans(model: string, reports: ReplanReport[]): Promise<void> {
    const seen = this.#seen.get(model) ?? [];
    const known = new Set(seen);
    let changed = false;
    for (const r of reports) {
      const key = `${r.at}:${r.trigger}:${r.fromVersion}:${r.toVersion}`;
      if (known.has(key)) continue;
      known.add(key);
      seen.push(key);
      changed = true;
      this.#metrics.inc(REPLANS, { model, trigger: r.trigger, reason: r.reason });
      for (const op of r.ops) this.#metrics.inc(REPLICA_OPS, { model, op: op.op });
      if (r.failedLoads.length) this.#metrics.inc(LOAD_FAILURES, { model }, r.failedLoads.length);
    }
    if (!changed) return;
    this.#seen.set(model, seen.slice(-MAX_SEEN_REPLANS));
    this.#noteModel(model);
    await this.#save();
  }

  async snapshot(): Promise<HubSnapshot> {
    return {
      metrics: this.#metrics.toDelta(),
      models: this.#models,
      timeline: this.#timeline,
      flushes: this.#flushes,
      startedAt: this.#startedAt,
      workerLoad: this.#loads.totals(Date.now()),
    };
  }

  #noteModel(model: string): void {
    if (this.#models[0] === model) return;
    this.#models = [model, ...this.#models.filter((m) => m !== model)].slice(0, 32);
  }

  #slot(at: number): TimelineSlot {
    const t = Math.floor(at / SLOT_MS) * SLOT_MS;
    const last = this.#timeline[this.#timeline.length - 1];
    if (last && last.t === t) return last;
    if (last && last.t > t) return last; // a late flush from a slow isolate joins the newest slot
    const slot: TimelineSlot = {
      t,
      requests: 0,
      refusals: 0,
      promptTokens: 0,
      completionTokens: 0,
      ttftSum: 0,
      ttftCount: 0,
    };
    this.#timeline = [...this.#timeline.slice(-(MAX_SLOTS - 1)), slot];
    return slot;
  }

  async #save(): Promise<void> {
    const state: Persisted = {
      metrics: this.#metrics.toDelta(),
      models: this.#models,
      timeline: this.#timeline,
      flushes: this.#flushes,
      seen: Object.fromEntries(this.#seen),
    };
    await this.ctx.storage.put("state", state);
  }
}
