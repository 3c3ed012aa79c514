/**
 * @module One schema-migration runner for every Durable Object's SQLite (the Coordinator's store,
 * an ExpertHost's assignment): migrations are append-only lists of statements, the database
 * records how many it has applied in its `meta` table, and a database newer than the build is
 * refused rather than written with an old schema.
 */

type SqlValue = string | number | null;

/** What the runner needs of SQLite (a subset of the Workers `SqlStorage`; a plain SQLite passes in tests). */
export interface SqlDb {
  exec(query: string, ...bindings: SqlValue[]): { toArray(): Record<string, unknown>[] };
}

/** The key/value table every migrated database has; the runner creates it first to read the version from. */
export const META_TABLE = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)";

export interface MigrationOptions {
  /** `meta` key holding the count of migrations applied. */
  versionKey: string;
  /** Names the database in the error for a schema newer than this build. */
  what: string;
}

/**
 * Applies the migrations the database has not seen, in order, and records the new version; returns
 * the version it was at. Run it inside one transaction (or a Durable Object's input gate) so a
 * failed migration leaves the old schema and version.
 */
export function runMigrations(
  sql: SqlDb,
  migrations: readonly (readonly string[])[],
  { versionKey, what }: MigrationOptions,
): number {
  sql.exec(META_TABLE);
  const row = sql.exec("SELECT value FROM meta WHERE key = ?", versionKey).toArray()[0];
  const from = row ? Number(row.value) : 0;
  if (!Number.isInteger(from) || from < 0 || from > migrations.length) {
    throw new Error(`${what} has schema version ${String(row?.value)}; this build knows 0…${migrations.length}`);
  }
  for (let v = from; v < migrations.length; v++) for (const stmt of migrations[v]) sql.exec(stmt);
  if (from !== migrations.length) {
    sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", versionKey, String(migrations.length));
  }
  return from;
}
