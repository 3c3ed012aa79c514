/**
 * `npm run bench:batching [-- --tokens N --streams 1,4,16 --runs R --out FILE]`: aggregate decode
 * throughput of the demo model in real workerd with N concurrent greedy streams, BATCHING on vs
 * off, both servers up at once and measured alternately in the same run (never at the same time).
 * Bounded: N ≤ 64 streams of ≤ 256 tokens, R ≤ 5 rounds. Every stream's token ids are compared
 * with the same request run alone (BATCHING off): a changed token is reported and fails the run.
 * Prints, per N and setting, aggregate tokens/s (all streams' tokens ÷ the wall time from the
 * first request to the last token), the server's CPU time per token (its workerd processes, from
 * /proc: what a shared machine's load does not inflate), median time to first token and failed
 * requests; writes JSON.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { startLocalWorker, ROOT, type LocalWorker } from "./lib/local-worker";
import { seedModelDir } from "./lib/seed-lib";
import { makeDemoModel } from "./lib/demo-model";

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  console.log(
    "usage: npm run bench:batching [-- --tokens 64] [--streams 1,4,16] [--runs 1] [--out FILE] [--var NAME=VALUE]\n" +
      "  Aggregate decode tokens/s of N concurrent greedy streams on the demo, BATCHING on vs off.\n" +
      "  --var NAME=VALUE  another var for both servers, repeatable (e.g. --var PIPELINE_STAGES=2)",
  );
  process.exit(0);
}
const { values } = parseArgs({
  options: {
    tokens: { type: "string", default: "64" },
    streams: { type: "string", default: "1,4,16" },
    runs: { type: "string", default: "1" },
    out: { type: "string", default: join("bench-results", "batching.json") },
    var: { type: "string", multiple: true, default: [] },
  },
});
const EXTRA_VARS: Record<string, string> = {};
for (const v of values.var) {
  const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(v);
  if (!m || m[1] === "BATCHING") {
    console.error(`--var takes NAME=VALUE (not BATCHING), got "${v}"`);
    process.exit(2);
  }
  EXTRA_VARS[m[1]] = m[2];
}
const TOKENS = Math.min(256, Math.max(1, Number(values.tokens)));
const STREAMS = values.streams.split(",").map((s) => Math.min(64, Math.max(1, Number(s))));
const RUNS = Math.min(5, Math.max(1, Number(values.runs)));
const MODEL = "demo-mixtral";
const DIR = join(ROOT, "demo-model");

interface Stream {
  ids: number[];
  ttftMs: number;
  ok: boolean;
}

/** One streamed greedy completion of prompt i; a broken connection counts as a failed request. */
async function stream(w: LocalWorker, i: number): Promise<Stream> {
  try {
    return await streamOnce(w, i);
  } catch (err) {
    console.error(`request ${i} failed: ${err instanceof Error ? `${err.message} (${String(err.cause)})` : err}`);
    return { ids: [], ttftMs: 0, ok: false };
  }
}

async function streamOnce(w: LocalWorker, i: number): Promise<Stream> {
  const t0 = performance.now();
  const prompt = `Request ${i}: the quick brown fox jumps over the lazy dog, number ${i * 7 + 3}.`;
  const res = await w.fetch("/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, max_tokens: TOKENS, temperature: 0, stream: true }),
  });
  if (res.status !== 200 || !res.body) return { ids: [], ttftMs: 0, ok: false };
  const ids: number[] = [];
  let ttftMs = 0;
  let buf = "";
  let ok = true;
  const decoder = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let at: number;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, at).replace(/^data: ?/, "");
      buf = buf.slice(at + 2);
      if (line === "[DONE]" || line === "") continue;
      const j = JSON.parse(line) as { error?: unknown; choices?: { token_ids?: number[] }[] };
      if (j.error) ok = false;
      const got = j.choices?.[0]?.token_ids ?? [];
      if (got.length > 0 && ids.length === 0) ttftMs = performance.now() - t0;
      ids.push(...got);
    }
  }
  return { ids, ttftMs, ok: ok && ids.length === TOKENS };
}

