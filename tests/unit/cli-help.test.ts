/**
 * Every npm script answers `--help` with a usage line and exit 0. Scripts that run a file in
 * scripts/ are spawned with tsx directly (what `npm run X -- --help` ends up running, minus the
 * build step some of them do first); the rest hand their arguments to a tool (wrangler, tsc,
 * vitest) whose own --help answers, and are listed here so a new script cannot slip through.
 */
import { describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";

const ROOT = join(import.meta.dirname, "..", "..");
const TSX = join(ROOT, "node_modules", ".bin", "tsx");
const scripts = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { scripts: Record<string, string> })
  .scripts;
/** npm scripts that end in another tool's CLI, which answers --help itself. */
const TOOL_PASSTHROUGH = new Set(["build", "dev", "deploy", "typecheck", "test", "lint", "format"]);

const entries = Object.entries(scripts).flatMap(([name, cmd]) => {
  const m = /(?:^|&&\s*)tsx (scripts\/[\w.-]+\.ts)\s*$/.exec(cmd);
  return m ? [{ name, file: m[1] }] : [];
});

describe("CLI --help", () => {
  it("covers every npm script", () => {
    const covered = new Set(entries.map((e) => e.name));
    const missing = Object.keys(scripts).filter((s) => !covered.has(s) && !TOOL_PASSTHROUGH.has(s));
    expect(missing).toEqual([]);
    expect(entries.length).toBeGreaterThanOrEqual(10);
  });

  it.each(entries)(
    "npm run $name -- --help prints usage and exits 0",
    async ({ file }) => {
      const run = promisify(execFile);
      const { stdout } = await run(TSX, [file, "--help"], {
        cwd: ROOT,
        timeout: 60_000,
        env: { ...process.env, NO_COLOR: "1" },
      });
      expect(stdout).toMatch(/^usage: /im);
    },
    90_000,
  );
});
