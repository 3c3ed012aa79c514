/**
 * The chaos run of issue 12, short form (`npm run chaos` runs it in full): concurrent streams while
 * an ExpertHost fails and another is evicted mid-stream, the Coordinator is evicted during a
 * make-before-break and R2 errors hit an evicted host. 0 client-visible failures where a replica
 * exists, clean 503s with Retry-After where none does, and the undisturbed run's tokens whenever a
 * request completes.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { runChaos, startChaosWorker } from "../../scripts/lib/chaos-lib";

let w: LocalWorker;
beforeAll(async () => {
  w = await startChaosWorker();
});
afterAll(async () => {
  await w?.dispose();
});

describe("chaos under concurrent load", () => {
  it("loses no request where a replica exists and refuses cleanly where none does", async () => {
    // Short form: a replica-only host is waited for 20 s at most (the full run waits 90 s).
    const r = await runChaos(w, { streams: 3, maxTokens: 24, spareWaitMs: 20_000 });
    expect(r.replicated.failures).toEqual([]);
    expect(r.replicated.ok).toBe(r.replicated.requests);
    expect(r.r2.failures).toEqual([]);
    expect(r.r2.ok + r.r2.clean503).toBe(r.r2.requests);
    expect(r.after.ok).toBe(r.after.requests);
  });
});
