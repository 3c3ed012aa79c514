/**
 * `npm run fuzz [-- --count 10000 --seed 1 --concurrency 8 --seconds 900]`: starts edge-moe in
 * local workerd on loopback (its own server, stopped at the end), sends `count` malformed and
 * hostile requests from a seeded generator, and checks that none gets a 5xx and every error is an
 * OpenAI-style JSON body naming the field. Prints counts by status and by kind and a summary line;
 * exits 1 on any violation or if the deadline stopped it short of `count`.
 */
import { positiveIntOptions } from "./lib/cli-args";
import { runFuzz, startFuzzTarget, summary } from "./lib/fuzz-run";

const USAGE = `usage: npm run fuzz [-- --count N --seed S --concurrency C --seconds T]

Starts edge-moe in local workerd on loopback, sends N (default 10000) malformed and hostile
requests from a seeded generator, and checks that none gets a 5xx and every error is an
OpenAI-style JSON body naming the field. Exits 1 on any violation.`;

const opts = positiveIntOptions(USAGE, { count: 10000, seed: 1, concurrency: 8, seconds: 900 });
const { count, seed, concurrency } = opts;
const deadlineMs = opts.seconds * 1000;

console.log(`starting edge-moe in local workerd (loopback) for ${count} fuzz requests, seed ${seed} …`);
const w = await startFuzzTarget();
let failed = false;
try {
  console.log(`target ${w.url.href}`);
  const r = await runFuzz(w, { count, seed, concurrency, deadlineMs, log: console.log });
  console.log("by status:");
  for (const [s, n] of Object.entries(r.byStatus).sort()) console.log(`  ${s.padEnd(9)} ${n}`);
  console.log("by kind:");
  for (const [k, n] of Object.entries(r.byKind).sort((a, b) => b[1] - a[1])) console.log(`  ${k.padEnd(18)} ${n}`);
  for (const v of r.violations.slice(0, 20)) {
    console.log(
      `VIOLATION ${v.problem}\n  ${v.case.method} ${v.case.path.slice(0, 120)} [${v.case.kind}] ` +
        `body ${String(v.case.body ?? "").slice(0, 160)}`,
    );
  }
  if (r.violations.length > 20) console.log(`… and ${r.violations.length - 20} more violations`);
  if (r.sent < count)
    console.log(`stopped at the ${deadlineMs / 1000} s deadline after ${r.sent} of ${count} requests`);
  console.log(summary(r));
  failed = r.violations.length > 0 || r.sent < count;
} finally {
  await w.dispose();
}
process.exit(failed ? 1 : 0);
