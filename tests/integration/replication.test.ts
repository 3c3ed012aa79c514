/**
 * Hot-expert replication on the real runtime: a skewed workload makes the Coordinator add
 * replicas of the hot experts (make-before-break), traffic reaches them, every request during
 * the switches succeeds, and the replicas are released once the load goes away. A Coordinator
 * restarted in the middle of a make-before-break reconciles the hosts with its placement.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import {
  ADMIN,
  assignedKeys,
  FIXTURES,
  postJson,
  REPLICATION_VARS,
  skewedLoad,
  startWithModels,
  waitFor,
} from "./helpers";

interface Status {
  loads: number[][];
  windows: number;
  startedAt: number;
  lastReconcile: {
    version: number;
    unloaded: Record<string, { layer: number; expert: number }[]>;
    failed: string[];
  } | null;
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
  s.placement.replicas.flatMap((row, layer) =>
    row.flatMap((reps, expert) => (reps.length > 1 ? [{ layer, expert, reps }] : [])),
  );
const assigned = (s: Status) => assignedKeys(s.placement);
const held = (h: Hosts, n: number) =>
  Array.from({ length: n }, (_, i) => (h.hosts[i]?.loaded ?? []).map((e) => `${e.layer}:${e.expert}`).sort());

beforeAll(async () => {
  w = await startWithModels(
    { tiny: join(FIXTURES, "mixtral-tiny") },
    { ...REPLICATION_VARS, ADMIN_FAULTS_ENABLED: "true" },
  );
});
afterAll(() => w?.dispose());

describe("hot-expert replication", () => {
  const title =
    "replicates hot experts under skewed load, routes to the replicas, drops nothing, and releases them when idle";
  it(title, async () => {
    const before = await status();
    expect(before.placement.instances).toHaveLength(4);
    expect(replicated(before)).toEqual([]);

    // Skewed load: one token repeated routes most positions to the same few experts per layer.
    const load = skewedLoad(w, "replication");
    const statuses = load.statuses;

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
      for (const i of a.instances)
        expect(t1.hosts[i].loaded.some((e) => `${e.layer}:${e.expert}` === a.key)).toBe(true);
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
    expect(tokensOf(tf1, victim.instances[1], victim.key)).toBeGreaterThan(
      tokensOf(tf0, victim.instances[1], victim.key),
    );

    await load.stop();
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
    const r = await postJson(w, "/v1/completions", {
      prompt: [29, 192, 173, 88, 189, 139, 156, 188, 151, 153],
      max_tokens: 8,
      temperature: 0,
    });
    expect(r.json.choices[0].token_ids).toEqual([209, 91, 45, 118, 199, 228, 217, 157]);
  });
});

describe("reconcile after a Coordinator restart", () => {
  const title =
    "leaves every host holding exactly what the placement references after a make-before-break is cut short";
  it(title, async () => {
    // Replicate under load, then let the load go: the Coordinator drains the idle replicas away
    // (publishes a table without them, waits for Workers to see it, then unloads). Restart it
    // inside that wait.
    const load = skewedLoad(w, "replication");
    const hot = await waitFor("replicas", status, (s) => replicated(s).length > 0);
    await load.stop();
    const before = replicated(hot).length;
    const drained = await waitFor("a drain", status, (s) => replicated(s).length < before, 300, 50);
    await w.worker.evictDurableObject("COORDINATOR", { name: "tiny" });
    expect((await status()).startedAt).not.toBe(drained.startedAt);

    // A make-before-break cut between loading a new replica and publishing the version that
    // routes to it leaves a host holding an expert no version references: make one.
    const live = await status();
    const mine = assigned(live);
    const stray = ["0:0", "0:1", "0:2", "0:3", "0:4", "0:5", "0:6", "0:7"].find((k) => !mine[0].includes(k))!;
    const [layer, expert] = stray.split(":").map(Number);
    const env = (await w.worker.getEnv()) as unknown as Env;
    const loaded = await env.EXPERT_HOST.getByName(live.placement.instances[0].name).load("tiny", [{ layer, expert }]);
    expect(loaded.ok).toBe(true);
    expect(held(await hosts(), mine.length)[0]).toContain(stray);
    await w.worker.evictDurableObject("COORDINATOR", { name: "tiny" });

    // The restarted Coordinator reconciles shortly after it starts: every host then holds exactly
    // its assignment, and the stray copy is gone.
    const settled = async () => ({ s: await status(), h: await hosts() });
    const end = await waitFor(
      "hosts consistent with the placement",
      settled,
      ({ s, h }) => s.lastReconcile !== null && JSON.stringify(held(h, mine.length)) === JSON.stringify(assigned(s)),
    );
    expect(end.s.lastReconcile!.failed).toEqual([]);
    expect(end.s.lastReconcile!.unloaded[live.placement.instances[0].name]).toContainEqual({ layer, expert });
    // Still serving the fixture's golden tokens.
    const r = await postJson(w, "/v1/completions", {
      prompt: [29, 192, 173, 88, 189, 139, 156, 188, 151, 153],
      max_tokens: 8,
      temperature: 0,
    });
    expect(r.json.choices[0].token_ids).toEqual([209, 91, 45, 118, 199, 228, 217, 157]);
  });
});
