/**
 * @module The experts an ExpertHost is assigned, kept in the DO's SQLite so they outlive its
 * isolate. The host serves only these: a Worker with a stale placement is refused instead of
 * re-loading a replica the Coordinator just removed. The rule that changes the assignment is
 * explicit and comes from the Coordinator alone: `load` adds, `unload` removes, `reconcile`
 * replaces it whole (writing only the rows that change).
 */
import { runMigrations, type SqlDb } from "../platform/sql-migrations";
import { expertKey, type ExpertRef } from "./protocol";

/** Schema migrations, applied in order by the shared runner; `meta.schema_version` counts those applied. */
const MIGRATIONS: readonly (readonly string[])[] = [
  [
    `CREATE TABLE IF NOT EXISTS assignment (
     model TEXT NOT NULL, layer INTEGER NOT NULL, expert INTEGER NOT NULL,
     PRIMARY KEY (model, layer, expert))`,
  ],
];

export class HostAssignment {
  /** "layer:expert" of the assigned experts of `#model`, mirrored from SQLite. */
  readonly #keys = new Set<string>();
  #model: string | null = null;

  constructor(private readonly sql: SqlDb) {}

  /** Brings the schema up to date and reads the assignment (run under the DO's input gate). */
  init(): void {
    runMigrations(this.sql, MIGRATIONS, { versionKey: "schema_version", what: "ExpertHost assignment storage" });
    this.#keys.clear();
    this.#model = null;
    for (const r of this.sql.exec("SELECT model, layer, expert FROM assignment").toArray()) {
      this.#model = String(r.model);
      this.#keys.add(expertKey(Number(r.layer), Number(r.expert)));
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

  /**
   * The assignment becomes exactly `refs` of `model` (an instance serves one model). Only the rows
   * that differ are written: a reconcile usually confirms what the host already holds.
   */
  replace(model: string, refs: readonly ExpertRef[]): void {
    if (this.#model !== model) {
      this.sql.exec("DELETE FROM assignment");
      this.#keys.clear();
      this.#model = model;
    }
    const want = new Map(refs.map((r) => [expertKey(r.layer, r.expert), r]));
    for (const key of [...this.#keys]) {
      if (want.has(key)) continue;
      const [layer, expert] = key.split(":").map(Number);
      this.sql.exec("DELETE FROM assignment WHERE model = ? AND layer = ? AND expert = ?", model, layer, expert);
      this.#keys.delete(key);
    }
    for (const [key, { layer, expert }] of want) {
      if (this.#keys.has(key)) continue;
      this.sql.exec("INSERT OR IGNORE INTO assignment (model, layer, expert) VALUES (?, ?, ?)", model, layer, expert);
      this.#keys.add(key);
    }
  }
}
