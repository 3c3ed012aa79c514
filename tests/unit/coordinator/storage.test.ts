/**
 * The Coordinator's SQLite store on a plain SQLite database: a database written before schema
 * versioning is migrated (tables kept, log pruned, version recorded), the placement and load
 * windows round-trip, and a write touches only the rows that changed.
 */
import { afterEach, describe, expect, it } from "vitest";
import { createLoadWindow, foldWindow } from "../../../src/coordinator/load-window";
import type { Placement } from "../../../src/coordinator/placement";
import { CoordinatorStore, PLACEMENT_LOG_KEEP, SCHEMA_VERSION, migrate } from "../../../src/coordinator/storage";
import { memorySql, type MemorySql } from "../../support/sqlite";

/** The schema as the Coordinator created it before versioning, verbatim. */
const UNVERSIONED_SCHEMA = [
  "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
  "CREATE TABLE IF NOT EXISTS instances (id INTEGER PRIMARY KEY, name TEXT NOT NULL, budget_bytes INTEGER NOT NULL)",
  `CREATE TABLE IF NOT EXISTS replicas (
  layer INTEGER NOT NULL, expert INTEGER NOT NULL, instance INTEGER NOT NULL, share REAL NOT NULL,
  PRIMARY KEY (layer, expert, instance)
)`,
  "CREATE TABLE IF NOT EXISTS placement_log " +
    "(version INTEGER PRIMARY KEY, created_at INTEGER NOT NULL, summary TEXT NOT NULL)",
  `CREATE TABLE IF NOT EXISTS expert_load (layer INTEGER NOT NULL, expert INTEGER NOT NULL, rate REAL NOT NULL,
  variance REAL NOT NULL, trend REAL NOT NULL, PRIMARY KEY (layer, expert))`,
  "CREATE TABLE IF NOT EXISTS instance_load (instance INTEGER PRIMARY KEY, rate REAL NOT NULL)",
];

function placement(version: number, extra = false): Placement {
  const replicas = [0, 1].map(() => [0, 1, 2, 3].map((e) => [{ instance: e % 2, share: 1 }]));
  if (extra)
    replicas[1][2] = [
      { instance: 0, share: 0.4 },
      { instance: 1, share: 0.6 },
    ];
  const instances = [0, 1].map((id) => ({ id, name: `m/h${id}`, budgetBytes: 1000 }));
  return { model: "m", version, nLayers: 2, nExperts: 4, instances, replicas };
}

let db: MemorySql;
afterEach(() => db?.close());

describe("Coordinator storage", () => {
  it("migrates a database written before schema versioning, keeping its placement and pruning its log", () => {
    db = memorySql();
    for (const stmt of UNVERSIONED_SCHEMA) db.sql.exec(stmt);
    const old = placement(500, true);
    const meta = { model: "m", version: "500", nLayers: "2", nExperts: "4", layers: "null", expertBytes: "7" };
    for (const [k, v] of Object.entries(meta)) db.sql.exec("INSERT INTO meta (key, value) VALUES (?, ?)", k, v);
    for (const i of old.instances) db.sql.exec("INSERT INTO instances VALUES (?, ?, ?)", i.id, i.name, i.budgetBytes);
    old.replicas.forEach((row, l) =>
      row.forEach((reps, e) =>
        reps.forEach((r) => db.sql.exec("INSERT INTO replicas VALUES (?, ?, ?, ?)", l, e, r.instance, r.share)),
      ),
    );
    for (let v = 1; v <= 500; v++) db.sql.exec("INSERT INTO placement_log VALUES (?, ?, ?)", v, v, `v${v}`);

    const store = new CoordinatorStore(db.sql, db.transaction);
    expect(store.migrate()).toBe(0);
    expect(store.meta("schemaVersion")).toBe(String(SCHEMA_VERSION));
    expect(store.readPlacement()).toEqual(old);
    expect(store.meta("expertBytes")).toBe("7");
    const log = db.sql.exec("SELECT COUNT(*) AS n, MIN(version) AS lo FROM placement_log").toArray()[0];
    expect(log).toEqual({ n: PLACEMENT_LOG_KEEP, lo: 500 - PLACEMENT_LOG_KEEP + 1 });
    // Migrating again is a no-op.
    expect(migrate(db.sql)).toBe(SCHEMA_VERSION);
  });

  it("refuses a database from a newer build", () => {
    db = memorySql();
    const store = new CoordinatorStore(db.sql, db.transaction);
    store.migrate();
    store.setMeta("schemaVersion", String(SCHEMA_VERSION + 1));
    expect(() => new CoordinatorStore(db.sql, db.transaction).migrate()).toThrow(/schema version/);
  });

  it("publishes only the replica rows that changed, and keeps the last versions of the log", () => {
    db = memorySql();
    const store = new CoordinatorStore(db.sql, db.transaction);
    store.migrate();
    store.publish(placement(1), "initial");
    db.writes.clear();
    store.publish(placement(2, true), "+1:2@0");
    // Expert (1, 2) went from one replica on h0 to h0 (0.4) + h1 (0.6): two rows, nothing else.
    expect(db.writes.get("replicas")).toBe(2);
    expect(db.writes.get("instances")).toBeUndefined();
    expect(new CoordinatorStore(db.sql, db.transaction).readPlacement()).toEqual(placement(2, true));
    db.writes.clear();
    store.publish(placement(3), "-1:2@1");
    expect(db.writes.get("replicas")).toBe(2); // the share of h0 back to 1, h1's row deleted
    expect(new CoordinatorStore(db.sql, db.transaction).readPlacement()).toEqual(placement(3));
    for (let v = 4; v < 4 + PLACEMENT_LOG_KEEP + 10; v++) store.publish(placement(v), `v${v}`);
    expect(store.placementLog(1000)).toHaveLength(PLACEMENT_LOG_KEEP);
  });

  it("keeps a sliced placement's slices per expert (units are stored as experts)", () => {
    db = memorySql();
    const store = new CoordinatorStore(db.sql, db.transaction);
    store.migrate();
    const sliced: Placement = { ...placement(1), nExperts: 4, slices: 2 };
    store.publish(sliced, "initial");
    expect(new CoordinatorStore(db.sql, db.transaction).readPlacement()).toEqual(sliced);
    store.publish(placement(2), "whole experts again");
    expect(new CoordinatorStore(db.sql, db.transaction).readPlacement()).toEqual(placement(2));
  });

  it("writes only the load rows that changed and deletes the ones that went idle", () => {
    db = memorySql();
    const store = new CoordinatorStore(db.sql, db.transaction);
    store.migrate();
    let w = createLoadWindow(2, 4);
    w = foldWindow(w, {
      expertCounts: [
        [10, 0, 5, 0],
        [1, 2, 3, 4],
      ],
    });
    store.writeWindow(w);
    expect(db.writes.get("expert_load")).toBe(6);
    db.writes.clear();
    // One rate rose, one expert went idle, the rest stand still.
    const copy = (m: number[][]) => m.map((row) => row.slice());
    const next = {
      ...w,
      expert: copy(w.expert),
      variance: copy(w.variance),
      trend: copy(w.trend),
      windows: w.windows + 1,
    };
    next.expert[0][0] = 20;
    next.expert[1][3] = 0;
    next.variance[1][3] = 0;
    next.trend[1][3] = 0;
    store.writeWindow(next);
    expect(db.writes.get("expert_load")).toBe(2); // one upsert, one delete
    const read = new CoordinatorStore(db.sql, db.transaction).readWindow();
    expect(read?.expert).toEqual(next.expert);
    expect(read?.windows).toBe(next.windows);
  });
});
