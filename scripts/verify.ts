/**
 * `npm run verify -- <fixture-dir> [--hosts N] [--stages S] [--head-shards M] [--expert-slices K]`:
 * runs a golden fixture (HF config.json +
 * safetensors + golden.json, format in the fixtures README) through the real serving path —
 * the bundled Worker in workerd, Coordinator and ExpertHost Durable Objects, R2 — and compares:
 * logits of every prompt position (atol 1e-4), greedy tokens (exact, through the KV-cache decode
 * path and through POST /v1/completions), expert ids per token of every MoE layer (exact), and
 * the MoE block output for the golden block input (atol 1e-5). Exits 1 when outside tolerance.
 * `--stages S` forces the dense layers onto S StageHost pipeline stages (S = layers: one each);
 * `--head-shards M` forces the output head onto M HeadHost vocabulary shards;
 * `--expert-slices K` splits every routed expert into K slices over the ExpertHosts (EXPERT_SLICES).
 */
import { readFileSync } from "node:fs";
import { basename, resolve } from "node:path";
import { verifyFixture } from "./lib/verify-lib";
if (process.argv.includes("--help") || process.argv.includes("-h")) {
  console.log(
    "usage: npm run verify -- <fixture-dir> [--hosts N] [--stages S] [--head-shards M] [--expert-slices K]\n" +
      "  Runs a golden fixture through the real serving path; compares logits, greedy tokens, routing.\n" +
      "  --expert-slices K splits every routed expert into K slices (partial down-projections summed).\n" +
      "  e.g. npm run verify -- ../shared/fixtures/mixtral-tiny",
  );
  process.exit(0);
}

const args = process.argv.slice(2);
const dir = args.find((a, i) => !a.startsWith("--") && !flagValuesOf(args).has(i));
const hostsAt = args.indexOf("--hosts");
const hosts = hostsAt >= 0 ? Number(args[hostsAt + 1]) : 2;
const stagesAt = args.indexOf("--stages");
const stages = stagesAt >= 0 ? Number(args[stagesAt + 1]) : 0;
const headAt = args.indexOf("--head-shards");
const headShards = headAt >= 0 ? Number(args[headAt + 1]) : 0;
const slicesAt = args.indexOf("--expert-slices");
const expertSlices = slicesAt >= 0 ? Number(args[slicesAt + 1]) : 0;
if (!dir) {
  console.error(
    "usage: npm run verify -- <fixture-dir> [--hosts N] [--stages S] [--head-shards M] [--expert-slices K]\n" +
      "  e.g. npm run verify -- ../shared/fixtures/mixtral-tiny",
  );
  process.exit(2);
}
if (!Number.isInteger(hosts) || hosts < 1) {
  console.error(`--hosts must be an integer ≥ 1, got ${args[hostsAt + 1]}`);
  process.exit(2);
}
if (!Number.isInteger(stages) || stages < 0) {
  console.error(`--stages must be an integer ≥ 0 (0 = as deployed), got ${args[stagesAt + 1]}`);
  process.exit(2);
}
if (!Number.isInteger(headShards) || headShards < 0) {
  console.error(`--head-shards must be an integer ≥ 0 (0 = as deployed), got ${args[headAt + 1]}`);
  process.exit(2);
}
if (!Number.isInteger(expertSlices) || expertSlices < 0) {
  console.error(`--expert-slices must be an integer ≥ 0 (0 = as deployed), got ${args[slicesAt + 1]}`);
  process.exit(2);
}
try {
  readFileSync(resolve(dir, "golden.json"));
} catch {
  console.error(
    `${dir}: no golden.json here; verify needs a fixture directory (config.json, safetensors, golden.json)`,
  );
  process.exit(2);
}
const report = await verifyFixture(resolve(dir), {
  hosts,
  stages,
  headShards,
  expertSlices,
  log: (line) => console.log(line),
});
console.log(`\n${basename(resolve(dir))}: ${report.pass ? "PASS" : "FAIL"}`);
process.exit(report.pass ? 0 : 1);

/** Indices of the values that follow value-taking flags (so `--hosts 2 dir` finds `dir`). */
function flagValuesOf(argv: string[]): Set<number> {
  const out = new Set<number>();
  argv.forEach((a, i) => {
    if (a === "--hosts" || a === "--stages" || a === "--head-shards" || a === "--expert-slices") out.add(i + 1);
  });
  return out;
}
