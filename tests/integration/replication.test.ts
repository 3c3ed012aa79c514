/**
 * Hot-expert replication on the real runtime: a skewed workload makes the Coordinator add
 * replicas of the hot experts (make-before-break), traffic reaches them, every request during
 * the switches succeeds, and the replicas are released once the load goes away.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, FIXTURES, postJson, startWithModels } from "./helpers";

interface Status {
  loads: number[][];
  windows: number;
  startedAt: number;
  placement: { version: number; instances: { name: string }[]; replicas: { instance: number; share: number }[][][] };
  lastReplans: { reason: string; ops: { op: string }[]; failedLoads: string[] }[];
}
interface Hosts {
  hosts: { name: string; loaded: { layer: number; expert: number }[]; expertTokens: Record<string, number> }[];
}

let w: LocalWorker;
const status = async () => (await (await w.fetch("/admin/placement?model=tiny", { headers: ADMIN })).json()) as Status;
const hosts = async () => (await (await w.fetch("/admin/hosts?model=tiny", { headers: ADMIN })).json()) as Hosts;
const replicated = (s: Status) =>
  s.placement.replicas.flatMap((row, layer) => row.flatMap((reps, expert) => (reps.length > 1 ? [{ layer, expert, reps }] : [])));

beforeAll(async () => {
  w = await startWithModels(
    { tiny: join(FIXTURES, "mixtral-tiny") },
    { MIN_EXPERT_HOSTS: "4", REPLAN_INTERVAL_MS: "300", MAX_COPIES_PER_REPLAN: "4", REPLAN_THRESHOLD: "0.1", MAX_EXPERT_HOSTS: "6", DEFAULT_MODEL: "tiny", ADMIN_FAULTS_ENABLED: "true" },
  );
});
afterAll(() => w?.dispose());

describe("hot-expert replication", () => {
  it("replicates hot experts under skewed load, routes to the replicas, drops nothing, and releases them when idle", async () => {
    const before = await status();
    expect(before.placement.instances).toHaveLength(4);
    expect(replicated(before)).toEqual([]);

    // Skewed load: one token repeated routes most positions to the same few experts per layer.
    const statuses: number[] = [];
    let stop = false;
    const load = (async () => {
      while (!stop) {
        const r = await postJson(w, "/v1/completions", { prompt: new Array(24).fill(42), max_tokens: 4, temperature: 0 });
        statuses.push(r.status);
        if (r.status !== 200) throw new Error(`request failed during replication: ${JSON.stringify(r.json)}`);
      }
    })();

    let hot: ReturnType<typeof replicated> = [];
    for (let i = 0; i < 100 && hot.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 200));
      hot = replicated(await status());
    }
    expect(hot.length).toBeGreaterThan(0);

    // Traffic reaches the new replicas: keep the load on and watch their token counters move.
    const added = hot.map((h) => ({ key: `${h.layer}:${h.expert}`, instances: h.reps.map((r) => r.instance) }));
    const tokensOf = (hs: Hosts, inst: number, key: string) => hs.hosts[inst]?.expertTokens[key] ?? 0;
    const t0 = await hosts();
    await new Promise((r) => setTimeout(r, 1500));
    const t1 = await hosts();
    const served = added.filter((a) => a.instances.every((i) => tokensOf(t1, i, a.key) > tokensOf(t0, i, a.key)));
    expect(served.length).toBeGreaterThan(0);
    // A replica lives on another instance than the original, and both hold the weights.
    for (const a of added) {
      expect(new Set(a.instances).size).toBe(a.instances.length);
      for (const i of a.instances) expect(t1.hosts[i].loaded.some((e) => `${e.layer}:${e.expert}` === a.key)).toBe(true);
    }

    // A failure inside one instance does not fail requests a replica can serve.
    const victim = added.find((a) => a.instances.length > 1)!;
    const [layer, expert] = victim.key.split(":").map(Number);
    const fault = await postJson(w, "/admin/fault", { instance: victim.instances[0], layer, expert, ms: 1500 }, ADMIN);
    expect(fault.status).toBe(200);
    const tf0 = await hosts();
    await new Promise((r) => setTimeout(r, 1200));
    const tf1 = await hosts();
    // The faulty replica served nothing; the other one carried the expert, and no request failed.
    expect(tokensOf(tf1, victim.instances[0], victim.key)).toBe(tokensOf(tf0, victim.instances[0], victim.key));
    expect(tokensOf(tf1, victim.instances[1], victim.key)).toBeGreaterThan(tokensOf(tf0, victim.instances[1], victim.key));

    stop = true;
    await load;
    expect(statuses.length).toBeGreaterThan(5);
    expect(statuses.every((s) => s === 200)).toBe(true);
    const s = await status();
    expect(s.lastReplans.flatMap((r) => r.failedLoads)).toEqual([]);

    // The Coordinator's state lives in SQLite: a restart keeps the placement and the load windows.
    await w.worker.evictDurableObject("COORDINATOR", { name: "tiny" });
    const restarted = await status();
    expect(restarted.startedAt).not.toBe(s.startedAt);
    expect(restarted.placement.version).toBeGreaterThanOrEqual(s.placement.version);
    expect(restarted.windows).toBeGreaterThanOrEqual(s.windows);
    expect(restarted.loads.flat().reduce((a, b) => a + b, 0)).toBeGreaterThan(0);

    // Load gone: the EMA decays and the extra replicas are released.
    let left = replicated(s);
    for (let i = 0; i < 150 && left.length > 0; i++) {
      await new Promise((r) => setTimeout(r, 200));
      left = replicated(await status());
    }
    expect(left).toEqual([]);
    // Still serving correctly afterwards (golden greedy tokens of the fixture).
    const r = await postJson(w, "/v1/completions", { prompt: [29, 192, 173, 88, 189, 139, 156, 188, 151, 153], max_tokens: 8, temperature: 0 });
    expect(r.json.choices[0].token_ids).toEqual([209, 91, 45, 118, 199, 228, 217, 157]);
  });
});
