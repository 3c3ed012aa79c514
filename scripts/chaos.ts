/**
 * `npm run chaos [-- --streams 8 --max-tokens 64 --rounds 3]`: the full chaos run of issue 12
 * (scripts/lib/chaos-lib.ts; the test command runs a short form). Starts edge-moe in local workerd
 * on loopback with the mixtral-tiny fixture, then per round: concurrent seeded streams while one
 * replica of each hot expert fails, an ExpertHost and the Coordinator are evicted, and R2 errors
 * hit an evicted host. Prints each phase's figures; exits 1 on any lost or different answer.
 */
import { positiveIntOptions } from "./lib/cli-args";
import { runChaos, startChaosWorker, type PhaseReport } from "./lib/chaos-lib";

const USAGE = `usage: npm run chaos [-- --streams N --max-tokens N --rounds N]

Starts edge-moe in local workerd (loopback, the mixtral-tiny fixture) and, per round, runs N
(default 8) concurrent seeded streams of --max-tokens (default 64) tokens while one replica of each
hot expert fails, an ExpertHost is evicted mid-stream and the Coordinator is evicted during a
make-before-break; then evicts a host whose R2 reads fail. Checks: every request completes with the
undisturbed run's tokens where a replica exists; where none does, a clean 503 with Retry-After (or
the same error in-band once a stream has started); all complete again once R2 answers. --rounds
(default 3) repeats it on the same deployment. Exits 1 on any violation.`;

const {
  streams,
  "max-tokens": maxTokens,
  rounds,
} = positiveIntOptions(USAGE, {
  streams: 8,
  "max-tokens": 64,
  rounds: 3,
});

const line = (name: string, p: PhaseReport) =>
  `  ${name.padEnd(11)} ${String(p.requests).padStart(5)} requests: ${p.ok} identical, ${p.clean503} clean 503, ` +
  `${p.different} different, ${p.failed} failed`;

console.log(
  `starting edge-moe in local workerd (loopback): ${rounds} rounds of ${streams} streams × ${maxTokens} tokens`,
);
const w = await startChaosWorker();
let violations = 0;
try {
  for (let round = 1; round <= rounds; round++) {
    const r = await runChaos(w, { streams, maxTokens, log: (l) => console.log(`  ${l}`) });
    const skipped = r.hostFaults ? "" : "; no replica-only host in time, host faults skipped";
    console.log(
      `round ${round} (${(r.ms / 1000).toFixed(1)} s, ${r.streams} streams among the first phase${skipped}):`,
    );
    console.log(line("replicated", r.replicated));
    console.log(line("r2 outage", r.r2));
    console.log(line("after", r.after));
    for (const e of [...r.replicated.events, ...r.r2.events]) console.log(`    ${e}`);
    const bad = [...r.replicated.failures, ...r.r2.failures, ...r.after.failures];
    bad.push(...(r.replicated.clean503 > 0 ? [`${r.replicated.clean503} refused where a replica exists`] : []));
    bad.push(...(r.after.ok < r.after.requests ? ["requests failed after R2 answered again"] : []));
    for (const b of bad.slice(0, 20)) console.log(`  VIOLATION ${b}`);
    violations += bad.length;
  }
} finally {
  await w.dispose();
}
console.log(violations === 0 ? "chaos: 0 violations" : `chaos: ${violations} violations`);
process.exit(violations === 0 ? 0 : 1);
