/**
 * The load driver of `npm run bench:load`: for each concurrency level N, N closed-loop clients
 * send greedy streaming chat completions of the skewed, moving workload (`skewed-prompts.ts`: the
 * phase — which experts are hot — moves during the level, so the Coordinator re-places), while a
 * poller records the placement versions. Each stream is compared chunk by chunk with the same
 * request run alone first (tokens lost or changed).
 *
 * By default every request of a run has its own prompt (numbered), as distinct users' do: each
 * level's requests are run alone just before it (one reference per request), then the server's
 * kept prefix-sharing donors are released (`POST /admin/prefix-cache/reset`, with the admin token)
 * so the level copies nothing of its references — without that a level would measure K/V copies,
 * not distinct users. `repeatPrompts` keeps the earlier workload: a few prompts per phase repeated,
 * the phase moving every `phaseMs`, their references run once before the levels, no reset.
 *
 * Bounded: a level sends at most `requests` requests, starts none after `levelMs`, and aborts what
 * is still running `graceMs` later. Only loopback servers (`loopbackUrl`).
 */
import {
  compareChunks,
  loopbackUrl,
  outcomeOf,
  percentile,
  resetPrefixCache,
  streamChat,
  type StreamResult,
} from "./load-client";
import { readHostMemory, type InstanceMemory } from "./host-memory";
import { distinctRequests, SKEW_PHASES, type SkewedRequest } from "./skewed-prompts";
import { FLUSH_INTERVAL_MS } from "../../src/observability/recorder";

/** How long after a level its counters are read from /metrics: the isolate's flush interval and a margin. */
const METRICS_FLUSH_WAIT_MS = FLUSH_INTERVAL_MS + 500;

export interface LoadOptions {
  url: string;
  /** Model id (default: the server's DEFAULT_MODEL). */
  model?: string;
  concurrency: number[];
  /** Requests per level: a number, or a function of N. */
  requests: number | ((n: number) => number);
  /** max_tokens per request; null sends none (default chats). */
  maxTokens: number | null;
  /**
   * Run every request alone first and compare each stream with it (default true). Off for runs that
   * expect refusals (a reference must complete) or whose length is the server's choice.
   */
  references?: boolean;
  /**
   * The earlier workload: each phase's few prompts repeated (8 distinct requests, run alone once
   * before the levels), the phase moving every `phaseMs`, no prefix-cache reset. With prefix
   * sharing most of its prompt tokens are copies. Default false: every request's prompt distinct.
   */
  repeatPrompts?: boolean;
  /** After each level, read every instance's peak memory from /admin/hosts (needs adminToken). */
  memory?: boolean;
  /** No new request starts after this long in a level (ms). */
  levelMs: number;
  /** Requests still running this long after levelMs are aborted (ms). */
  graceMs: number;
  /** With `repeatPrompts`: how long each skew phase lasts before the hot set moves (ms). */
  phaseMs: number;
  /**
   * The hot set moves every this many requests of a level (with `repeatPrompts`: instead of every
   * `phaseMs`): a level then sends the same requests whatever its speed. By time, a slower level
   * reaches the next phase's (longer) prompts sooner and its tok/s falls further — two levels
   * compared against each other (--after-burst) must not differ in what they were sent. Distinct
   * prompts (each run alone before its level, so known in advance) always move it by requests:
   * by default every max(DISTINCT_PHASE_MIN_REQUESTS, N), one round of the N clients.
   */
  phaseRequests?: number;
  /** Bearer key for /v1 when the server has API keys. */
  apiKey?: string;
  /** Admin token: placement is then read from /admin/placement instead of /v1/placement. */
  adminToken?: string;
  /** Placement poll period (ms). */
  pollMs?: number;
  onProgress?: (p: LoadProgress) => void;
  /** Called with each warning as it arises (they are in the report's `warnings` too). */
  onWarning?: (message: string) => void;
  /** CPU ms the server's processes have used so far (own servers, from /proc); null or absent: not measured. */
  serverCpuMs?: () => number | null;
}

export interface LoadProgress {
  /** "reference": the requests run alone (before each level, or once before all with `repeatPrompts`). */
  stage: "reference" | "load";
  concurrency: number;
  done: number;
  total: number;
  failed: number;
  tokens: number;
  version: number | null;
}

export interface Refusal {
  status: number;
  code: string | null;
  retryAfter: boolean;
  count: number;
}

