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
import {
  ADMIN,
  assignedKeys,
  FIXTURES,
  GOLDEN_TINY_IDS,
  greedyTinyIds,
  skewedLoad,
  REPLICATION_VARS,
  startWithModels,
  waitFor,
} from "./helpers";

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
const assigned = (s: Status) => assignedKeys(s.placement);

beforeAll(async () => {
  w = await startWithModels(
    { tiny: join(FIXTURES, "mixtral-tiny") },
    {
      ...REPLICATION_VARS,
      // The tiny model's 16 experts (72 KiB each in f32) fill 4 instances of 4.5 experts' bytes:
      // every replica needs an instance the burst adds.
      EXPERT_HOST_BUDGET_MB: "0.3164",
      SPARE_SLOT_FRACTION: "0",
    },
  );
});
afterAll(() => w?.dispose());

describe("consolidation after a burst", () => {
  it("returns to the fresh placement's instances, retires the added ones, and frees their memory", async () => {
    const fresh = await status();
    expect(fresh.placement.instances).toHaveLength(FRESH);

    // The burst: one token repeated routes most positions to a few experts per layer.
    const load = skewedLoad(w, "the burst");
    const grown = await waitFor(
      "an instance added by the burst",
      status,
      (s) => s.placement.instances.length > FRESH,
      300,
    );
    await load.stop();
    expect(load.statuses.every((s) => s === 200)).toBe(true);
    const added = grown.placement.instances.slice(FRESH).map((i) => i.name);

    // Idle: released, consolidated, the added instances retired.
    const settled = await waitFor(
      "the fresh placement's instances again",
      status,
      (s) =>
        replicated(s) === 0 &&
        s.placement.instances.length === FRESH &&
        s.placement.replicas.flat().every((reps) => reps[0].instance < FRESH),
      300,
    );
    expect(settled.counters.ops["remove-instance"]).toBeGreaterThan(0);
    expect(settled.lastReplans.flatMap((r) => r.failedLoads)).toEqual([]);

    // Every listed host ends up holding exactly its assignment (the old copies go after the drain) …
    const want = JSON.stringify(assigned(settled));
    await waitFor(
      "hosts holding their assignments",
      hosts,
      (h) => JSON.stringify(h.hosts.map((x) => keys(x.loaded))) === want,
      300,
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
