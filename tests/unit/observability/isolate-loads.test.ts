/**
 * The in-flight gauge across isolates: the hub sums each isolate's latest report, a newer report
 * replaces an older one, zero removes an isolate, and a report that stopped arriving ages out.
 */
import { describe, expect, it, vi } from "vitest";
import { IsolateLoads, LOAD_HEARTBEAT_MS, LOAD_TTL_MS } from "../../../src/observability/isolate-loads";
import { flushNow, scheduleFlush, setWorkerLoad } from "../../../src/observability/recorder";
import type { IsolateLoad } from "../../../src/observability/isolate-loads";

describe("IsolateLoads", () => {
  it("sums the latest report of each fresh isolate", () => {
    const t = new IsolateLoads();
    t.report({ isolate: "a", inflight: 3, queued: 1 }, 0);
    t.report({ isolate: "b", inflight: 3, queued: 0 }, 100);
    t.report({ isolate: "a", inflight: 2, queued: 0 }, 200); // replaces a's first report
    expect(t.totals(300)).toEqual({ inflight: 5, queued: 0, isolates: 2 });
    t.report({ isolate: "b", inflight: 0, queued: 0 }, 400);
    expect(t.totals(500)).toEqual({ inflight: 2, queued: 0, isolates: 1 });
  });

  it("forgets an isolate that stopped reporting (evicted mid-request)", () => {
    const t = new IsolateLoads();
    t.report({ isolate: "gone", inflight: 4, queued: 2 }, 0);
    t.report({ isolate: "live", inflight: 1, queued: 0 }, LOAD_TTL_MS);
    expect(t.totals(LOAD_TTL_MS)).toEqual({ inflight: 5, queued: 2, isolates: 2 });
    expect(t.totals(LOAD_TTL_MS + 1)).toEqual({ inflight: 1, queued: 0, isolates: 1 });
  });
});

describe("recorder: the isolate's load report", () => {
  it("is sent with the next flush, re-sent while busy at the heartbeat, and not otherwise", async () => {
    vi.useFakeTimers();
    try {
      const reports: (IsolateLoad | undefined)[] = [];
      const hub = { ingest: async (_d: unknown, _at: number, load?: IsolateLoad) => void reports.push(load) };
      const env = { METRICS_HUB: { getByName: () => hub } } as unknown as Env;
      setWorkerLoad(2, 1);
      expect(await flushNow(env)).toBe(true);
      expect(reports.at(-1)).toMatchObject({ inflight: 2, queued: 1 });
      expect(await flushNow(env)).toBe(false); // nothing new, heartbeat not due
      vi.advanceTimersByTime(LOAD_HEARTBEAT_MS);
      scheduleFlush(env, undefined);
      await vi.advanceTimersByTimeAsync(2000);
      expect(reports).toHaveLength(2);
      setWorkerLoad(0, 0);
      expect(await flushNow(env)).toBe(true);
      expect(reports.at(-1)).toMatchObject({ inflight: 0, queued: 0 });
      vi.advanceTimersByTime(LOAD_HEARTBEAT_MS * 2);
      expect(await flushNow(env)).toBe(false); // an idle isolate sends no heartbeat
      expect(new Set(reports.map((r) => r?.isolate)).size).toBe(1);
    } finally {
      vi.useRealTimers();
    }
  });
});