export interface LevelReport {
  concurrency: number;
  requests: number;
  completed: number;
  failed: number;
  refusals: Refusal[];
  /** First few failure messages (refusals included). */
  errors: string[];
  /** Requests neither complete nor refused with 429/503 + Retry-After (a 500, a cut stream): 0 expected. */
  unexpected: number;
  completionTokens: number;
  wallSeconds: number;
  /** All streams' completion tokens ÷ the level's wall time. */
  decodeTokensPerSec: number;
  ttftMs: { p50: number | null; p99: number | null };
  tpotMs: { p50: number | null; p99: number | null };
  /** Streams the level's own time limit (levelMs + graceMs) cut short: bench bounds, not server failures. */
  cutByTimeLimit: number;
  /** Chunks the reference had that a stream never delivered (streams cut by the time limit excepted). */
  tokensLost: number;
  /** Chunks whose text differs from the reference's (or that the reference did not have). */
  tokensChanged: number;
  streamsMismatched: number;
  placementVersions: number[];
  instances: { min: number; max: number } | null;
  /** Every instance's peak memory after the level (`memory` option), else null. */
  memory: InstanceMemory[] | null;
  /**
   * ExpertHost expert passes (weight reads) and rows during the level, from /admin/hosts (needs
   * adminToken; null without, or when a read failed).
   */
  expertPasses: number | null;
  expertRows: number | null;
  /** Expert calls failed over during the level, by code (/metrics `edge_moe_expert_failovers_total`). */
  failovers: Record<string, number> | null;
  /**
   * The level's prompt tokens and how many of them were copied from a live session's KV cache
   * instead of run (prefix sharing), from /metrics; null without adminToken, or when a counter's
   * sum fell during the level (an isolate's series expired).
   */
  promptTokens: number | null;
  sharedPromptTokens: number | null;
  /**
   * The server processes' CPU ms per completion token over the level (`LoadOptions.serverCpuMs`),
   * or null: on a machine other jobs load, it follows the work done more closely than tok/s.
   */
  serverCpuMsPerToken: number | null;
  /** Requests run alone just before this level (distinct prompts; 0 with `repeatPrompts`). */
  references: number;
  /** What the prefix-cache reset before the level released, or null (none: repeated prompts, no token, failed). */
  prefixCacheReset: { released: number; bytes: number } | null;
  /**
   * Every request in the order sent: its start after the level's first (ms), its TTFT (null without
   * a token), completion tokens and status — where a TTFT percentile comes from (waves of arrivals).
   */
  perRequest: { startMs: number; ttftMs: number | null; completionTokens: number; status: number }[];
}

export interface LoadReport {
  url: string;
  model: string | null;
  maxTokens: number | null;
  phaseMs: number;
  /** "distinct": every request its own prompt; "repeated": `repeatPrompts`. */
  prompts: "distinct" | "repeated";
  /** Distinct requests, each run alone first (greedy, temperature 0); 0 with references off. */
  references: number;
  /** What may make the figures overstate distinct users (a reset not made), as printed. */
  warnings: string[];
  levels: LevelReport[];
  placementVersionsSeen: number[];
}

interface Placement {
  version: number;
  instances: number;
}

/**
 * With distinct prompts the hot set moves every max(this, N) requests: one round of the N clients,
 * and at least 4 requests for the single stream (as --after-burst's levels).
 */
export const DISTINCT_PHASE_MIN_REQUESTS = 4;

/** `repeatPrompts`' requests: each phase's variants, phase by phase. */
function repeatedWorkload(): SkewedRequest[][] {
  return SKEW_PHASES.map((p, phase) => p.variants.map((content) => ({ phase, content })));
}

