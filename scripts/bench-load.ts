/**
 * `npm run bench:load`: many users at once. By default starts the demo twice in local workerd
 * (the bundled Worker, as bench:e2e and the tests do, with npm start's vars: the demo model, no
 * rate limit), once with `BATCHING=on` and once with `BATCHING=off`, one after the other; or drives
 * one running server with `--url` (loopback only). Every request has its own prompt (distinct
 * users; `--repeat-prompts`: the earlier few repeated prompts). Per concurrency level: aggregate
 * decode tokens/s, TTFT and time per output token p50/p99, failed requests and refusals (status,
 * code, Retry-After), tokens lost or changed against each request run alone, and the placement
 * versions seen. Prints a table and writes JSON (default bench-results/load.json).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import {
  placementShape,
  runLoad,
  waitForRelease,
  type LevelReport,
  type LoadOptions,
  type LoadReport,
  type PlacementShape,
} from "./lib/bench-load";
import { alternateSingle, type AlternateReport } from "./lib/alternate-single";
import { loopbackUrl, resetPrefixCache } from "./lib/load-client";
import { memoryTable } from "./lib/host-memory";
import { startLocalWorker, ADMIN_TOKEN_FOR_TESTS, ROOT, type LocalWorker } from "./lib/local-worker";
import { seedModelDir } from "./lib/seed-lib";
import { makeDemoModel } from "./lib/demo-model";
import { progressBar, wantsHelp } from "./lib/progress";

const USAGE = `usage: npm run bench:load [-- --concurrency 1,4,16,64] [--tokens N|default] [--requests N]
                          [--seconds S] [--repeat-prompts [--phase-seconds S]] [--batching on,off]
                          [--url URL] [--model ID] [--api-key KEY] [--admin-token TOKEN]
                          [--no-reference] [--memory] [--pass-rows LIST] [--after-burst] [--out FILE]
                          [--var NAME=VALUE]
  N concurrent streaming chat clients (greedy) with a skewed, moving expert load, per level:
  aggregate decode tokens/s, TTFT and time per output token p50/p99, failed requests and
  refusals (status, Retry-After), tokens lost or changed against the same request run alone,
  placement versions seen. Bounded: each level sends at most --requests requests and starts none
  after --seconds; it stops by itself.
  Prompts are distinct: every request of a run has its own, numbered ("17. apple apple …") and
  keeping its phase's hot experts, which move every max(4, N) requests. Each level's requests are
  first run alone, one at a time (as many references as requests: 2 × N, at least 8, or
  --requests), then the server's kept prefix-sharing donors are released (POST
  /admin/prefix-cache/reset; own servers have the admin token, with --url pass --admin-token,
  else a warning: requests may copy the K/V of their references or of an earlier run's
  identical prompts), so no level measures copies.
  --concurrency L     levels, comma-separated, in order (default 1,4,16,64); a level may repeat
                      (1,16,1,16): each N > 1 is printed against the N = 1 level before it
  --tokens N          max_tokens per request (default 32); "default" sends none (default chats:
                      the server's DEFAULT_MAX_TOKENS, bounded by what the deployment fits)
  --requests N        requests per level (default 2 × N, at least 8)
  --seconds S         time limit per level (default 60; running requests get 30 s more, then abort)
  --repeat-prompts    the earlier workload: each phase's 4 prompts repeated, 8 references run
                      once before the levels, no reset (with prefix sharing most prompt tokens
                      are then copies; for comparisons with earlier tables)
  --phase-seconds S   with --repeat-prompts: the hot experts move every S seconds (default 4)
  --batching LIST     own servers to start, in order, with the BATCHING var (default on,off)
  --url URL           drive this running server instead (loopback only, e.g. npm start's)
  --model ID          model (default: the server's default; own servers serve demo-mixtral)
  --api-key KEY       bearer key for /v1 when the server has API keys
  --admin-token T     read placement from /admin/placement (default: /v1/placement), and release
                      the kept prefix-sharing donors before each level
  --no-reference      skip running each request alone first (no lost/changed tokens check):
                      for runs that expect refusals or leave the length to the server
  --memory            after each level, every instance's peak memory from /admin/hosts, checked
                      against its budget and 128 MB (needs --admin-token with --url)
  --pass-rows LIST    own servers: one per value (and per --batching) with that DISPATCH_PASS_ROWS
                      (the dispatch's expert pass cost; 0 = rows only), e.g. 0,4 (default: the
                      deployed value). With --admin-token or own servers every level also reports
                      the ExpertHosts' expert passes (weight reads) and rows per pass
  --after-burst       after the levels (the first must be 1: the fresh placement's single stream;
                      the later ones the burst), wait for the idle release (no replicated expert,
                      and no more instances listed or holding experts than before the levels,
                      then the placement unchanged for 15 s: the consolidation; at most
                      --release-seconds, default 90) and run one stream
                      again: prints its decode tok/s against the fresh one's and the instances
                      holding experts before / after the burst / after the release (needs
                      --admin-token with --url). The hot set then moves every 4 requests instead
                      of every --phase-seconds, so both single streams send the same requests.
                      Own servers also start a control server (same vars, never burst) during
                      the release and run one stream on both, request by request in turn
                      (16 each): after ÷ control, free of the machine's drift between the levels
  --release-seconds S how long --after-burst waits for the release (default 90)
  --out FILE          JSON result (default bench-results/load.json)
  --var NAME=VALUE    another var for the own servers, repeatable (e.g. --var PIPELINE_STAGES=2
                      to serve the demo on pipeline stages)
  Exits 1 when a stream lost or changed tokens, a request was neither complete nor refused with
  429/503 + Retry-After (a 500, a cut stream), or an instance's peak memory was over its budget.
  E.g. 16 concurrent default chats against npm start:
    npm run bench:load -- --url http://127.0.0.1:8787 --concurrency 16 --requests 16 \\
      --tokens default --no-reference --memory --admin-token "$(grep ADMIN_TOKEN .dev.vars | cut -d= -f2)"`;
if (wantsHelp()) {
  console.log(USAGE);
  process.exit(0);
}

const { values } = parseArgs({
  options: {
    concurrency: { type: "string", default: "1,4,16,64" },
    tokens: { type: "string", default: "32" },
    requests: { type: "string" },
    seconds: { type: "string", default: "60" },
    "repeat-prompts": { type: "boolean", default: false },
    "phase-seconds": { type: "string" },
    batching: { type: "string", default: "on,off" },
    url: { type: "string" },
    model: { type: "string" },
    "api-key": { type: "string" },
    "admin-token": { type: "string" },
    "no-reference": { type: "boolean", default: false },
    memory: { type: "boolean", default: false },
    "pass-rows": { type: "string" },
    "after-burst": { type: "boolean", default: false },
    "release-seconds": { type: "string", default: "90" },
    out: { type: "string", default: join("bench-results", "load.json") },
    var: { type: "string", multiple: true, default: [] },
  },
});

function fail(msg: string): never {
  console.error(`${msg}\n${USAGE}`);
  process.exit(2);
}
const positiveInt = (name: string, s: string) => {
  const v = Number(s);
  if (!Number.isInteger(v) || v < 1) fail(`--${name} must be a whole number ≥ 1, got "${s}"`);
  return v;
};
const levels = values.concurrency.split(",").map((s) => positiveInt("concurrency", s.trim()));
const tokens = values.tokens === "default" ? null : positiveInt("tokens", values.tokens);
const fixedRequests = values.requests === undefined ? null : positiveInt("requests", values.requests);
const seconds = positiveInt("seconds", values.seconds);
const repeatPrompts = values["repeat-prompts"];
if (values["phase-seconds"] !== undefined && !repeatPrompts)
  fail(
    "--phase-seconds moves the hot experts by time, which needs --repeat-prompts: distinct prompts are run " +
      "alone before their level, so their phases follow the request count (every max(4, N) requests)",
  );
const phaseSeconds = positiveInt("phase-seconds", values["phase-seconds"] ?? "4");
const batching = values.batching.split(",").map((s) => s.trim());
for (const b of batching) if (b !== "on" && b !== "off") fail(`--batching takes "on" and/or "off", got "${b}"`);
const extraVars: Record<string, string> = {};
for (const v of values.var) {
  const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(v);
  if (!m) fail(`--var takes NAME=VALUE, got "${v}"`);
  if (m[1] === "BATCHING") fail("--var BATCHING: use --batching");
  if (m[1] === "DISPATCH_PASS_ROWS" && values["pass-rows"]) fail("--var DISPATCH_PASS_ROWS: use --pass-rows");
  extraVars[m[1]] = m[2];
}
const passRows = values["pass-rows"]?.split(",").map((s) => s.trim()) ?? [null];
for (const p of passRows) if (p !== null && !(Number(p) >= 0)) fail(`--pass-rows takes numbers ≥ 0, got "${p}"`);
if (values.url && values["pass-rows"]) fail("--pass-rows starts own servers: leave out --url");
const releaseSeconds = positiveInt("release-seconds", values["release-seconds"]);
if (values["after-burst"] && (levels[0] !== 1 || levels.length < 2))
  fail("--after-burst needs --concurrency starting with 1 and a burst level after it, e.g. 1,16");
if (values["after-burst"] && values.url && !values["admin-token"])
  fail("--after-burst with --url needs --admin-token (it reads /admin/placement)");
if (values.url) {
  try {
    loopbackUrl(values.url);
  } catch (err) {
    fail((err as Error).message);
  }
  if (values.memory && !values["admin-token"]) fail("--memory with --url needs --admin-token (it reads /admin/hosts)");
}

/** --after-burst: requests per skew phase (the single-stream levels send 8: 4 of each phase). */
const AFTER_BURST_PHASE_REQUESTS = 4;

