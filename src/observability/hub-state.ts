/**
 * @module What the MetricsHub keeps (./metrics-hub.ts): the merged totals, the dashboard's
 * timeline and the models that served traffic — and how it stores them. Each series is stored
 * under its own key with the time it was last reported, so an ingest writes only the series its
 * delta touched, the current timeline slot and a small meta record (not the whole state, which
 * grows with models × layers × routes). Series of a model or instance that stopped reporting are
 * pruned after PRUNE_AFTER_MS.
 *
 * Why an hour: a model or instance unheard of for that long has been deleted, renamed or scaled
 * away, yet every scrape would still export its frozen series and the hub would keep storing them
 * (instance and model ids accumulate without bound over re-uploads and tests). An hour is six times
 * the dashboard's 10-minute timeline and twelve times Prometheus' default 5-minute lookback, so a
 * live model quieter than that only loses its series until its next request; Prometheus reads the
 * series coming back from zero as a counter reset, which `rate()` and `increase()` handle.
 * Series without a model or instance label (routes, layers) are bounded by the code and kept.
 */
import { METRICS } from "./catalog";
import { MetricSet, type MetricDelta } from "./registry";

/** Width of one timeline slot and how many are kept (10 minutes). */
export const SLOT_MS = 2000;
export const MAX_SLOTS = 300;
/** Series of a model or instance not reported for this long are dropped (see the module comment). */
export const PRUNE_AFTER_MS = 60 * 60_000;
/** How often an ingest looks for series to prune (a scan of every series). */
const PRUNE_EVERY_MS = 60_000;
/** Labels that name something that can go away. */
const PRUNED_LABELS = ["model", "instance"] as const;
/** Keys one storage call may take (the Durable Object storage API's limit). */
const KEYS_PER_CALL = 128;

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

/** The part of Durable Object storage the hub uses (a plain Map stands in for it in tests). */
export interface HubStorage {
  get<T>(key: string): Promise<T | undefined>;
  list<T>(options: { prefix: string }): Promise<Map<string, T>>;
  put(entries: Record<string, unknown>): Promise<void>;
  delete(keys: string[]): Promise<number>;
}

interface StoredSeries {
  delta: MetricDelta;
  seenAt: number;
}

interface Meta {
  models: { id: string; seenAt: number }[];
  flushes: number;
}

/** The single-key layout written before series were stored one by one (read once, then removed). */
interface LegacyState {
  metrics: MetricDelta;
  models: string[];
  timeline: TimelineSlot[];
  flushes: number;
}

const SERIES = "s:";
const SLOT = "t:";
const META = "meta";
const LEGACY = "state";

export class HubState {
  readonly metrics = new MetricSet();
  /** Series key → when a delta last carried it (the hub's clock). */
  readonly #seenAt = new Map<string, number>();
  /** Models that generated anything, most recent first, with when. */
  #models: { id: string; seenAt: number }[] = [];
  timeline: TimelineSlot[] = [];
  flushes = 0;
  #prunedAt = 0;

  private constructor(private readonly storage: HubStorage) {}

  /** Reads what was stored (converting the old single-key layout once). */
  static async load(storage: HubStorage, now: number): Promise<HubState> {
    const s = new HubState(storage);
    const legacy = await storage.get<LegacyState>(LEGACY);
    if (legacy) {
      s.metrics.merge(legacy.metrics);
      for (const key of MetricSet.keysOf(legacy.metrics)) s.#seenAt.set(key, now);
      s.#models = legacy.models.map((id) => ({ id, seenAt: now }));
      s.timeline = legacy.timeline;
      s.flushes = legacy.flushes;
      await s.#write([...s.#seenAt.keys()], s.timeline, []);
      await storage.delete([LEGACY]);
      return s;
    }
    for (const [key, v] of await storage.list<StoredSeries>({ prefix: SERIES })) {
      s.metrics.merge(v.delta);
      s.#seenAt.set(key.slice(SERIES.length), v.seenAt);
    }
    const meta = await storage.get<Meta>(META);
    s.#models = meta?.models ?? [];
    s.flushes = meta?.flushes ?? 0;
    s.timeline = [...(await storage.list<TimelineSlot>({ prefix: SLOT })).values()].sort((a, b) => a.t - b.t);
    return s;
  }