export async function runLoad(opts: LoadOptions): Promise<LoadReport> {
  const base = loopbackUrl(opts.url);
  const auth: Record<string, string> = opts.apiKey ? { authorization: `Bearer ${opts.apiKey}` } : {};
  const repeat = opts.repeatPrompts === true;
  const checked = opts.references !== false;
  const phases = repeatedWorkload();
  const progress = opts.onProgress ?? (() => {});
  const allVersions = new Set<number>();
  const warnings: string[] = [];
  const warn = (m: string) => {
    warnings.push(m);
    opts.onWarning?.(m);
  };
  if (!repeat && !opts.adminToken)
    warn(
      "no admin token: the prefix cache cannot be reset before the levels, so a request may copy the K/V of " +
        "a kept donor of its very prompt — its reference run alone just before, or an earlier run's against " +
        "this server — instead of running it (throughput overstated); pass the server's admin token",
    );

  // Each request alone, one at a time (greedy): what its stream under load must say.
  const reference = new Map<string, string[]>();
  const runAlone = async (requests: SkewedRequest[], concurrency: number) => {
    for (const [i, w] of requests.entries()) {
      const r = await streamChat(base, { model: opts.model, content: w.content, maxTokens: opts.maxTokens }, auth);
      if (r.error || r.status !== 200) throw new Error(`reference request "${w.content}" failed alone: ${r.error}`);
      reference.set(w.content, r.chunks);
      progress({
        stage: "reference",
        concurrency,
        done: i + 1,
        total: requests.length,
        failed: 0,
        tokens: 0,
        version: null,
      });
    }
  };
  if (repeat && checked) await runAlone(phases.flat(), 1);

  const levels: LevelReport[] = [];
  /** Distinct prompts numbered so far: a run never sends one twice. */
  let numbered = 0;
  for (const n of opts.concurrency) {
    const total = typeof opts.requests === "number" ? opts.requests : opts.requests(n);
    const own = repeat
      ? null
      : distinctRequests(numbered + 1, total, opts.phaseRequests ?? Math.max(DISTINCT_PHASE_MIN_REQUESTS, n));
    numbered += total;
    if (own && checked) await runAlone(own, n);
    let reset: LevelReport["prefixCacheReset"] = null;
    if (own && opts.adminToken) {
      // The references (and earlier levels) left kept donors: released, so the level copies none.
      reset = await resetPrefixCache(base, opts.adminToken, opts.model).catch((err: unknown) => {
        warn(`N=${n}: the prefix cache was not reset (${err}): its requests may copy their references' K/V`);
        return null;
      });
      // The references' prompt tokens reach /metrics at the isolate's next flush: not in the level's.
      if (checked) await new Promise((r) => setTimeout(r, METRICS_FLUSH_WAIT_MS));
    }
    const seen: Placement[] = [];
    const poll = async () => {
      const p = await readPlacement(base, opts, auth).catch(() => null);
      if (p) {
        seen.push(p);
        allVersions.add(p.version);
      }
      return p;
    };
    await poll();
    const hostsBefore = await hostWork(base, opts);
    const seen0 = new Map(lastSeenHosts.get(base.href));
    const poller = setInterval(() => void poll(), opts.pollMs ?? 500);
    const abort = new AbortController();
    const cpu0 = opts.serverCpuMs?.() ?? null;
    const t0 = performance.now();
    const hardStop = setTimeout(() => abort.abort(new Error("level time limit")), opts.levelMs + opts.graceMs);
    const results: { r: StreamResult; content: string }[] = [];
    let issued = 0;
    let failed = 0;
    let tokens = 0;
    const client = async (id: number) => {
      while (issued < total && performance.now() - t0 < opts.levelMs) {
        const k = issued++;
        let content: string;
        if (own) content = own[k].content;
        else {
          // Which experts are hot moves with time (or every phaseRequests requests); within a
          // phase, clients cycle through its variants.
          const at = opts.phaseRequests ? Math.floor(k / opts.phaseRequests) : (performance.now() - t0) / opts.phaseMs;
          const phase = phases[Math.floor(at) % phases.length];
          content = phase[(k + id) % phase.length].content;
        }
        const r = await streamChat(base, { model: opts.model, content, maxTokens: opts.maxTokens }, auth, abort.signal);
        results.push({ r, content });
        if (r.error) failed++;
        tokens += r.completionTokens;
        const version = seen.at(-1)?.version ?? null;
        progress({ stage: "load", concurrency: n, done: results.length, total, failed, tokens, version });
      }
    };
    try {
      await Promise.all(Array.from({ length: n }, (_, id) => client(id)));
    } finally {
      clearTimeout(hardStop);
      clearInterval(poller);
    }
    const wall = (performance.now() - t0) / 1000;
    const cpu1 = opts.serverCpuMs?.() ?? null;
    await poll();
    const level = summarize(n, results, checked ? reference : null, wall, seen);
    level.references = own && checked ? own.length : 0;
    level.prefixCacheReset = reset;
    if (cpu0 !== null && cpu1 !== null && level.completionTokens > 0)
      level.serverCpuMsPerToken = (cpu1 - cpu0) / level.completionTokens;
    // The isolate's counters reach /metrics at its next flush (at most FLUSH_INTERVAL_MS after its
    // last request): wait for it, so the level's last prompts are counted.
    if (opts.adminToken) await new Promise((r) => setTimeout(r, METRICS_FLUSH_WAIT_MS));
    const hostsAfter = await hostWork(base, opts);
    if (hostsBefore && hostsAfter) {
      const work = hostDelta(hostsBefore, hostsAfter, seen0);
      level.expertPasses = work.passes;
      // /metrics sums each isolate's counters; an isolate's series that expired during the level
      // makes a sum fall: such a level's counts are unknown (null), not negative.
      const prompt = hostsAfter.promptTokens - hostsBefore.promptTokens;
      const shared = hostsAfter.sharedTokens - hostsBefore.sharedTokens;
      level.promptTokens = prompt >= 0 && shared >= 0 ? prompt : null;
      level.sharedPromptTokens = prompt >= 0 && shared >= 0 ? shared : null;
      level.expertRows = work.rows;
      level.failovers = {};
      for (const [code, n] of Object.entries(hostsAfter.failovers)) {
        const d = n - (hostsBefore.failovers[code] ?? 0);
        if (d > 0) level.failovers[code] = d;
      }
    }
    if (opts.memory) {
      if (!opts.adminToken) throw new Error("the memory option reads /admin/hosts: it needs adminToken");
      level.memory = await readHostMemory(base, opts.adminToken, opts.model);
    }
    levels.push(level);
  }
  return {
    url: base.origin,
    model: opts.model ?? null,
    maxTokens: opts.maxTokens,
    phaseMs: opts.phaseMs,
    prompts: repeat ? "repeated" : "distinct",
    references: reference.size,
    warnings,
    levels,
    placementVersionsSeen: [...allVersions].sort((a, b) => a - b),
  };
}

