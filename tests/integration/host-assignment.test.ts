/**
 * ExpertHosts serve only the experts they are assigned, the assignment lives in their SQLite (it
 * survives an evicted isolate), and `reconcile` replaces it, unloading what it no longer holds. An
 * expert whose only host refuses it — or is stuck past EXPERT_RPC_TIMEOUT_MS — answers a clean 503
 * with Retry-After.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, FIXTURES, postJson, startWithModels } from "./helpers";

interface Ref {
  layer: number;
  expert: number;
}
interface Hosts {
  hosts: { name: string; loaded: Ref[]; assigned: Ref[] }[];
}
interface Status {
  placement: { version: number; instances: { name: string }[]; replicas: { instance: number }[][][] };
}

const PROMPT = [29, 192, 173, 88, 189, 139, 156, 188, 151, 153];
const GOLDEN = [209, 91, 45, 118, 199, 228, 217, 157];
const DEADLINE_MS = 1500;
const key = (r: Ref) => `${r.layer}:${r.expert}`;

let w: LocalWorker;
const hosts = async () => (await (await w.fetch("/admin/hosts?model=tiny", { headers: ADMIN })).json()) as Hosts;
const status = async () => (await (await w.fetch("/admin/placement?model=tiny", { headers: ADMIN })).json()) as Status;
const host = async (name: string) => ((await w.worker.getEnv()) as unknown as Env).EXPERT_HOST.getByName(name);
const greedy = () => postJson(w, "/v1/completions", { prompt: PROMPT, max_tokens: 8, temperature: 0 });

beforeAll(async () => {
  w = await startWithModels(
    { tiny: join(FIXTURES, "mixtral-tiny") },
    {
      MIN_EXPERT_HOSTS: "2",
      DEFAULT_MODEL: "tiny",
      EXPERT_RPC_TIMEOUT_MS: String(DEADLINE_MS),
    },
  );
});
afterAll(() => w?.dispose());

describe("ExpertHost assignment", () => {
  it("matches the placement, survives eviction, refuses unassigned experts and is replaced by reconcile", async () => {
    expect((await greedy()).json.choices[0].token_ids).toEqual(GOLDEN);
    const s = await status();
    const placed = s.placement.instances.map((_, i) =>
      s.placement.replicas.flatMap((row, layer) =>
        row.flatMap((reps, expert) => (reps.some((r) => r.instance === i) ? [key({ layer, expert })] : [])),
      ),
    );
    const before = await hosts();
    before.hosts.forEach((h, i) => {
      expect(h.assigned.map(key).sort()).toEqual([...placed[i]].sort());
      for (const e of h.loaded) expect(placed[i]).toContain(key(e));
    });

    // The assignment is in SQLite: an evicted host still knows it and reloads its weights on use.
    const name = s.placement.instances[0].name;
    await w.worker.evictDurableObject("EXPERT_HOST", { name });
    const evicted = (await hosts()).hosts[0];
    expect(evicted.assigned.map(key).sort()).toEqual([...placed[0]].sort());
    expect(evicted.loaded).toEqual([]);
    expect((await greedy()).json.choices[0].token_ids).toEqual(GOLDEN);

    // Reconcile with one expert fewer: it is unloaded and refused; its layer has no other replica.
    const stub = await host(name);
    const all = before.hosts[0].assigned;
    const dropped = all.find((e) => e.layer === 0)!;
    const kept = all.filter((e) => key(e) !== key(dropped));
    const r = await stub.reconcile("tiny", kept);
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.unloaded.map(key)).toEqual([key(dropped)]);
    const after = (await hosts()).hosts[0];
    expect(after.assigned.map(key)).not.toContain(key(dropped));
    expect(after.loaded.map(key)).not.toContain(key(dropped));
    const items = [{ expert: dropped.expert, nTokens: 1 }];
    const direct = await stub.forward({ model: "tiny", layer: dropped.layer, items, x: new Float32Array(64) });
    expect(direct.ok).toBe(false);
    if (!direct.ok) expect(direct.code).toBe("not_assigned");
    // A request routed to it gets a clean 503 with Retry-After (no replica can serve it).
    const f = await w.fetch("/admin/forward", {
      method: "POST",
      headers: { ...ADMIN, "content-type": "application/json" },
      body: JSON.stringify({ tokens: Array.from({ length: 64 }, (_, i) => (i * 37) % 256) }),
    });
    expect(f.status).toBe(503);
    expect(Number(f.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(((await f.json()) as { error: { code: string } }).error.code).toBe("expert_unavailable");

    // Malformed reconcile input is refused as data; a full reconcile restores service.
    const bad = await stub.reconcile("tiny", [{ layer: -1, expert: 0 }]);
    expect(bad.ok).toBe(false);
    const restored = await stub.reconcile("tiny", all);
    expect(restored.ok && restored.unloaded).toEqual([]);
    expect((await greedy()).json.choices[0].token_ids).toEqual(GOLDEN);
  });

  it("answers 503 with Retry-After after one deadline when the only host of an expert is stuck", async () => {
    const s = await status();
    const name = s.placement.instances[0].name;
    const stuck = (await hosts()).hosts[0].assigned;
    await (await host(name)).injectFault(stuck, 20_000, "stall");
    const t0 = Date.now();
    const r = await w.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: PROMPT, max_tokens: 2, temperature: 0 }),
    });
    const took = Date.now() - t0;
    expect(r.status).toBe(503);
    expect(Number(r.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(/did not answer within/);
    expect(took).toBeGreaterThanOrEqual(DEADLINE_MS - 50);
    expect(took).toBeLessThan(DEADLINE_MS + 3000);
  });
});