/** The CPU clock of the own server being measured (none with --url): levels report CPU ms per token. */
let ownServerCpu: (() => number | null) | undefined;

function options(
  url: string,
  model: string | undefined,
  adminToken: string | undefined,
  concurrency = levels,
  references = !values["no-reference"],
): LoadOptions {
  let bar = progressBar("load", 0);
  let barKey = "";
  return {
    url,
    model,
    concurrency,
    requests: fixedRequests ?? ((n) => Math.max(8, 2 * n)),
    maxTokens: tokens,
    references,
    repeatPrompts,
    memory: values.memory,
    levelMs: seconds * 1000,
    graceMs: 30_000,
    phaseMs: phaseSeconds * 1000,
    ...(values["after-burst"] ? { phaseRequests: AFTER_BURST_PHASE_REQUESTS } : {}),
    apiKey: values["api-key"],
    adminToken,
    serverCpuMs: ownServerCpu,
    onWarning: (m) => {
      bar.stop();
      console.warn(`  WARNING: ${m}`);
    },
    onProgress: (p) => {
      const key = `${p.stage}:${p.concurrency}`;
      if (key !== barKey) {
        bar.stop();
        barKey = key;
        const what =
          p.stage === "load"
            ? `N=${p.concurrency}`
            : repeatPrompts
              ? "reference runs (alone)"
              : `N=${p.concurrency} references (each request alone first)`;
        if (!process.stderr.isTTY) console.error(`  ${what}: ${p.total} requests …`);
        bar = progressBar(what, p.total, {
          format:
            `  ${what} [{bar}] {value}/{total} requests · {tokens} tokens · {failed} failed` +
            " · placement v{version}",
          payload: { tokens: 0, failed: 0, version: "?" },
        });
      }
      bar.update(p.done, { tokens: p.tokens, failed: p.failed, version: p.version ?? "?" });
      if (p.done === p.total) bar.stop();
    },
  };
}