function summarize(
  n: number,
  results: { r: StreamResult; content: string }[],
  reference: Map<string, string[]> | null,
  wallSeconds: number,
  seen: Placement[],
): LevelReport {
  const refusals = new Map<string, Refusal>();
  const errors: string[] = [];
  let lost = 0;
  let changed = 0;
  let mismatched = 0;
  let tokens = 0;
  let cut = 0;
  for (const { r, content } of results) {
    tokens += r.completionTokens;
    if (r.error && errors.length < 8) errors.push(r.error);
    if (r.status !== 200) {
      // Refused before any stream: a failed request, not lost tokens.
      const key = `${r.status}:${r.code}:${r.retryAfter}`;
      const e = refusals.get(key) ?? { status: r.status, code: r.code, retryAfter: r.retryAfter, count: 0 };
      e.count++;
      refusals.set(key, e);
      continue;
    }
    if (r.aborted) cut++;
    if (!reference) continue;
    const d = compareChunks(r.chunks, reference.get(content) ?? [], r.aborted);
    lost += d.lost;
    changed += d.changed;
    if (d.lost + d.changed > 0) mismatched++;
  }
  const ok = results.filter((x) => !x.r.error).map((x) => x.r);
  const t0 = Math.min(...results.map(({ r }) => r.startedAt));
  const ttft = ok.flatMap((r) => (r.ttftMs === null ? [] : [r.ttftMs]));
  const tpot = ok.flatMap((r) => (r.tpotMs === null ? [] : [r.tpotMs]));
  const inst = seen.map((p) => p.instances);
  return {
    concurrency: n,
    requests: results.length,
    completed: ok.length,
    failed: results.length - ok.length,
    refusals: [...refusals.values()],
    errors,
    unexpected: results.filter((x) => outcomeOf(x.r) === "failed" && !x.r.aborted).length,
    completionTokens: tokens,
    cutByTimeLimit: cut,
    wallSeconds,
    decodeTokensPerSec: wallSeconds > 0 ? tokens / wallSeconds : 0,
    ttftMs: { p50: percentile(ttft, 50), p99: percentile(ttft, 99) },
    tpotMs: { p50: percentile(tpot, 50), p99: percentile(tpot, 99) },
    tokensLost: lost,
    tokensChanged: changed,
    streamsMismatched: mismatched,
    placementVersions: [...new Set(seen.map((p) => p.version))].sort((a, b) => a - b),
    instances: inst.length ? { min: Math.min(...inst), max: Math.max(...inst) } : null,
    memory: null,
    expertPasses: null,
    serverCpuMsPerToken: null,
    expertRows: null,
    failovers: null,
    promptTokens: null,
    sharedPromptTokens: null,
    references: 0,
    prefixCacheReset: null,
    perRequest: results.map(({ r }) => ({
      startMs: Math.round(r.startedAt - t0),
      ttftMs: r.ttftMs === null ? null : Math.round(r.ttftMs),
      completionTokens: r.completionTokens,
      status: r.status,
    })),
  };
}