  get models(): string[] {
    return this.#models.map((m) => m.id);
  }

  /** Folds one isolate's delta in and stores what it changed. */
  async ingest(delta: MetricDelta, at: number, now: number): Promise<void> {
    this.metrics.merge(delta);
    const touched = MetricSet.keysOf(delta);
    for (const key of touched) this.#seenAt.set(key, now);
    this.flushes++;
    const slot = this.#slot(at);
    for (const c of delta.counters) {
      if (c.name === METRICS.requests.name) slot.requests += c.value;
      else if (c.name === METRICS.refusals.name) slot.refusals += c.value;
      else if (c.name === METRICS.promptTokens.name) slot.promptTokens += c.value;
      else if (c.name === METRICS.completionTokens.name) slot.completionTokens += c.value;
      if (c.labels.model && c.name === METRICS.generations.name) this.#noteModel(c.labels.model, now);
    }
    for (const h of delta.histograms) {
      if (h.name !== METRICS.ttft.name) continue;
      slot.ttftSum += h.sum;
      slot.ttftCount += h.count;
    }
    const gone = now - this.#prunedAt >= PRUNE_EVERY_MS ? this.prune(now) : [];
    const dropped = this.#dropOldSlots();
    await this.#write(touched, [slot], [...gone.map((k) => SERIES + k), ...dropped.map((t) => SLOT + t)]);
  }

  /**
   * Drops the series of models and instances not reported for PRUNE_AFTER_MS, and those models
   * from the model list; returns the dropped series' keys (the caller deletes them from storage).
   */
  prune(now: number): string[] {
    this.#prunedAt = now;
    const cutoff = now - PRUNE_AFTER_MS;
    const gone: string[] = [];
    for (const [key, labels] of [...this.metrics.series()]) {
      if (!PRUNED_LABELS.some((l) => l in labels)) continue;
      if ((this.#seenAt.get(key) ?? 0) >= cutoff) continue;
      this.metrics.drop(key);
      this.#seenAt.delete(key);
      gone.push(key);
    }
    this.#models = this.#models.filter((m) => m.seenAt >= cutoff);
    return gone;
  }

  #noteModel(model: string, now: number): void {
    this.#models = [{ id: model, seenAt: now }, ...this.#models.filter((m) => m.id !== model)].slice(0, 32);
  }

  #slot(at: number): TimelineSlot {
    const t = Math.floor(at / SLOT_MS) * SLOT_MS;
    const last = this.timeline[this.timeline.length - 1];
    if (last && last.t >= t) return last; // a late flush from a slow isolate joins the newest slot
    const slot: TimelineSlot = {
      t,
      requests: 0,
      refusals: 0,
      promptTokens: 0,
      completionTokens: 0,
      ttftSum: 0,
      ttftCount: 0,
    };
    this.timeline.push(slot);
    return slot;
  }

  /** Keeps the newest MAX_SLOTS slots; returns the start times of those dropped. */
  #dropOldSlots(): number[] {
    const over = this.timeline.length - MAX_SLOTS;
    return over > 0 ? this.timeline.splice(0, over).map((s) => s.t) : [];
  }

  async #write(series: string[], slots: TimelineSlot[], deletes: string[]): Promise<void> {
    const entries: [string, unknown][] = [];
    for (const key of new Set(series)) {
      const stored: StoredSeries = { delta: this.metrics.deltaOf(key), seenAt: this.#seenAt.get(key) ?? 0 };
      entries.push([SERIES + key, stored]);
    }
    for (const slot of slots) entries.push([SLOT + slot.t, slot]);
    entries.push([META, { models: this.#models, flushes: this.flushes } satisfies Meta]);
    for (let i = 0; i < entries.length; i += KEYS_PER_CALL)
      await this.storage.put(Object.fromEntries(entries.slice(i, i + KEYS_PER_CALL)));
    for (let i = 0; i < deletes.length; i += KEYS_PER_CALL)
      await this.storage.delete(deletes.slice(i, i + KEYS_PER_CALL));
  }
}
