/**
 * @module The Coordinator's SQLite: a versioned schema with migrations, the placement table, its
 * log (pruned to the last `PLACEMENT_LOG_KEEP` versions) and the load windows. Writes touch only
 * the rows that changed — a re-plan every two seconds must not rewrite every expert's row.
 *
 * Written against a small `SqlDb` interface that the Durable Object's `ctx.storage.sql` satisfies,
 * so the migrations are tested on a plain SQLite database too.
 */
import { fromRows, toRows, type ExpertLoadRow, type LoadWindowRows, type LoadWindowState } from "./load-window";
import type { InstanceInfo, Placement, Replica } from "./placement";

type SqlValue = string | number | null;

/** What the store needs of SQLite (a subset of the Workers `SqlStorage`). */
export interface SqlDb {
  exec(query: string, ...bindings: SqlValue[]): { toArray(): Record<string, unknown>[] };
}

/** Versions of the placement log kept; older ones are deleted as new ones are published. */
export const PLACEMENT_LOG_KEEP = 200;

/**
 * Schema migrations, applied in order; the database records the last one applied in
 * `meta.schemaVersion`. A database written before versioning (no schemaVersion) has the tables of
 * migration 1 already; its statements are idempotent, so it runs through from 1. Append only:
 * never edit a migration that has shipped.
 */
