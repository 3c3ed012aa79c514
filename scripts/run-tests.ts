/**
 * The test command (`npm test`): runs every vitest project and ends with the plain line
 * `N passed, N failed` that CI reads (vitest's own summary is not one CI recognises).
 * Extra arguments go to vitest (e.g. `npm test -- tests/unit/kernels`).
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  console.log(
    "usage: npm test [-- <vitest args>]   e.g. npm test -- tests/unit/kernels, npm test -- --project node\n" +
      "  Builds, lints (npm run lint), runs every vitest project and ends with the line `N passed, N failed`.\n" +
      "  The dashboard browser test needs Chromium at /usr/bin/chromium (or CHROMIUM_PATH).",
  );
  process.exit(0);
}

// The linters are part of the test command, so CI enforces them; a lint failure counts as one
// failed test in the closing line. Skipped when vitest is given arguments (a focused run).
let lintFailed = 0;
if (process.argv.length <= 2) {
  const lint = spawnSync("npm", ["run", "lint", "--silent"], { stdio: "inherit" });
  if (lint.status !== 0) {
    lintFailed = 1;
    console.error("npm run lint failed (Biome, line length or types): see above");
  }
}

const dir = mkdtempSync(join(tmpdir(), "edge-moe-tests-"));
const report = join(dir, "vitest.json");
const run = spawnSync(
  "vitest",
  ["run", "--reporter=default", "--reporter=json", `--outputFile.json=${report}`, ...process.argv.slice(2)],
  {
    stdio: "inherit",
    env: { ...process.env, CLOUDFLARE_CF_FETCH_ENABLED: "false", WRANGLER_SEND_METRICS: "false" },
  },
);
let passed = 0;
let failed = 0;
let skipped = 0;
try {
  const r = JSON.parse(readFileSync(report, "utf8")) as {
    numPassedTests: number;
    numFailedTests: number;
    numPendingTests: number;
    numTodoTests: number;
    testResults: { status: string; assertionResults: unknown[] }[];
  };
  passed = r.numPassedTests;
  failed = r.numFailedTests;
  skipped = r.numPendingTests + r.numTodoTests;
  // A test file that failed to load has no assertion results; count it as a failure.
  failed += r.testResults.filter((f) => f.status === "failed" && f.assertionResults.length === 0).length;
} catch {
  failed = Math.max(failed, 1);
  console.error("no vitest report was written: the run crashed before finishing");
}
rmSync(dir, { recursive: true, force: true });
if (run.status !== 0 && failed === 0) failed = 1;
failed += lintFailed;
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
process.exit(failed > 0 || run.status !== 0 ? 1 : 0);
