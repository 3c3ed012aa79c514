/**
 * @module The experts an ExpertHost is assigned, kept in the DO's SQLite so they outlive its
 * isolate. The host serves only these: a Worker with a stale placement is refused instead of
 * re-loading a replica the Coordinator just removed. The rule that changes the assignment is
 * explicit and comes from the Coordinator alone: `load` adds, `unload` removes, `reconcile`
 * replaces it whole.
 */
import { expertKey, type ExpertRef } from "./protocol";

/** Schema migrations, applied in order; `meta.schema_version` counts those applied. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE IF NOT EXISTS assignment (
     model TEXT NOT NULL, layer INTEGER NOT NULL, expert INTEGER NOT NULL,
     PRIMARY KEY (model, layer, expert))`,
];

export class HostAssignment {
  /** "layer:expert" of the assigned experts of `#model`, mirrored from SQLite. */
  readonly #keys = new Set<string>();
  #model: string | null = null;

  constructor(private readonly sql: SqlStorage) {}

  /** Brings the schema up to date and reads the assignment (run under the DO's input gate). */
  init(): void {
    this.sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)");
    const row = this.sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = 'schema_version'").toArray()[0];
    let version = row ? Number(row.value) : 0;
    for (; version < MIGRATIONS.length; version++) {
      this.sql.exec(MIGRATIONS[version]);
      this.sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", String(version + 1));
    }
    this.#keys.clear();
    this.#model = null;
    type Row = { model: string; layer: number; expert: number };
    const rows = this.sql.exec<Row>("SELECT model, layer, expert FROM assignment");
    for (const r of rows) {
      this.#model = r.model;
      this.#keys.add(expertKey(r.layer, r.expert));
    }
  }

  /** The model the assignment is for (null: never assigned anything). */
  get model(): string | null {
    return this.#model;
  }

  has(model: string, layer: number, expert: number): boolean {
    return this.#model === model && this.#keys.has(expertKey(layer, expert));
  }

  list(): ExpertRef[] {
    return [...this.#keys]
      .map((k) => {
        const [layer, expert] = k.split(":").map(Number);
        return { layer, expert };
      })
      .sort((a, b) => a.layer - b.layer || a.expert - b.expert);
  }

  add(model: string, refs: readonly ExpertRef[]): void {
    if (this.#model !== model) this.replace(model, []);
    for (const { layer, expert } of refs) {
      this.sql.exec("INSERT OR IGNORE INTO assignment (model, layer, expert) VALUES (?, ?, ?)", model, layer, expert);
      this.#keys.add(expertKey(layer, expert));
    }
  }

  remove(model: string, refs: readonly ExpertRef[]): void {
    if (this.#model !== model) return;
    for (const { layer, expert } of refs) {
      this.sql.exec("DELETE FROM assignment WHERE model = ? AND layer = ? AND expert = ?", model, layer, expert);
      this.#keys.delete(expertKey(layer, expert));
    }
  }

  /** The assignment becomes exactly `refs` of `model` (an instance serves one model). */
  replace(model: string, refs: readonly ExpertRef[]): void {
    this.sql.exec("DELETE FROM assignment");
    this.#keys.clear();
    this.#model = model;
    for (const { layer, expert } of refs) {
      this.sql.exec("INSERT OR IGNORE INTO assignment (model, layer, expert) VALUES (?, ?, ?)", model, layer, expert);
      this.#keys.add(expertKey(layer, expert));
    }
  }
}