export interface HostWork {
  passes: number;
  rows: number;
  /** Passes and rows per ExpertHost (by DO name): hosts come and go during a level. */
  byHost: Map<string, { passes: number; rows: number }>;
  /** Failovers so far by code, summed over layers. */
  failovers: Record<string, number>;
  /** Prompt tokens of the model's generations so far, and those copied from a live session (/metrics). */
  promptTokens: number;
  sharedTokens: number;
}

/**
 * Passes and rows run between two reads, host by host: a host added meanwhile counts all it ran
 * (or all since `earlier`, its counters when last seen: a retired instance added again), a
 * host whose counters went down restarted (evicted, reset) and counts from zero, a host gone from
 * the second read contributes nothing it ran after the first (unknown).
 */
export function hostDelta(
  before: HostWork,
  after: HostWork,
  earlier?: ReadonlyMap<string, { passes: number; rows: number }>,
): { passes: number; rows: number } {
  let passes = 0;
  let rows = 0;
  for (const [name, a] of after.byHost) {
    // A host not listed at the start may be one retired earlier and added again under its name
    // (its counters kept the work it did before): count from when it was last seen.
    const b = before.byHost.get(name) ?? earlier?.get(name);
    const restarted = !b || a.passes < b.passes || a.rows < b.rows;
    passes += restarted ? a.passes : a.passes - b.passes;
    rows += restarted ? a.rows : a.rows - b.rows;
  }
  return { passes, rows };
}

/** Per server (base URL): every ExpertHost's counters when `hostWork` last saw it listed. */
const lastSeenHosts = new Map<string, Map<string, { passes: number; rows: number }>>();

/** Expert passes and rows all ExpertHosts of the model ran so far (/admin/hosts), failovers (/metrics), or null. */
export async function hostWork(base: URL, opts: LoadOptions): Promise<HostWork | null> {
  if (!opts.adminToken) return null;
  const headers = { authorization: `Bearer ${opts.adminToken}` };
  const q = opts.model ? `?model=${encodeURIComponent(opts.model)}` : "";
  const res = await fetch(new URL(`/admin/hosts${q}`, base), { headers }).catch(() => null);
  if (!res?.ok) return null;
  const body = (await res.json()) as { hosts: ({ name: string; expertPasses?: number; tokens: number } | null)[] };
  const work: HostWork = { passes: 0, rows: 0, byHost: new Map(), failovers: {}, promptTokens: 0, sharedTokens: 0 };
  for (const h of body.hosts) {
    if (!h) continue;
    const passes = h.expertPasses ?? 0;
    work.passes += passes;
    work.rows += h.tokens;
    work.byHost.set(h.name, { passes, rows: h.tokens });
  }
  const seen = lastSeenHosts.get(base.href) ?? new Map();
  for (const [name, w] of work.byHost) seen.set(name, w);
  lastSeenHosts.set(base.href, seen);
  const m = await fetch(new URL(`/metrics${q}`, base), { headers }).catch(() => null);
  const text = m?.ok ? await m.text() : "";
  for (const line of text.split("\n")) {
    const hit = /^edge_moe_expert_failovers_total\{[^}]*code="([^"]*)"[^}]*\} ([0-9.e+]+)/.exec(line);
    if (hit) work.failovers[hit[1]] = (work.failovers[hit[1]] ?? 0) + Number(hit[2]);
    const count = /^edge_moe_(prompt_tokens|prefix_shared_tokens)_total\{[^}]*model="([^"]*)"[^}]*\} ([0-9.e+]+)/.exec(
      line,
    );
    if (count && (!opts.model || count[2] === opts.model)) {
      if (count[1] === "prompt_tokens") work.promptTokens += Number(count[3]);
      else work.sharedTokens += Number(count[3]);
    }
  }
  return work;
}