/** Prompt tokens copied from live sessions (prefix sharing) of the level's prompt tokens. */
function sharedCell(l: LevelReport): string {
  if (l.promptTokens === null || l.sharedPromptTokens === null || l.promptTokens <= 0) return "—";
  return `${l.sharedPromptTokens} / ${l.promptTokens} (${((100 * l.sharedPromptTokens) / l.promptTokens).toFixed(0)}%)`;
}

const fmt = (v: number | null, digits = 0) => (v === null ? "—" : v.toFixed(digits));

function table(label: string, r: LoadReport): void {
  const per = r.maxTokens === null ? "default chats (no max_tokens)" : `${r.maxTokens} tokens per request`;
  const resets = r.levels.filter((l) => l.prefixCacheReset !== null).length;
  const prompts =
    r.prompts === "repeated"
      ? `repeated prompts (--repeat-prompts), ${r.references} distinct requests run alone`
      : `distinct prompts, ${r.references} requests run alone first, ` +
        `prefix cache reset before ${resets} of ${r.levels.length} levels`;
  console.log(`\n${label}: ${r.url}, ${per}, ${prompts}`);
  for (const w of r.warnings) console.log(`  WARNING: ${w}`);
  console.log(
    "| N | requests | failed | refusals | decode tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | " +
      "tokens lost / changed | placement versions | expert passes / token, rows / pass | prompt tokens shared |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|---|");
  for (const l of r.levels) {
    const refusals =
      l.refusals
        .map((x) => `${x.count}× ${x.status}${x.retryAfter ? " +Retry-After" : " no Retry-After"}`)
        .join(", ") || "0";
    const cut = l.cutByTimeLimit ? ` (${l.cutByTimeLimit} cut by --seconds)` : "";
    console.log(
      `| ${l.concurrency} | ${l.requests} | ${l.failed}${cut} | ${refusals} | ${l.decodeTokensPerSec.toFixed(1)} | ` +
        `${fmt(l.ttftMs.p50)} / ${fmt(l.ttftMs.p99)} | ${fmt(l.tpotMs.p50, 1)} / ${fmt(l.tpotMs.p99, 1)} | ` +
        `${l.tokensLost} / ${l.tokensChanged} | ${l.placementVersions.join(", ")} | ${passesCell(l)} | ` +
        `${sharedCell(l)} |`,
    );
    for (const e of l.errors) console.log(`    failure: ${e}`);
    const reset = l.prefixCacheReset;
    if (reset)
      console.log(`    before N=${l.concurrency}: ${reset.released} kept donors released (${reset.bytes} KV bytes)`);
    const failovers = Object.entries(l.failovers ?? {}).map(([code, n]) => `${n}× ${code}`);
    if (failovers.length > 0) console.log(`    expert calls failed over: ${failovers.join(", ")}`);
    if (l.unexpected > 0) console.log(`    ${l.unexpected} request(s) neither complete nor refused with Retry-After`);
    if (l.memory) console.log(`\n  peak memory per instance after N=${l.concurrency}:\n${memoryTable(l.memory)}`);
  }
  const ratios = scaling(r.levels);
  if (ratios.length > 0)
    console.log(
      `  aggregate decode tok/s against the single stream just before: ${ratios
        .map((x) => `N=${x.concurrency} ${x.ratio.toFixed(2)}×`)
        .join(", ")}`,
    );
}

