/**
 * The Coordinator's re-plan alarm loop, driven in Node on a fake Durable Object context (SQLite in
 * memory, an alarm the harness fires like the runtime's scheduler, fake ExpertHosts, fake timers):
 * after a burst the loop must keep going until the added instance is retired, even when an owed
 * reconcile keeps failing or a re-plan throws. Either used to stop it for good: the placement froze
 * with the burst's instance listed and no re-plan was recorded again — the state the consolidation
 * integration test was left in when it failed on a loaded machine.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { LoadReport } from "../../../src/experts/protocol";
import type { SqlDb } from "../../../src/platform/sql-migrations";
import { memorySql } from "../../support/sqlite";
import { REPLICATION_VARS } from "../../support/replication-vars";

vi.mock("cloudflare:workers", () => ({
  DurableObject: class {
    ctx: unknown;
    env: unknown;
    constructor(ctx: unknown, env: unknown) {
      this.ctx = ctx;
      this.env = env;
    }
  },
}));
const { Coordinator } = await import("../../../src/coordinator/coordinator");
type CoordinatorT = InstanceType<typeof Coordinator>;

/** As tests/integration/consolidation.test.ts: 4 full fresh instances, a burst adds a fifth. */
const VARS = { ...REPLICATION_VARS, SPARE_SLOT_FRACTION: "0" };
const EXPERT_BYTES = 72 * 1024;
const INIT = {
  model: "tiny",
  nLayers: 2,
  nExperts: 8,
  expertBytes: EXPERT_BYTES,
  budgetBytes: Math.floor(4.5 * EXPERT_BYTES),
  minInstances: 4,
  spareFraction: 0,
};

interface Options {
  /** Hosts whose reconcile always fails (unreachable). */
  unreachable?: string[];
  /** SQL statements matching this throw while `failing()` is true. */
  failSql?: { match: RegExp; failing: () => boolean };
  /** While true, a host's load never answers (a call stuck in the network). */
  hangLoads?: () => boolean;
}

/**
 * A Coordinator on a fake context. `run(ms)` advances the fake clock, firing the alarm when it is
 * due, one handler at a time, as the runtime does; a handler that throws is not retried (the
 * platform's retries are bounded, and after them the alarm is gone).
 */
function harness(opts: Options = {}) {
  const db = memorySql();
  const sql: SqlDb = {
    exec(query, ...bindings) {
      if (opts.failSql?.failing() && opts.failSql.match.test(query)) throw new Error("SQLITE_FULL: database is full");
      return db.sql.exec(query, ...bindings);
    },
  };
  let alarmAt: number | null = null;
  let inHandler = false;
  let setInHandler = false;
  const host = (name: string) => ({
    load: () => (opts.hangLoads?.() ? new Promise<never>(() => {}) : Promise.resolve({ ok: true, stats: {} })),
    unload: async () => ({}),
    reconcile: async () =>
      opts.unreachable?.includes(name)
        ? { ok: false, code: "unavailable", message: "no answer" }
        : { ok: true, unloaded: [] },
  });
  const ctx = {
    storage: {
      sql,
      transactionSync: (fn: () => void) => db.transaction(fn),
      // While a handler runs, the alarm it is handling reads as unset (as in workerd).
      getAlarm: async () => (inHandler && !setInHandler ? null : alarmAt),
      setAlarm: async (t: number) => {
        alarmAt = t;
        if (inHandler) setInHandler = true;
      },
    },
    blockConcurrencyWhile: async (fn: () => Promise<void>) => fn(),
  };
  const env = { ...VARS, EXPERT_HOST: { getByName: (name: string) => host(name) } };
  const make = (): CoordinatorT => new Coordinator(ctx as never, env as never);
  const h = { c: make(), alarmAt: () => alarmAt, restart: () => (h.c = make()), run };
  let running: Promise<void> | null = null;
  async function run(ms: number): Promise<void> {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      await vi.advanceTimersByTimeAsync(20);
      if (running || alarmAt === null || Date.now() < alarmAt) continue;
      const scheduled = alarmAt;
      inHandler = true;
      setInHandler = false;
      running = h.c
        .alarm()
        .then(
          () => {
            if (!setInHandler && alarmAt === scheduled) alarmAt = null;
          },
          () => {
            if (!setInHandler && alarmAt === scheduled) alarmAt = null;
          },
        )
        .finally(() => {
          inHandler = false;
          running = null;
        });
    }
  }
  return h;
}