/** What /admin/placement shows of the expert placement: its version, instances listed and holding experts. */
export interface PlacementShape {
  version: number;
  instances: number;
  /** Instances holding at least one expert (a token's fan-out can reach no others). */
  holding: number;
  /** Experts with more than one replica. */
  replicated: number;
}

/** The placement's shape from /admin/placement (needs `opts.adminToken`), or null. */
export async function placementShape(opts: LoadOptions): Promise<PlacementShape | null> {
  const base = loopbackUrl(opts.url);
  const q = opts.model ? `?model=${encodeURIComponent(opts.model)}` : "";
  const res = await fetch(new URL(`/admin/placement${q}`, base), {
    headers: { authorization: `Bearer ${opts.adminToken ?? ""}` },
  }).catch(() => null);
  if (!res?.ok) return null;
  const s = (await res.json()) as {
    placement?: { version: number; instances: unknown[]; replicas: { instance: number }[][][] } | null;
  };
  const p = s.placement;
  if (!p) return null;
  const holding = new Set(p.replicas.flatMap((row) => row.flatMap((reps) => reps.map((r) => r.instance))));
  const replicated = p.replicas.reduce((a, row) => a + row.filter((reps) => reps.length > 1).length, 0);
  return { version: p.version, instances: p.instances.length, holding: holding.size, replicated };
}

/**
 * Waits for the idle release after a burst: no replicated expert and, with `fresh` (the shape
 * before the burst), no more instances listed or holding experts than then (the consolidation that
 * moves lone experts home and retires the instances the burst added: an empty listed instance is
 * where the next copies would go, widening the fan-out again), and then the placement unchanged
 * for `settleMs` (the consolidation also moves experts the burst relocated within the same
 * instances back home, which the shape does not show: it waits `consolidateAfterWindows` quiet
 * windows first, 10 s as deployed). Polls every second for at most `timeoutMs`. Returns the seconds
 * it took and the shape; on timeout the last shape if it had no replicated expert (`consolidated`
 * false), else null.
 */
export async function waitForRelease(
  opts: LoadOptions,
  timeoutMs: number,
  fresh?: Pick<PlacementShape, "holding" | "instances">,
  settleMs = 0,
): Promise<{ seconds: number; shape: PlacementShape; consolidated: boolean } | null> {
  const t0 = performance.now();
  let last: PlacementShape | null = null;
  let stableSince: { version: number; at: number } | null = null;
  while (performance.now() - t0 < timeoutMs) {
    const shape = await placementShape(opts);
    if (shape) last = shape;
    const compact = !fresh || (shape && shape.holding <= fresh.holding && shape.instances <= fresh.instances);
    if (shape && shape.replicated === 0 && compact) {
      const now = performance.now();
      if (!stableSince || stableSince.version !== shape.version) stableSince = { version: shape.version, at: now };
      if (now - stableSince.at >= settleMs) return { seconds: (now - t0) / 1000, shape, consolidated: true };
    } else if (shape) stableSince = null; // a failed poll says nothing: the settle goes on
    await new Promise((r) => setTimeout(r, 1000));
  }
  return last && last.replicated === 0
    ? { seconds: (performance.now() - t0) / 1000, shape: last, consolidated: false }
    : null;
}

/** The placement's version and instance count, from /admin/placement with a token, else /v1/placement. */
async function readPlacement(base: URL, opts: LoadOptions, auth: Record<string, string>): Promise<Placement | null> {
  const q = opts.model ? `?model=${encodeURIComponent(opts.model)}` : "";
  if (opts.adminToken) {
    const res = await fetch(new URL(`/admin/placement${q}`, base), {
      headers: { authorization: `Bearer ${opts.adminToken}` },
    });
    if (!res.ok) return null;
    const s = (await res.json()) as { placement?: { version: number; instances: unknown[] } | null };
    return s.placement ? { version: s.placement.version, instances: s.placement.instances.length } : null;
  }
  const res = await fetch(new URL(`/v1/placement${q}`, base), { headers: auth });
  if (!res.ok) return null;
  const p = (await res.json()) as { version: number; instances: unknown[] };
  return { version: p.version, instances: p.instances.length };
}