/**
 * Each level with N > 1 against the last N = 1 level before it: `--concurrency 1,16,1,16` measures
 * the ratio twice, each from levels a minute apart (the VM's speed drifts over longer spans).
 */
function scaling(levels: LevelReport[]): { concurrency: number; ratio: number }[] {
  const out: { concurrency: number; ratio: number }[] = [];
  let single: LevelReport | null = null;
  for (const l of levels) {
    if (l.concurrency === 1) single = l;
    else if (single && single.decodeTokensPerSec > 0)
      out.push({ concurrency: l.concurrency, ratio: l.decodeTokensPerSec / single.decodeTokensPerSec });
  }
  return out;
}

function passesCell(l: LevelReport): string {
  if (l.expertPasses === null || l.expertRows === null || l.completionTokens === 0) return "—";
  const perToken = l.expertPasses / l.completionTokens;
  return `${perToken.toFixed(2)}, ${l.expertPasses > 0 ? (l.expertRows / l.expertPasses).toFixed(2) : "—"}`;
}

interface AfterBurst {
  /**
   * Seconds from the burst's end until no expert was replicated and no more instances were listed
   * or held experts than before the levels, or null (no release within the limit).
   */
  releaseSeconds: number | null;
  releasedVersion: number | null;
  /** false: released within the limit, but more instances listed or holding experts than before. */
  consolidated: boolean | null;
  /** The placement before the levels, when the burst ended, and after the release. */
  shapes: { before: PlacementShape | null; afterBurst: PlacementShape | null; released: PlacementShape | null };
  fresh: LevelReport;
  after: LevelReport | null;
  /** after ÷ fresh decode tok/s (issue 11 wants ≥ 0.95). */
  ratio: number | null;
  /**
   * Own servers: after the release, one stream on this server and on a control server started
   * during the release (same vars, never burst: a fresh placement), request by request in turn;
   * a = this server, b = the control. Null with --url or when the release did not come.
   */
  alternated: AlternateReport | null;
}

/**
 * --after-burst: the placement must also stay unchanged this long once released — the
 * consolidation's quiet windows (`consolidateAfterWindows`, 10 s as deployed) and a margin — so the
 * experts a burst moved within the same instances are home again before the stream runs.
 */
const SETTLE_MS = 15_000;

/** --after-burst: requests each server gets in the alternated comparison. */
const ALTERNATE_REQUESTS = 16;

