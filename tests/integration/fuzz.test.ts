/**
 * The shortened fuzz run (`npm run fuzz` sends 10,000): the same seeded hostile requests against a
 * local server — no 5xx, no dropped connection, every error an OpenAI-style JSON body naming the
 * field where one applies.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { runFuzz, startFuzzTarget, summary } from "../../scripts/lib/fuzz-run";

let w: LocalWorker;
beforeAll(async () => {
  w = await startFuzzTarget();
});
afterAll(() => w?.dispose());

it("answers 500 hostile requests without a 5xx, each error a JSON body naming the field", async () => {
  const r = await runFuzz(w, { count: 500, seed: 1, concurrency: 6, deadlineMs: 100_000 });
  console.log(summary(r));
  expect(r.sent).toBe(500);
  expect(
    r.violations.map((v) => `${v.problem} ← ${v.case.method} ${v.case.path} [${v.case.kind}]`).slice(0, 10),
  ).toEqual([]);
  expect(r.serverErrors).toBe(0);
  // The run reaches every kind of refusal, not just one.
  for (const s of ["200", "400", "401", "404", "413", "415"])
    expect(r.byStatus[s] ?? 0, `status ${s}`).toBeGreaterThan(0);
}, 120_000);
