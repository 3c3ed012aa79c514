/**
 * @module A mergeable set of counters and histograms. Each Worker isolate records into its own
 * `MetricSet` (isolates share no memory), hands the accumulated values to the MetricsHub as a
 * plain-JSON `MetricDelta` and starts again from zero; the hub merges deltas into one `MetricSet`
 * with the same code. Histograms keep per-bucket counts (not cumulative) so deltas add up.
 */
import type { MetricDef } from "./catalog";

export type Labels = Record<string, string>;

export interface CounterSample {
  name: string;
  labels: Labels;
  value: number;
}

export interface HistogramSample {
  name: string;
  labels: Labels;
  /** Upper bounds of the buckets (the last, implicit bucket is +Inf). */
  bounds: number[];
  /** Observations per bucket, not cumulative: counts.length === bounds.length + 1. */
  counts: number[];
  sum: number;
  count: number;
}

/** What an isolate sends to the hub: everything recorded since its last successful flush. */
export interface MetricDelta {
  counters: CounterSample[];
  histograms: HistogramSample[];
}

/** Series key: the metric name and its labels in a fixed order. */
export function seriesKey(name: string, labels: Labels): string {
  const keys = Object.keys(labels).sort();
  return `${name}{${keys.map((k) => `${k}=${JSON.stringify(labels[k])}`).join(",")}}`;
}

export class MetricSet {
  #counters = new Map<string, CounterSample>();
  #histograms = new Map<string, HistogramSample>();

  get isEmpty(): boolean {
    return this.#counters.size === 0 && this.#histograms.size === 0;
  }

  inc(def: MetricDef, labels: Labels, by = 1): void {
    if (def.type !== "counter") throw new Error(`${def.name} is a ${def.type}, not a counter`);
    if (!(by >= 0) || !Number.isFinite(by)) return; // counters only go up; ignore NaN and negatives
    this.#addCounter(def.name, labels, by);
  }

  observe(def: MetricDef, labels: Labels, value: number): void {
    if (def.type !== "histogram" || !def.buckets) throw new Error(`${def.name} is not a histogram`);
    if (!Number.isFinite(value)) return;
    const h = this.#histogram(def.name, labels, def.buckets);
    let i = h.bounds.findIndex((b) => value <= b);
    if (i < 0) i = h.bounds.length;
    h.counts[i]++;
    h.sum += value;
    h.count++;
  }

  /** Adds another set's values (the hub folding in an isolate's flush). */
  merge(delta: MetricDelta): void {
    for (const c of delta.counters) this.#addCounter(c.name, c.labels, c.value);
    for (const d of delta.histograms) {
      const h = this.#histogram(d.name, d.labels, d.bounds);
      if (h.bounds.length !== d.bounds.length || h.bounds.some((b, i) => b !== d.bounds[i])) {
        // An isolate running an older deploy with other buckets: keep count and sum, fold the
        // distribution into +Inf rather than mislabel it.
        h.counts[h.bounds.length] += d.count;
      } else {
        for (let i = 0; i < h.counts.length; i++) h.counts[i] += d.counts[i] ?? 0;
      }
      h.sum += d.sum;
      h.count += d.count;
    }
  }

  /** The values as plain JSON (a copy). */
  toDelta(): MetricDelta {
    return {
      counters: [...this.#counters.values()].map((c) => ({ ...c, labels: { ...c.labels } })),
      histograms: [...this.#histograms.values()].map((h) => ({
        ...h,
        labels: { ...h.labels },
        bounds: [...h.bounds],
        counts: [...h.counts],
      })),
    };
  }

  /** Returns the values recorded so far and starts again from zero (an isolate's flush). */
  take(): MetricDelta {
    const d = this.toDelta();
    this.#counters.clear();
    this.#histograms.clear();
    return d;
  }

  /** The keys of the series a delta carries (the ones a merge of it touches). */
  static keysOf(delta: MetricDelta): string[] {
    return [...delta.counters, ...delta.histograms].map((x) => seriesKey(x.name, x.labels));
  }

  /** Every series: its key and labels. */
  *series(): IterableIterator<[string, Labels]> {
    for (const [k, c] of this.#counters) yield [k, c.labels];
    for (const [k, h] of this.#histograms) yield [k, h.labels];
  }

  /** One series alone, as a delta (a copy); empty when there is none under `key`. */
  deltaOf(key: string): MetricDelta {
    const c = this.#counters.get(key);
    const h = this.#histograms.get(key);
    return {
      counters: c ? [{ ...c, labels: { ...c.labels } }] : [],
      histograms: h ? [{ ...h, labels: { ...h.labels }, bounds: [...h.bounds], counts: [...h.counts] }] : [],
    };
  }

  /** Forgets one series. */
  drop(key: string): void {
    this.#counters.delete(key);
    this.#histograms.delete(key);
  }

  counter(name: string, labels: Labels): number {
    return this.#counters.get(seriesKey(name, labels))?.value ?? 0;
  }

  #addCounter(name: string, labels: Labels, by: number): void {
    const key = seriesKey(name, labels);
    const c = this.#counters.get(key);
    if (c) c.value += by;
    else this.#counters.set(key, { name, labels: { ...labels }, value: by });
  }

  #histogram(name: string, labels: Labels, bounds: readonly number[]): HistogramSample {
    const key = seriesKey(name, labels);
    let h = this.#histograms.get(key);
    if (!h) {
      h = {
        name,
        labels: { ...labels },
        bounds: [...bounds],
        counts: new Array<number>(bounds.length + 1).fill(0),
        sum: 0,
        count: 0,
      };
      this.#histograms.set(key, h);
    }
    return h;
  }
}