export const MIGRATIONS: readonly (readonly string[])[] = [
  // 1: the first schema.
  [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS instances (id INTEGER PRIMARY KEY, name TEXT NOT NULL, budget_bytes INTEGER NOT NULL)",
    `CREATE TABLE IF NOT EXISTS replicas (layer INTEGER NOT NULL, expert INTEGER NOT NULL, instance INTEGER NOT NULL,
      share REAL NOT NULL, PRIMARY KEY (layer, expert, instance))`,
    `CREATE TABLE IF NOT EXISTS placement_log (version INTEGER PRIMARY KEY, created_at INTEGER NOT NULL,
      summary TEXT NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS expert_load (layer INTEGER NOT NULL, expert INTEGER NOT NULL, rate REAL NOT NULL,
      variance REAL NOT NULL, trend REAL NOT NULL, PRIMARY KEY (layer, expert))`,
    "CREATE TABLE IF NOT EXISTS instance_load (instance INTEGER PRIMARY KEY, rate REAL NOT NULL)",
  ],
  // 2: the placement log is bounded (it grew by one row per published version, forever).
  [`DELETE FROM placement_log WHERE version <= (SELECT MAX(version) FROM placement_log) - ${PLACEMENT_LOG_KEEP}`],
  // 3: the pipeline placement (which StageHost holds which dense layers), beside the expert placement.
  [
    `CREATE TABLE IF NOT EXISTS pipeline_versions (version INTEGER PRIMARY KEY, key TEXT NOT NULL,
      created_at INTEGER NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS pipeline_stages (version INTEGER NOT NULL, stage INTEGER NOT NULL, name TEXT NOT NULL,
      first_layer INTEGER NOT NULL, end_layer INTEGER NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (version, stage))`,
  ],
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** Applies the migrations the database has not seen; returns the version it was at. */
export function migrate(sql: SqlDb): number {
  sql.exec(MIGRATIONS[0][0]); // meta, to read the version from
  const row = sql.exec("SELECT value FROM meta WHERE key = 'schemaVersion'").toArray()[0];
  const from = row ? Number(row.value) : 0;
  if (!Number.isInteger(from) || from < 0 || from > SCHEMA_VERSION) {
    throw new Error(
      `Coordinator storage has schema version ${String(row?.value)}; this build knows 0…${SCHEMA_VERSION}`,
    );
  }
  for (let v = from; v < SCHEMA_VERSION; v++) for (const stmt of MIGRATIONS[v]) sql.exec(stmt);
  if (from !== SCHEMA_VERSION) setMeta(sql, "schemaVersion", String(SCHEMA_VERSION));
  return from;
}

function setMeta(sql: SqlDb, key: string, value: string): void {
  sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", key, value);
}

/** The Coordinator's tables. Keeps what it last wrote, to write only what changed. */
export class CoordinatorStore {
  readonly #sql: SqlDb;
  readonly #transaction: (fn: () => void) => void;
  /** The placement as last written (published or read), null before the first. */
  #placement: Placement | null = null;
  /** expert_load rows as last written, by "layer:expert"; instance_load rows by instance. */
  #expertRows = new Map<string, ExpertLoadRow>();
  #instanceRows = new Map<number, number>();

  constructor(sql: SqlDb, transaction: (fn: () => void) => void) {
    this.#sql = sql;
    this.#transaction = transaction;
  }

  /** Migrates the schema; call once, before anything else (under blockConcurrencyWhile). */
  migrate(): number {
    let from = 0;
    this.#transaction(() => (from = migrate(this.#sql)));
    return from;
  }

  meta(key: string): string | null {
    const row = this.#sql.exec("SELECT value FROM meta WHERE key = ?", key).toArray()[0];
    return row ? String(row.value) : null;
  }

  setMeta(key: string, value: string | null): void {
    if (value === null) this.#sql.exec("DELETE FROM meta WHERE key = ?", key);
    else setMeta(this.#sql, key, value);
  }

  // ── placement ───────────────────────────────────────────────────────────────────────────────

  /** Writes `p` as the current placement (only rows that differ from the last one) and logs it. */
  publish(p: Placement, summary: string, now = Date.now()): void {
    const sql = this.#sql;
    const prev = this.#placement;
    this.#transaction(() => {
      const oldInst = new Map((prev?.instances ?? []).map((i) => [i.id, i]));
      for (const inst of p.instances) {
        const o = oldInst.get(inst.id);
        if (!o || o.name !== inst.name || o.budgetBytes !== inst.budgetBytes) {
          sql.exec(
            "INSERT OR REPLACE INTO instances (id, name, budget_bytes) VALUES (?, ?, ?)",
            inst.id,
            inst.name,
            inst.budgetBytes,
          );
        }
      }
      if (!prev || prev.instances.length > p.instances.length)
        sql.exec("DELETE FROM instances WHERE id >= ?", p.instances.length);
      const before = prev ? replicaMap(prev) : null;
      if (!before) sql.exec("DELETE FROM replicas");
      const after = replicaMap(p);
      for (const [key, share] of after) {
        if (before?.get(key) === share) continue;
        const [layer, expert, instance] = key.split(":").map(Number);
        sql.exec(
          "INSERT OR REPLACE INTO replicas (layer, expert, instance, share) VALUES (?, ?, ?, ?)",
          layer,
          expert,
          instance,
          share,
        );
      }
      for (const key of before?.keys() ?? []) {
        if (after.has(key)) continue;
        const [layer, expert, instance] = key.split(":").map(Number);
        sql.exec("DELETE FROM replicas WHERE layer = ? AND expert = ? AND instance = ?", layer, expert, instance);
      }
      const meta = {
        model: p.model,
        version: p.version,
        nLayers: p.nLayers,
        nExperts: p.nExperts,
        layers: JSON.stringify(p.layers ?? null),
        slices: p.slices ?? 1,
      };
      for (const [k, v] of Object.entries(meta)) setMeta(sql, k, String(v));
      sql.exec(
        "INSERT OR REPLACE INTO placement_log (version, created_at, summary) VALUES (?, ?, ?)",
        p.version,
        now,
        summary,
      );
      sql.exec("DELETE FROM placement_log WHERE version <= ?", p.version - PLACEMENT_LOG_KEEP);
    });
    this.#placement = p;
  }

  readPlacement(): Placement | null {
    const sql = this.#sql;
    const meta = new Map(
      sql
        .exec("SELECT key, value FROM meta")
        .toArray()
        .map((r) => [String(r.key), String(r.value)]),
    );
    if (!meta.has("version")) return null;
    const nLayers = Number(meta.get("nLayers"));
    const nExperts = Number(meta.get("nExperts"));
    const instances: InstanceInfo[] = sql
      .exec("SELECT id, name, budget_bytes FROM instances ORDER BY id")
      .toArray()
      .map((r) => ({ id: Number(r.id), name: String(r.name), budgetBytes: Number(r.budget_bytes) }));
    const replicas: Replica[][][] = Array.from({ length: nLayers }, () =>
      Array.from({ length: nExperts }, () => [] as Replica[]),
    );
    for (const r of sql
      .exec("SELECT layer, expert, instance, share FROM replicas ORDER BY layer, expert, instance")
      .toArray()) {
      replicas[Number(r.layer)][Number(r.expert)].push({ instance: Number(r.instance), share: Number(r.share) });
    }
    const layers = JSON.parse(meta.get("layers") ?? "null") as number[] | null;
    const model = meta.get("model") ?? "";
    const slices = Number(meta.get("slices") ?? "1");
    const p: Placement = {
      model,
      version: Number(meta.get("version")),
      nLayers,
      nExperts,
      ...(slices > 1 ? { slices } : {}),
      ...(layers ? { layers } : {}),
      instances,
      replicas,
    };
    this.#placement = p;
    return p;
  }

  /** The last versions' summaries, newest first. */
  placementLog(limit = 20): { version: number; createdAt: number; summary: string }[] {
    return this.#sql
      .exec("SELECT version, created_at, summary FROM placement_log ORDER BY version DESC LIMIT ?", limit)
      .toArray()
      .map((r) => ({ version: Number(r.version), createdAt: Number(r.created_at), summary: String(r.summary) }));
  }

  // ── load windows ────────────────────────────────────────────────────────────────────────────

  /** Writes the window: upserts rows whose values changed, deletes rows that went to zero. */
  writeWindow(w: LoadWindowState): void {
    const rows = toRows(w);
    const sql = this.#sql;
    this.#transaction(() => {
      const seen = new Set<string>();
      for (const r of rows.experts) {
        const key = `${r.layer}:${r.expert}`;
        seen.add(key);
        const o = this.#expertRows.get(key);
        if (o && o.rate === r.rate && o.variance === r.variance && o.trend === r.trend) continue;
        sql.exec(
          "INSERT OR REPLACE INTO expert_load (layer, expert, rate, variance, trend) VALUES (?, ?, ?, ?, ?)",
          r.layer,
          r.expert,
          r.rate,
          r.variance,
          r.trend,
        );
        this.#expertRows.set(key, r);
      }
      for (const [key, r] of this.#expertRows) {
        if (seen.has(key)) continue;
        sql.exec("DELETE FROM expert_load WHERE layer = ? AND expert = ?", r.layer, r.expert);
        this.#expertRows.delete(key);
      }
      const seenInst = new Set<number>();
      for (const r of rows.instances) {
        seenInst.add(r.instance);
        if (this.#instanceRows.get(r.instance) === r.rate) continue;
        sql.exec("INSERT OR REPLACE INTO instance_load (instance, rate) VALUES (?, ?)", r.instance, r.rate);
        this.#instanceRows.set(r.instance, r.rate);
      }
      for (const i of [...this.#instanceRows.keys()]) {
        if (seenInst.has(i)) continue;
        sql.exec("DELETE FROM instance_load WHERE instance = ?", i);
        this.#instanceRows.delete(i);
      }
      setMeta(sql, "loadWindow", JSON.stringify(rows.meta));
    });
  }

  /** The stored window, or null when there is none or it cannot be read (the EMA starts afresh). */
  readWindow(): LoadWindowState | null {
    const sql = this.#sql;
    const experts: ExpertLoadRow[] = sql
      .exec("SELECT layer, expert, rate, variance, trend FROM expert_load")
      .toArray()
      .map((r) => ({
        layer: Number(r.layer),
        expert: Number(r.expert),
        rate: Number(r.rate),
        variance: Number(r.variance),
        trend: Number(r.trend),
      }));
    const instances = sql
      .exec("SELECT instance, rate FROM instance_load")
      .toArray()
      .map((r) => ({ instance: Number(r.instance), rate: Number(r.rate) }));
    this.#expertRows = new Map(experts.map((r) => [`${r.layer}:${r.expert}`, r]));
    this.#instanceRows = new Map(instances.map((r) => [r.instance, r.rate]));
    const metaJson = this.meta("loadWindow");
    if (!metaJson) return null;
    try {
      return fromRows({ meta: JSON.parse(metaJson) as LoadWindowRows["meta"], experts, instances });
    } catch {
      return null; // incompatible rows (e.g. written by an older build): start the EMA afresh
    }
  }
}

/** "layer:expert:instance" → share, for every replica of `p`. */
function replicaMap(p: Placement): Map<string, number> {
  const m = new Map<string, number>();
  p.replicas.forEach((row, l) =>
    row.forEach((reps, e) => reps.forEach((r) => m.set(`${l}:${e}:${r.instance}`, r.share))),
  );
  return m;
}
