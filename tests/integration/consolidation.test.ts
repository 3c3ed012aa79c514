/**
 * Consolidation after a burst on the real runtime: with every fresh instance full (no spare
 * slots), a skewed load makes the Coordinator add instances for its replicas; once the load is
 * gone the replicas are released, lone experts move home and the instances the burst added are
 * retired — the placement has the fresh placement's instances again, every listed host holds
 * exactly its assignment, the retired hosts hold nothing, and the greedy tokens are the golden ones.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, FIXTURES, GOLDEN_TINY_IDS, greedyTinyIds, postJson, startWithModels } from "./helpers";

interface Status {
  placement: { version: number; instances: { name: string }[]; replicas: { instance: number; share: number }[][][] };
  counters: { ops: Record<string, number> };
  lastReplans: { reason: string; failedLoads: string[] }[];
}
interface Hosts {
  hosts: { name: string; loaded: { layer: number; expert: number }[] }[];
}

const FRESH = 4;
let w: LocalWorker;
const status = async () => (await (await w.fetch("/admin/placement?model=tiny", { headers: ADMIN })).json()) as Status;
const hosts = async () => (await (await w.fetch("/admin/hosts?model=tiny", { headers: ADMIN })).json()) as Hosts;
const replicated = (s: Status) => s.placement.replicas.flat().filter((reps) => reps.length > 1).length;
const keys = (list: { layer: number; expert: number }[]) => list.map((e) => `${e.layer}:${e.expert}`).sort();
const assigned = (s: Status) =>
  s.placement.instances.map((_, i) =>
    s.placement.replicas
      .flatMap((row, layer) =>
        row.flatMap((reps, expert) => (reps.some((r) => r.instance === i) ? [`${layer}:${expert}`] : [])),
      )
      .sort(),
  );

async function waitFor<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, tries = 300): Promise<T> {
  let v = await get();
  for (let i = 0; i < tries && !ok(v); i++) {
    await new Promise((r) => setTimeout(r, 200));
    v = await get();
  }
  if (!ok(v)) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(v).slice(0, 600)}`);
  return v;
}

beforeAll(async () => {
  w = await startWithModels(
    { tiny: join(FIXTURES, "mixtral-tiny") },
    {
      // The tiny model's 16 experts (72 KiB each in f32) fill 4 instances of 4.5 experts' bytes:
      // every replica needs an instance the burst adds.
      MIN_EXPERT_HOSTS: String(FRESH),
      EXPERT_HOST_BUDGET_MB: "0.3164",
      SPARE_SLOT_FRACTION: "0",
      MAX_EXPERT_HOSTS: "6",
      REPLAN_INTERVAL_MS: "300",
      MAX_COPIES_PER_REPLAN: "4",
      REPLAN_THRESHOLD: "0.1",
      // Balance alone decides (as in replication.test.ts): one local client is a load at which
      // the latency model copies nothing.
      PLACEMENT_RPC_MS: "0",
      PLACEMENT_ROW_MS_PER_MIB: "0",
      DEFAULT_MODEL: "tiny",
    },
  );
});
afterAll(() => w?.dispose());

describe("consolidation after a burst", () => {
  it("returns to the fresh placement's instances, retires the added ones, and frees their memory", async () => {
    const fresh = await status();
    expect(fresh.placement.instances).toHaveLength(FRESH);

    // The burst: one token repeated routes most positions to a few experts per layer.
    let stop = false;
    const statuses: number[] = [];
    const load = (async () => {
      while (!stop) {
        const r = await postJson(w, "/v1/completions", {
          prompt: new Array(24).fill(42),
          max_tokens: 4,
          temperature: 0,
        });
        statuses.push(r.status);
        if (r.status !== 200) throw new Error(`request failed during the burst: ${JSON.stringify(r.json)}`);
      }
    })();
    const grown = await waitFor("an instance added by the burst", status, (s) => s.placement.instances.length > FRESH);
    stop = true;
    await load;
    expect(statuses.every((s) => s === 200)).toBe(true);
    const added = grown.placement.instances.slice(FRESH).map((i) => i.name);

    // Idle: released, consolidated, the added instances retired.
    const settled = await waitFor(
      "the fresh placement's instances again",
      status,
      (s) =>
        replicated(s) === 0 &&
        s.placement.instances.length === FRESH &&
        s.placement.replicas.flat().every((reps) => reps[0].instance < FRESH),
    );
    expect(settled.counters.ops["remove-instance"]).toBeGreaterThan(0);
    expect(settled.lastReplans.flatMap((r) => r.failedLoads)).toEqual([]);

    // Every listed host ends up holding exactly its assignment (the old copies go after the drain) …
    const want = JSON.stringify(assigned(settled));
    await waitFor(
      "hosts holding their assignments",
      hosts,
      (h) => JSON.stringify(h.hosts.map((x) => keys(x.loaded))) === want,
    );
    // … and the retired hosts hold nothing.
    const env = (await w.worker.getEnv()) as unknown as Env;
    for (const name of added) {
      const stats = await env.EXPERT_HOST.getByName(name).stats();
      expect({ name, loaded: stats.loaded, assigned: stats.assigned }).toEqual({ name, loaded: [], assigned: [] });
    }
    // Placement never changes results.
    expect(await greedyTinyIds(w, 8)).toEqual(GOLDEN_TINY_IDS);
  });
});