/** --after-burst: the release after the levels, then one stream again against the fresh one. */
async function afterBurst(
  url: string,
  model: string | undefined,
  token: string,
  report: LoadReport,
  before: PlacementShape | null,
  control?: { start: () => Promise<LocalWorker>; selfCpuMs?: () => number | null },
) {
  const opts = options(url, model, token, [1], false);
  const burstEnd = await placementShape(opts);
  console.log(`\n  waiting for the idle release (at most ${releaseSeconds} s) …`);
  // The control server starts (seeds, warms) while this one releases: it never takes the burst.
  const starting = control?.start();
  starting?.catch(() => {});
  let alternated: AlternateReport | null = null;
  let released: Awaited<ReturnType<typeof waitForRelease>> = null;
  let after: LevelReport | null = null;
  const fresh = report.levels[0];
  try {
    released = await waitForRelease(opts, releaseSeconds * 1000, before ?? undefined, SETTLE_MS);
    // The control's start-up (seeding, warm-up) must not overlap the stream measured here.
    const c = await starting?.catch((err: unknown) => {
      console.warn(`  the control server did not start (no in-turn comparison): ${err}`);
      return null;
    });
    after = released ? (await runLoad(opts)).levels[0] : null;
    if (released && c) {
      console.log(`  one stream here and on a never-burst control server, in turn (${ALTERNATE_REQUESTS} each) …`);
      // The same numbered prompts as the level just run: neither side may copy them from a kept donor.
      if (!repeatPrompts) {
        await resetPrefixCache(new URL(url), token, model);
        await resetPrefixCache(c.url, ADMIN_TOKEN_FOR_TESTS, model);
      }
      alternated = await alternateSingle(
        { url, cpuMs: control?.selfCpuMs },
        { url: c.url.href, cpuMs: c.cpuMs },
        {
          model,
          maxTokens: tokens,
          requests: ALTERNATE_REQUESTS,
          phaseRequests: AFTER_BURST_PHASE_REQUESTS,
          repeatPrompts,
        },
      );
    }
  } finally {
    await (await starting?.catch(() => null))?.dispose();
  }
  const ratio = after && fresh.decodeTokensPerSec > 0 ? after.decodeTokensPerSec / fresh.decodeTokensPerSec : null;
  const result: AfterBurst = {
    releaseSeconds: released?.seconds ?? null,
    releasedVersion: released?.shape.version ?? null,
    consolidated: released?.consolidated ?? null,
    shapes: { before, afterBurst: burstEnd, released: released?.shape ?? null },
    fresh,
    after,
    ratio,
    alternated,
  };
  const held = (s: PlacementShape | null | undefined) => (s ? `${s.holding} of ${s.instances}` : "?");
  console.log(
    `  instances holding experts: ${held(before)} before the levels, ${held(burstEnd)} when the burst ended, ` +
      `${held(released?.shape)} after the release${released && !released.consolidated ? " (not consolidated)" : ""}`,
  );
  console.log(
    released
      ? `  released in ${released.seconds.toFixed(1)} s (v${released.shape.version}); one stream after the burst: ` +
          `${after?.decodeTokensPerSec.toFixed(1)} tok/s vs ${fresh.decodeTokensPerSec.toFixed(1)} fresh = ` +
          `${ratio?.toFixed(3)}× (TPOT p50 ${fmt(after?.tpotMs.p50 ?? null, 1)} vs ${fmt(fresh.tpotMs.p50, 1)} ms; ` +
          `server CPU ${fmt(after?.serverCpuMsPerToken ?? null, 1)} vs ${fmt(fresh.serverCpuMsPerToken, 1)} ms/token)`
      : `  no release within ${releaseSeconds} s: not measured`,
  );
  if (alternated) {
    const { a, b } = alternated;
    console.log(
      `  in turn with the control: ${a.decodeTokensPerSec.toFixed(1)} tok/s after the burst vs ` +
        `${b.decodeTokensPerSec.toFixed(1)} never burst = ${alternated.ratio?.toFixed(3)}× (TPOT p50 ` +
        `${fmt(a.tpotMsP50, 1)} vs ${fmt(b.tpotMsP50, 1)} ms; server CPU ${fmt(a.serverCpuMsPerToken, 1)} vs ` +
        `${fmt(b.serverCpuMsPerToken, 1)} ms/token; ${a.failed + b.failed} failed, ` +
        `${alternated.tokensDiffering} tokens differing)`,
    );
  }
  return result;
}