async function round(
  w: LocalWorker,
  n: number,
): Promise<{ tokS: number; ttftMs: number; failed: number; streams: Stream[] }> {
  const t0 = performance.now();
  const streams = await Promise.all(Array.from({ length: n }, (_, i) => stream(w, i)));
  const wall = (performance.now() - t0) / 1000;
  const tokens = streams.reduce((s, x) => s + x.ids.length, 0);
  const ttfts = streams.map((s) => s.ttftMs).sort((a, b) => a - b);
  return {
    tokS: tokens / wall,
    ttftMs: ttfts[Math.floor(ttfts.length / 2)],
    failed: streams.filter((s) => !s.ok).length,
    streams,
  };
}

/** Process ids of this machine's workerd servers (a server started between two calls is the new ones). */
function workerdPids(): Set<number> {
  const pids = new Set<number>();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, "utf8");
      if (cmd.includes("workerd") && cmd.includes("serve")) pids.add(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** CPU seconds (user + system) the processes used so far; 0 where /proc cannot say (not Linux). */
function cpuSeconds(pids: Iterable<number>): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
      ticks += Number(f[11]) + Number(f[12]);
    } catch {
      // gone
    }
  }
  return ticks / 100;
}

makeDemoModel(DIR, { log: () => {} });
const serverPids: Record<string, number[]> = {};
const servers: Record<string, LocalWorker> = {};
try {
  for (const batching of ["on", "off"]) {
    const had = existsSync("/proc") ? workerdPids() : new Set<number>();
    const w = await startLocalWorker({
      vars: { DEFAULT_MODEL: MODEL, BATCHING: batching, RATE_LIMIT_ENABLED: "false", ...EXTRA_VARS },
    });
    servers[batching] = w;
    serverPids[batching] = existsSync("/proc") ? [...workerdPids()].filter((p) => !had.has(p)) : [];
    await seedModelDir(await w.bucket(), DIR, MODEL);
    await stream(w, 0); // loads the model and places its experts
    console.log(`BATCHING=${batching}: seeded and warmed up`);
  }
  const reference: number[][] = [];
  const maxN = Math.max(...STREAMS);
  for (let i = 0; i < maxN; i++) reference.push((await stream(servers.off, i)).ids);
  const results: {
    streams: number;
    batching: string;
    tokS: number;
    cpuMsPerToken: number;
    ttftMs: number;
    failed: number;
    changed: number;
  }[] = [];
  let changedTotal = 0;
  for (const n of STREAMS) {
    for (let r = 0; r < RUNS; r++) {
      for (const batching of ["on", "off"]) {
        await stream(servers[batching], 0); // untimed: hosts idle since the last round may have been evicted
        const cpu0 = cpuSeconds(serverPids[batching]);
        const res = await round(servers[batching], n);
        const tokens = res.streams.reduce((a, x) => a + x.ids.length, 0);
        const cpuMsPerToken = ((cpuSeconds(serverPids[batching]) - cpu0) * 1000) / Math.max(1, tokens);
        const changed = res.streams.filter((s, i) => s.ids.join() !== reference[i].join()).length;
        changedTotal += changed;
        results.push({
          streams: n,
          batching,
          tokS: res.tokS,
          cpuMsPerToken,
          ttftMs: res.ttftMs,
          failed: res.failed,
          changed,
        });
        console.log(
          `N=${String(n).padStart(2)} BATCHING=${batching.padEnd(3)} ` +
            `${res.tokS.toFixed(1).padStart(7)} tok/s aggregate, ${cpuMsPerToken.toFixed(2)} server CPU ms/token, ` +
            `TTFT p50 ${res.ttftMs.toFixed(0)} ms, failed ${res.failed}, changed tokens in ${changed} streams`,
        );
      }
    }
  }
  const out = {
    date: new Date().toISOString(),
    cpus: cpus().length,
    loadavg: loadavg()[0],
    tokens: TOKENS,
    vars: EXTRA_VARS,
    results,
  };
  mkdirSync(dirname(values.out), { recursive: true });
  writeFileSync(values.out, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`wrote ${values.out} (load average ${loadavg()[0].toFixed(1)} on ${cpus().length} cores)`);
  if (changedTotal > 0) process.exitCode = 1;
} finally {
  await Promise.all(Object.values(servers).map((w) => w.dispose()));
}
