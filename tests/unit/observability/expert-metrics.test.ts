/**
 * The expert fan-out's facts reach the isolate's recorder through the platform event sink (experts
 * may not import observability): per-layer fan-out latency and RPCs, failovers by code, each RPC's
 * wait outside the host, and the MoE block's tokens, capacity drops and re-routes — and nothing is
 * recorded when no sink is installed.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { Placement } from "../../../src/coordinator/placement";
import { fanOut, type FanOutTransport } from "../../../src/experts/fan-out";
import type { ExpertForwardResult } from "../../../src/experts/protocol";
import { DEFAULT_RETRY, type RetryConfig } from "../../../src/experts/retry-policy";
import type { Routing } from "../../../src/gating/router";
import { METRICS } from "../../../src/observability/catalog";
import { flushNow, installExpertMetrics } from "../../../src/observability/recorder";
import { MetricSet, type MetricDelta } from "../../../src/observability/registry";
import { expertEvents, flushExpertEventsSoon, setExpertEventSink } from "../../../src/platform/events";

const D = 4;
const FAST: RetryConfig = { ...DEFAULT_RETRY, baseDelayMs: 1, maxDelayMs: 2, rpcTimeoutMs: 100 };

/** Two instances, each expert on both (so a failed call fails over to the other). */
const placement: Placement = {
  model: "m",
  version: 1,
  nLayers: 4,
  nExperts: 2,
  instances: [0, 1].map((id) => ({ id, name: `m/h${id}`, budgetBytes: 1 << 30 })),
  replicas: Array.from({ length: 4 }, () => [0, 1].map(() => [0, 1].map((instance) => ({ instance, share: 0.5 })))),
};

/** 3 tokens, top-2. */
function routing(): Routing {
  return { n: 3, topK: 2, ids: Int32Array.from([0, 1, 1, 0, 0, 1]), weights: new Float32Array(6).fill(0.5) };
}

/** Identity experts; instance 0 fails its first call as `fail` says. */
function transport(fail: ExpertForwardResult | Error | "hang" | null): FanOutTransport {
  let first = true;
  return {
    remote: true,
    call: async (instance, _p, _items, x) => {
      if (instance === 0 && first) {
        first = false;
        if (fail === "hang") return new Promise<never>(() => {});
        if (fail instanceof Error) throw fail;
        if (fail) return fail;
      }
      return { ok: true, y: x.slice() };
    },
  };
}

function hub(): { env: Env; sent: MetricDelta[] } {
  const sent: MetricDelta[] = [];
  const stub = { ingest: async (d: MetricDelta) => void sent.push(d) };
  return { env: { METRICS_HUB: { getByName: () => stub } } as unknown as Env, sent };
}

afterEach(() => setExpertEventSink(null));