const runs: {
  label: string;
  vars: Record<string, string> | null;
  report: LoadReport;
  afterBurst?: AfterBurst;
}[] = [];
const started = new Date().toISOString();
if (values.url) {
  console.log(`bench:load — driving ${values.url}, levels ${levels.join(", ")}`);
  const token = values["admin-token"];
  const before = token ? await placementShape(options(values.url, values.model, token)) : null;
  const report = await runLoad(options(values.url, values.model, values["admin-token"]));
  table("existing server", report);
  const burst =
    values["after-burst"] && token ? await afterBurst(values.url, values.model, token, report, before) : undefined;
  runs.push({ label: "existing server", vars: null, report, afterBurst: burst });
} else {
  const dir = join(ROOT, "demo-model");
  const model = values.model ?? "demo-mixtral";
  makeDemoModel(dir, { log: () => {} });
  const servers = batching.flatMap((b) => passRows.map((p) => ({ b, p })));
  console.log(
    `bench:load — ${model} in local workerd, ${servers.length} server(s) in turn, levels ${levels.join(", ")}`,
  );
  for (const { b, p } of servers) {
    // The vars npm start passes (its model, no rate limit: the benchmark is one client by design).
    const vars: Record<string, string> = {
      BATCHING: b,
      DEFAULT_MODEL: model,
      RATE_LIMIT_ENABLED: "false",
      ...extraVars,
    };
    if (p !== null) vars.DISPATCH_PASS_ROWS = p;
    const label = `BATCHING=${b}${p === null ? "" : ` DISPATCH_PASS_ROWS=${p}`}`;
    const t = performance.now();
    let w: LocalWorker | null = null;
    try {
      w = await startLocalWorker({ vars });
      ownServerCpu = w.cpuMs;
      await seedModelDir(await w.bucket(), dir, model);
      // Warm-up: dense weights into the Worker, experts into their hosts (as npm start does).
      const warm = await w.fetch(`/v1/placement?model=${model}`);
      if (!warm.ok) throw new Error(`warm-up failed: ${warm.status} ${await warm.text()}`);
      console.log(`\n${label}: server up, seeded and warmed in ${((performance.now() - t) / 1000).toFixed(1)} s`);
      const before = await placementShape(options(w.url.href, model, ADMIN_TOKEN_FOR_TESTS));
      const report = await runLoad(options(w.url.href, model, ADMIN_TOKEN_FOR_TESTS));
      table(label, report);
      const control = {
        start: async () => {
          const c = await startLocalWorker({ vars });
          try {
            await seedModelDir(await c.bucket(), dir, model);
            const ok = await c.fetch(`/v1/placement?model=${model}`);
            if (!ok.ok) throw new Error(`control warm-up failed: ${ok.status} ${await ok.text()}`);
            return c;
          } catch (err) {
            await c.dispose();
            throw err;
          }
        },
        // This (burst) server's CPU, for its side of the in-turn comparison.
        selfCpuMs: w.cpuMs,
      };
      const burst = values["after-burst"]
        ? await afterBurst(w.url.href, model, ADMIN_TOKEN_FOR_TESTS, report, before, control)
        : undefined;
      runs.push({ label, vars, report, afterBurst: burst });
    } finally {
      await w?.dispose();
    }
  }
}

const result = {
  bench: "load",
  date: started,
  machine: {
    cpus: cpus().length,
    cpu: cpus()[0]?.model,
    memGiB: Math.round(totalmem() / 2 ** 30),
    loadAverage1m: loadavg()[0],
    node: process.version,
  },
  prompts: repeatPrompts ? "repeated" : "distinct",
  warnings: runs.flatMap((r) => r.report.warnings.map((w) => `${r.label}: ${w}`)),
  runs: runs.map((r) => ({ ...r, scaling: scaling(r.report.levels) })),
  note:
    "local workerd runs every Durable Object on one thread; decode tok/s is all streams' completion tokens " +
    "over the level's wall time; tokens lost/changed compare each stream's chunks with the same request run alone; " +
    "distinct prompts: every request its own, its reference's kept donor released before its level",
};
mkdirSync(dirname(values.out), { recursive: true });
writeFileSync(values.out, JSON.stringify(result, null, 2));
console.log(`\nwrote ${values.out}`);
const bad = runs.some((r) =>
  r.report.levels.some(
    (l) =>
      l.tokensLost + l.tokensChanged > 0 ||
      l.unexpected > 0 ||
      (l.memory ?? []).some((m) => !m.withinBudget || !m.under128MB),
  ),
);
process.exit(bad ? 1 : 0);
