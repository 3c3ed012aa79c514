/**
 * The MetricsHub's state: series stored one by one (an ingest writes only what its delta touched),
 * read back after a restart, converted once from the old single-key layout, and series of models
 * and instances that stopped reporting pruned after PRUNE_AFTER_MS (route and layer series kept).
 */
import { describe, expect, it } from "vitest";
import { METRICS } from "../../../src/observability/catalog";
import { HubState, MAX_SLOTS, PRUNE_AFTER_MS, SLOT_MS, type HubStorage } from "../../../src/observability/hub-state";
import { MetricSet, type MetricDelta } from "../../../src/observability/registry";

/** Durable Object storage as a Map, counting the keys each ingest writes. */
function memoryStorage(): HubStorage & { data: Map<string, unknown>; written: string[] } {
  const data = new Map<string, unknown>();
  const written: string[] = [];
  return {
    data,
    written,
    get: async <T>(key: string) => structuredClone(data.get(key)) as T | undefined,
    list: async <T>({ prefix }: { prefix: string }) =>
      new Map([...data].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k, structuredClone(v) as T])),
    put: async (entries: Record<string, unknown>) => {
      const keys = Object.keys(entries);
      if (keys.length > 128) throw new Error("more than 128 keys in one put");
      for (const k of keys) data.set(k, structuredClone(entries[k]));
      written.push(...keys);
    },
    delete: async (keys: string[]) => {
      let n = 0;
      for (const k of keys) n += data.delete(k) ? 1 : 0;
      return n;
    },
  };
}

function delta(model: string, tokens: number, route = "/v1/completions"): MetricDelta {
  const m = new MetricSet();
  m.inc(METRICS.completionTokens, { model }, tokens);
  m.inc(METRICS.generations, { model, finish: "stop" });
  m.inc(METRICS.requests, { route, method: "POST", status: "200" });
  return m.take();
}

const T0 = 1_800_000_000_000;

describe("HubState", () => {
  it("writes only the series a delta touched, and reads them all back after a restart", async () => {
    const storage = memoryStorage();
    const s = await HubState.load(storage, T0);
    await s.ingest(delta("a", 5), T0, T0);
    await s.ingest(delta("b", 7), T0 + 10, T0 + 10);
    storage.written.length = 0;
    await s.ingest(delta("b", 1), T0 + 20, T0 + 20);
    // b's two series, the route's, the current timeline slot and the meta record — nothing of a's.
    expect(storage.written.filter((k) => k.includes('"a"'))).toEqual([]);
    expect(storage.written).toHaveLength(5);

    const again = await HubState.load(storage, T0 + 30);
    expect(again.metrics.counter(METRICS.completionTokens.name, { model: "a" })).toBe(5);
    expect(again.metrics.counter(METRICS.completionTokens.name, { model: "b" })).toBe(8);
    expect(again.flushes).toBe(3);
    expect(again.models).toEqual(["b", "a"]);
    expect(again.timeline.map((t) => t.completionTokens)).toEqual([13]);
  });

  it("prunes the series of a model not reported for the window, keeps route series and live models", async () => {
    const storage = memoryStorage();
    const s = await HubState.load(storage, T0);
    await s.ingest(delta("old", 5), T0, T0);
    await s.ingest(delta("live", 1), T0, T0);
    // "live" keeps reporting; "old" is silent past the window.
    await s.ingest(delta("live", 1), T0 + PRUNE_AFTER_MS / 2, T0 + PRUNE_AFTER_MS / 2);
    const late = T0 + PRUNE_AFTER_MS + 1;
    await s.ingest(delta("live", 1), late, late);
    expect(s.metrics.counter(METRICS.completionTokens.name, { model: "old" })).toBe(0);
    expect(s.metrics.counter(METRICS.completionTokens.name, { model: "live" })).toBe(3);
    const route = { route: "/v1/completions", method: "POST", status: "200" };
    expect(s.metrics.counter(METRICS.requests.name, route)).toBe(4);
    expect(s.models).toEqual(["live"]);
    // Gone from storage too: a restart does not bring them back.
    expect([...storage.data.keys()].filter((k) => k.includes('"old"'))).toEqual([]);
    const again = await HubState.load(storage, late);
    expect(again.metrics.counter(METRICS.completionTokens.name, { model: "old" })).toBe(0);
    expect(again.metrics.counter(METRICS.generations.name, { model: "live", finish: "stop" })).toBe(3);
  });

  it("keeps the newest timeline slots only, in storage too", async () => {
    const storage = memoryStorage();
    const s = await HubState.load(storage, T0);
    for (let i = 0; i < MAX_SLOTS + 5; i++) await s.ingest(delta("a", 1), T0 + i * SLOT_MS, T0 + i * SLOT_MS);
    expect(s.timeline).toHaveLength(MAX_SLOTS);
    expect([...storage.data.keys()].filter((k) => k.startsWith("t:"))).toHaveLength(MAX_SLOTS);
    const again = await HubState.load(storage, T0);
    expect(again.timeline.map((t) => t.t)).toEqual(s.timeline.map((t) => t.t));
  });

  it("converts the old single-key state once", async () => {
    const storage = memoryStorage();
    const m = new MetricSet();
    m.merge(delta("a", 4));
    storage.data.set("state", { metrics: m.toDelta(), models: ["a"], timeline: [], flushes: 9 });
    const s = await HubState.load(storage, T0);
    expect(s.metrics.counter(METRICS.completionTokens.name, { model: "a" })).toBe(4);
    expect(s.flushes).toBe(9);
    expect(storage.data.has("state")).toBe(false);
    const again = await HubState.load(storage, T0);
    expect(again.metrics.counter(METRICS.completionTokens.name, { model: "a" })).toBe(4);
    expect(again.models).toEqual(["a"]);
  });

  it("splits a delta of many series into puts of at most 128 keys", async () => {
    const storage = memoryStorage();
    const s = await HubState.load(storage, T0);
    const m = new MetricSet();
    for (let i = 0; i < 300; i++) m.inc(METRICS.completionTokens, { model: `m${i}` }, 1);
    await s.ingest(m.take(), T0, T0);
    const again = await HubState.load(storage, T0);
    expect(again.metrics.counter(METRICS.completionTokens.name, { model: "m299" })).toBe(1);
  });
});