/** Skewed load: experts 0 and 1 of both layers take most tokens. */
function burstReport(version: number): LoadReport {
  const counts = new Array(INIT.nLayers * INIT.nExperts).fill(0);
  for (const l of [0, 1]) {
    counts[l * INIT.nExperts] = 40;
    counts[l * INIT.nExperts + 1] = 30;
  }
  return { model: "tiny", nLayers: 2, nExperts: 8, counts, calls: [10, 10], instanceRows: {}, version };
}

/** Creates the fresh placement and sends the burst until it added an instance. */
async function burst(h: ReturnType<typeof harness>): Promise<void> {
  const made = h.c.ensurePlacement(INIT);
  await h.run(100);
  expect((await made).instances).toHaveLength(4);
  for (let i = 0; i < 40 && ((await h.c.getPlacement())?.instances.length ?? 0) <= 4; i++) {
    await h.c.reportLoad(burstReport((await h.c.getPlacement())?.version ?? 0));
    await h.run(100);
  }
  expect((await h.c.getPlacement())?.instances.length).toBeGreaterThan(4);
}

async function settled(h: ReturnType<typeof harness>) {
  const s = await h.c.status();
  const p = s.placement;
  return {
    instances: p?.instances.length,
    replicated: p?.replicas.flat().filter((reps) => reps.length > 1).length,
    retired: s.counters.ops["remove-instance"] ?? 0,
  };
}

beforeEach(() => {
  vi.useFakeTimers({ now: 1_000_000 });
});
afterEach(() => {
  vi.useRealTimers();
});

describe("Coordinator alarm loop", () => {
  it("retires the burst's instance once the load is gone", async () => {
    const h = harness();
    await burst(h);
    await h.run(30_000);
    expect(await settled(h)).toEqual({ instances: 4, replicated: 0, retired: 1 });
    expect(h.alarmAt()).toBeNull(); // nothing left to do: the loop stops by itself
    const s = await h.c.status();
    expect(s.busySince).toBeNull(); // every turn that ran has ended
    expect(s.counters.replans.reduce((n, r) => n + r.count, 0)).toBeGreaterThan(5);
  });

  it("keeps re-planning while an owed reconcile keeps failing", async () => {
    // A restart owes a reconcile; a host past the placement never answers it.
    const h = harness({ unreachable: ["tiny/h5"] });
    await burst(h);
    h.restart();
    await h.run(30_000);
    expect(await settled(h)).toEqual({ instances: 4, replicated: 0, retired: 1 });
    const s = await h.c.status();
    expect(s.lastReconcile?.failed).toEqual(["tiny/h5: unavailable: no answer"]);
    expect(h.alarmAt()).not.toBeNull(); // the reconcile is still owed: it is retried
  });

  it("re-arms itself when a re-plan throws", async () => {
    let failing = false;
    const h = harness({ failSql: { match: /INTO expert_load/, failing: () => failing } });
    await burst(h);
    failing = true; // the next window's write fails: that re-plan throws
    await h.run(1_000);
    failing = false;
    await h.run(30_000);
    expect(await settled(h)).toEqual({ instances: 4, replicated: 0, retired: 1 });
  });

  it("shows since when a stuck turn runs, and counts the turns that find it running", async () => {
    let hang = false;
    const h = harness({ hangLoads: () => hang });
    const made = h.c.ensurePlacement(INIT);
    await h.run(100);
    await made;
    expect((await h.c.status()).busySince).toBeNull();
    hang = true; // the burst's first copy never loads: that re-plan never ends
    for (let i = 0; i < 10 && (await h.c.status()).busySince === null; i++) {
      await h.c.reportLoad(burstReport((await h.c.getPlacement())?.version ?? 0));
      await h.run(600);
    }
    const started = (await h.c.status()).busySince;
    expect(started).not.toBeNull();
    await h.run(5_000);
    expect((await h.c.replan("admin")).reason).toBe("busy");
    const s = await h.c.status();
    expect(s.busySince).toBe(started); // the same turn, still running
    expect(Date.now() - (started ?? 0)).toBeGreaterThanOrEqual(5_000);
    expect(s.counters.busyTurns).toBe(1);
    expect(s.counters.replans.some((r) => r.reason === "busy")).toBe(false);
  });
});
