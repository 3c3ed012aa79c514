/**
 * An ExpertHost's assignment on a plain SQLite: the shared migration runner creates it, `replace`
 * writes only the rows that change, and another model's assignment replaces the whole table.
 */
import { afterEach, describe, expect, it } from "vitest";
import { HostAssignment } from "../../../src/experts/host-assignment";
import { memorySql, type MemorySql } from "../../support/sqlite";

let db: MemorySql;
afterEach(() => db?.close());

const refs = (...xs: [number, number][]) => xs.map(([layer, expert]) => ({ layer, expert }));

describe("HostAssignment", () => {
  it("replaces the assignment writing only the rows that changed", () => {
    db = memorySql();
    const a = new HostAssignment(db.sql);
    a.init();
    a.replace("m", refs([0, 1], [0, 2], [1, 3]));
    db.writes.clear();
    a.replace("m", refs([0, 1], [0, 2], [1, 4]));
    expect(db.writes.get("assignment")).toBe(2); // one delete, one insert
    db.writes.clear();
    a.replace("m", refs([0, 1], [0, 2], [1, 4])); // a reconcile that confirms
    expect(db.writes.get("assignment")).toBeUndefined();
    const again = new HostAssignment(db.sql);
    again.init();
    expect(again.list()).toEqual(refs([0, 1], [0, 2], [1, 4]));
    expect(again.has("m", 1, 4)).toBe(true);
  });

  it("starts afresh for another model, and migrates once", () => {
    db = memorySql();
    const a = new HostAssignment(db.sql);
    a.init();
    a.replace("m", refs([0, 1]));
    a.replace("n", refs([2, 2]));
    expect(a.model).toBe("n");
    expect(a.has("m", 0, 1)).toBe(false);
    const rows = db.sql.exec("SELECT model FROM assignment").toArray();
    expect(rows).toEqual([{ model: "n" }]);
    const meta = db.sql.exec("SELECT value FROM meta WHERE key = 'schema_version'").toArray();
    expect(meta).toEqual([{ value: "1" }]);
    new HostAssignment(db.sql).init(); // already at version 1: nothing re-run
    expect(db.sql.exec("SELECT value FROM meta WHERE key = 'schema_version'").toArray()).toEqual([{ value: "1" }]);
  });
});
