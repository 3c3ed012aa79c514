/**
 * The hosts' keep-alive in workerd (src/platform/keep-alive.ts): local workerd evicts a Durable
 * Object after ~10–13 s without an incoming event (README, KV caches), which made the hosts of a
 * slow request reload their weights from R2 between tokens. A StageHost, HeadHost or ExpertHost that
 * served a call within HOST_KEEPALIVE_MS keeps its weights through a longer idle gap, and after the
 * window it stops waking itself and is evicted as before.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, makeSmallChatModel, postJson, startWithModels } from "./helpers";

const WINDOW_MS = 20_000;
/** Past local workerd's idle eviction (~10–13 s). */
const IDLE_GAP_MS = 16_000;
/** Window + one keep-alive tick + the eviction delay + slack: an unkept host is gone by then. */
const GONE_AFTER_MS = WINDOW_MS + 30_000;

interface Peak {
  bytesHeldPeak: number;
  wasmMemoryPeakBytes: number;
}
interface Hosts {
  hosts: { name: string; assigned: unknown[]; bytesLoaded: number; budgetBytes: number; peak: Peak }[];
  stages: { name: string; bytesHeld: number; kvBytesPeak: number; wasmMemoryBytes: number; peak: Peak }[];
  heads: { name: string; bytesLoaded: number; budgetBytes: number; wasmMemoryBytes: number; peak: Peak }[];
  drivers: { name: string; driver: { weightBytes: number; peak: Peak } | null }[];
  worker: { weightBytes: number; kvBytesPeak: number; wasmMemoryBytes: number; peak: Peak };
}

const sleepUntil = (t: number) => new Promise((r) => setTimeout(r, Math.max(0, t - Date.now())));

describe("host keep-alive", () => {
  let w: LocalWorker;
  beforeAll(async () => {
    w = await startWithModels(
      { chat: makeSmallChatModel() },
      { PIPELINE_STAGES: "2", HEAD_SHARDS: "2", HOST_KEEPALIVE_MS: String(WINDOW_MS), DENSE_QUANT: "f32" },
    );
  });
  afterAll(() => w?.dispose());

  async function hosts(): Promise<Hosts> {
    const res = await w.fetch("/admin/hosts?model=chat", { headers: ADMIN });
    expect(res.status).toBe(200);
    return (await res.json()) as Hosts;
  }

  it("keeps every host that served a call through an idle gap, then lets it go", { timeout: 120_000 }, async () => {
    const r = await postJson(w, "/v1/completions", { model: "chat", prompt: [1, 415, 2936], max_tokens: 4 });
    expect(r.status).toBe(200);
    const served = Date.now(); // no host served a call after this
    await sleepUntil(served + IDLE_GAP_MS);
    const kept = await hosts();
    expect(kept.stages).toHaveLength(2);
    expect(kept.heads).toHaveLength(2);
    for (const s of kept.stages) expect(s.bytesHeld, s.name).toBeGreaterThan(0);
    for (const h of kept.heads) expect(h.bytesLoaded, h.name).toBeGreaterThan(0);
    const used = kept.hosts.filter((h) => h.assigned.length > 0);
    expect(used.length).toBeGreaterThan(0);
    for (const h of used) expect(h.bytesLoaded, h.name).toBeGreaterThan(0);
    // Every instance reports its high-water marks (README, "Peak memory per instance").
    for (const s of kept.stages) {
      expect(s.peak.bytesHeldPeak, s.name).toBe(s.bytesHeld + s.kvBytesPeak);
      expect(s.peak.wasmMemoryPeakBytes, s.name).toBe(s.wasmMemoryBytes);
    }
    for (const h of [...kept.heads, ...used]) {
      expect(h.peak.bytesHeldPeak, h.name).toBe(h.bytesLoaded);
      expect(h.peak.bytesHeldPeak, h.name).toBeLessThanOrEqual(h.budgetBytes);
      expect(h.peak.wasmMemoryPeakBytes, h.name).toBeGreaterThan(h.bytesLoaded);
    }
    const drove = kept.drivers.filter((d) => d.driver !== null);
    expect(drove).toHaveLength(1);
    expect(drove[0].driver?.peak.wasmMemoryPeakBytes).toBeGreaterThan(0);
    expect(kept.worker.peak.bytesHeldPeak).toBe(kept.worker.weightBytes + kept.worker.kvBytesPeak);
    expect(kept.worker.peak.wasmMemoryPeakBytes).toBe(kept.worker.wasmMemoryBytes);

    // No call since `served`: after the window the hosts stop waking themselves and are evicted.
    await sleepUntil(served + GONE_AFTER_MS);
    const gone = await hosts();
    for (const s of gone.stages) expect(s.bytesHeld, s.name).toBe(0);
    for (const h of gone.heads) expect(h.bytesLoaded, h.name).toBe(0);
    for (const h of gone.hosts) expect(h.bytesLoaded, h.name).toBe(0);
  });
});
