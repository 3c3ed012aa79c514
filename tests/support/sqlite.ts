/**
 * @module An in-memory SQLite database (node:sqlite) behind the `SqlDb` interface the Coordinator's
 * store is written against, counting the statements that write — to test migrations and that
 * only changed rows are written, outside workerd.
 */
import { DatabaseSync } from "node:sqlite";
import type { SqlDb } from "../../src/platform/sql-migrations";

export interface MemorySql {
  sql: SqlDb;
  transaction: (fn: () => void) => void;
  /** INSERT / UPDATE / DELETE statements run so far, by table. */
  writes: Map<string, number>;
  close(): void;
}

export function memorySql(): MemorySql {
  const db = new DatabaseSync(":memory:");
  const writes = new Map<string, number>();
  const sql: SqlDb = {
    exec(query, ...bindings) {
      const m = /^\s*(?:INSERT(?: OR \w+)? INTO|UPDATE|DELETE FROM)\s+(\w+)/i.exec(query);
      if (m) writes.set(m[1], (writes.get(m[1]) ?? 0) + 1);
      const rows = db.prepare(query).all(...bindings) as Record<string, unknown>[];
      return { toArray: () => rows };
    },
  };
  const transaction = (fn: () => void): void => {
    db.exec("BEGIN");
    try {
      fn();
      db.exec("COMMIT");
    } catch (err) {
      db.exec("ROLLBACK");
      throw err;
    }
  };
  return { sql, transaction, writes, close: () => db.close() };
}