describe("expert metrics", () => {
  it("records per-layer fan-out latency, RPCs, failovers by code, tokens and capacity drops", async () => {
    const { env, sent } = hub();
    await flushNow(env);
    sent.length = 0;
    installExpertMetrics();
    const h = new Float32Array(3 * D).fill(1);
    // Instance 0 is the less loaded, so it gets rows first; its failure sends them to instance 1.
    const load = () => ({ recent: [0, 50], inflight: [], at: Date.now() });
    const failModel: ExpertForwardResult = { ok: false, code: "model_error", message: "injected" };
    await fanOut(transport(failModel), placement, 2, routing(), h, D, { retry: FAST, load: load() });
    await fanOut(transport("hang"), placement, 2, routing(), h, D, { retry: FAST, load: load() });
    await fanOut(transport(null), placement, 3, routing(), h, D, { retry: FAST, load: load() });
    // What the MoE block reports (tests/unit/model/families.test.ts checks it does, with real drops).
    expertEvents()?.routed(2, 3, 1);
    expertEvents()?.routed(2, 3, 1);
    expertEvents()?.routed(3, 3, 0);
    expect(await flushNow(env)).toBe(true);
    const m = new MetricSet();
    for (const d of sent) m.merge(d);
    const l2 = { layer: "2" };
    const l3 = { layer: "3" };
    expect(m.counter(METRICS.failovers.name, { layer: "2", code: "model_error" })).toBe(1);
    expect(m.counter(METRICS.failovers.name, { layer: "2", code: "deadline" })).toBe(1);
    expect(m.counter(METRICS.failovers.name, { layer: "3", code: "model_error" })).toBe(0);
    expect(m.counter(METRICS.capacityDrops.name, l2)).toBe(2);
    expect(m.counter(METRICS.capacityDrops.name, l3)).toBe(0);
    expect(m.counter(METRICS.layerTokens.name, l2)).toBe(6);
    expect(m.counter(METRICS.layerTokens.name, l3)).toBe(3);
    // One RPC to the idle instance 0 per layer call; each failed one adds the retry on instance 1.
    expect(m.counter(METRICS.expertRpcs.name, l2)).toBe(4);
    expect(m.counter(METRICS.expertRpcs.name, l3)).toBe(1);
    const fan = sent.flatMap((d) => d.histograms).filter((x) => x.name === METRICS.fanout.name);
    const l2h = fan.find((x) => x.labels.layer === "2")!;
    expect(l2h.count).toBe(2);
    // The hung call waited out its deadline before failing over.
    expect(l2h.sum).toBeGreaterThanOrEqual(FAST.rpcTimeoutMs / 1000 - 0.01);
  });

  it("records capacity re-routes and each RPC's wait outside the host (round trip − the host's time)", async () => {
    const { env, sent } = hub();
    await flushNow(env);
    sent.length = 0;
    installExpertMetrics();
    // A host that answers after 30 ms but says it spent 10 of them inside forward: ~20 ms waited.
    const slow: FanOutTransport = {
      remote: true,
      call: async (_i, _p, _items, x) => {
        await new Promise((r) => setTimeout(r, 30));
        return { ok: true, y: x.slice(), hostMs: 10 };
      },
    };
    const capped: Routing = { ...routing(), rerouted: 2 };
    await fanOut(slow, placement, 1, routing(), new Float32Array(3 * D), D, { retry: FAST });
    expertEvents()?.rerouted(1, capped.rerouted ?? 0);
    expertEvents()?.rerouted(1, 0);
    expect(await flushNow(env)).toBe(true);
    const m = new MetricSet();
    for (const d of sent) m.merge(d);
    expect(m.counter(METRICS.capacityReroutes.name, { layer: "1" })).toBe(2);
    const waits = sent.flatMap((d) => d.histograms).filter((x) => x.name === METRICS.rpcWait.name);
    const count = waits.reduce((n, x) => n + x.count, 0);
    const sum = waits.reduce((n, x) => n + x.sum, 0);
    expect(count).toBeGreaterThanOrEqual(1); // one per instance called
    expect(sum / count).toBeGreaterThanOrEqual(0.015);
    expect(sum / count).toBeLessThan(0.5);
  });

  it("reports nothing when no sink is installed", async () => {
    const { env, sent } = hub();
    await flushNow(env);
    sent.length = 0;
    expect(expertEvents()).toBeNull();
    await fanOut(transport(null), placement, 1, routing(), new Float32Array(3 * D), D, { retry: FAST });
    expect(await flushNow(env)).toBe(false);
    expect(sent).toHaveLength(0);
  });

  it("flushes on request from a Durable Object that ran layers (StageHost), kept alive by waitUntil", async () => {
    const { env, sent } = hub();
    await flushNow(env);
    sent.length = 0;
    flushExpertEventsSoon(env, () => {}); // no sink: nothing happens
    installExpertMetrics();
    expertEvents()?.routed(5, 4, 0);
    const kept: Promise<unknown>[] = [];
    flushExpertEventsSoon(env, (p) => kept.push(p));
    expect(kept).toHaveLength(1);
    await Promise.all(kept);
    const m = new MetricSet();
    for (const d of sent) m.merge(d);
    expect(m.counter(METRICS.layerTokens.name, { layer: "5" })).toBe(4);
  });
});
