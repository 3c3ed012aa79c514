/**
 * @module `npm run profile:load`: the V8 CPU profile of a running local server (`wrangler dev`,
 * whose workerd runs the Worker and every Durable Object in one isolate) while N concurrent
 * streaming greedy chats of the `bench:load` workload run, started together (a burst): each its
 * own numbered prompt, as distinct users' (`--repeat-prompts`: the earlier few repeated). Prints
 * each stream's TTFT, the wall time, and the sampled time by function (self time), GC and idle; writes
 * the `.cpuprofile` (Chrome DevTools opens it). Bounded: one burst, at most --seconds.
 */
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { wantsHelp } from "./lib/progress";
import { loopbackUrl, percentile, resetPrefixCache, streamChat } from "./lib/load-client";
import { distinctRequests, SKEW_PHASES } from "./lib/skewed-prompts";
import { cpuMs } from "./lib/process-cpu";

const USAGE = `usage: npm run profile:load -- --inspector http://127.0.0.1:PORT [--url URL] [--streams N]
       [--tokens N] [--interval-us N] [--seconds N] [--top N] [--pids LIST] [--inclusive LIST]
       [--admin-token TOKEN] [--repeat-prompts] [--out FILE]
  Profiles the isolate of a running local server while --streams concurrent streaming chats
  (greedy, the bench:load prompts: each its own, numbered, half of each phase) run, all sent at once.
  --inspector    the runtime's inspector: http://host:port (its /json target list; the target named
                 core:user:… is taken) or a ws:// URL. \`wrangler dev --inspector-port P\` serves one
                 on P (loopback only).
  --url          the server (default http://127.0.0.1:8787; loopback only)
  --streams      concurrent chats, sent together (default 16)
  --tokens       max_tokens per chat (default 32)
  --interval-us  sampling interval in µs (default 100)
  --seconds      the burst is cut after this many seconds (default 120)
  --top          functions listed by self time (default 25)
  --pids         comma-separated process ids (the server's workerd): their CPU time during the burst
                 (/proc), per token — on a shared machine closer to the work done than wall time
  --inclusive    comma-separated function-name regexps: each one's inclusive time (its frames on the stack)
  --admin-token  the server's ADMIN_TOKEN (.dev.vars): the ExpertHosts' expert loads during the burst and
                 the placement versions, from /admin/hosts before and after; and the kept prefix-sharing
                 donors are released first (POST /admin/prefix-cache/reset), so a second run's prompts
                 (the same numbers) copy nothing of the first's — without it a warning says they may
  --repeat-prompts
                 the earlier burst: the 8 prompts of the two phases, repeated (prefix sharing copies
                 most of their prompt tokens)
  --out          where the profile is written (default bench-results/profile-load.cpuprofile)`;
if (wantsHelp()) {
  console.log(USAGE);
  process.exit(0);
}

const { values } = parseArgs({
  options: {
    inspector: { type: "string" },
    url: { type: "string", default: "http://127.0.0.1:8787" },
    streams: { type: "string", default: "16" },
    tokens: { type: "string", default: "32" },
    "interval-us": { type: "string", default: "100" },
    seconds: { type: "string", default: "120" },
    top: { type: "string", default: "25" },
    inclusive: { type: "string", default: "" },
    pids: { type: "string", default: "" },
    "admin-token": { type: "string" },
    "repeat-prompts": { type: "boolean", default: false },
    out: { type: "string", default: "bench-results/profile-load.cpuprofile" },
  },
});
function positive(name: string): number {
  const raw = String(values[name as keyof typeof values]);
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 1) {
    console.error(`--${name} must be a positive integer, got "${raw}"`);
    process.exit(2);
  }
  return n;
}
const [streams, tokens, intervalUs, seconds, top] = ["streams", "tokens", "interval-us", "seconds", "top"].map(
  positive,
);
if (!values.inspector) {
  console.error("--inspector is required (e.g. http://127.0.0.1:9229 from `wrangler dev --inspector-port 9229`)");
  process.exit(2);
}
const base = loopbackUrl(values.url);
const inspector = loopbackUrl(values.inspector.replace(/^ws/, "http"));

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** The inspector's WebSocket URL: the runtime's user worker target (not an outbound or proxy one). */
async function debuggerUrl(): Promise<string> {
  if (values.inspector!.startsWith("ws")) return values.inspector!;
  const list = (await (await fetch(new URL("/json", inspector))).json()) as {
    id: string;
    webSocketDebuggerUrl: string;
  }[];
  const t = list.find((x) => x.id.startsWith("core:user")) ?? list[0];
  if (!t) throw new Error(`no inspector target at ${inspector.href}json`);
  return t.webSocketDebuggerUrl;
}

/** A minimal Chrome DevTools Protocol client: one call at a time, answers matched by id. */
async function connect(
  url: string,
): Promise<{ call: (method: string, params?: object) => Promise<unknown>; close: () => Promise<void> }> {
  // The wrangler dev inspector proxy refuses an upgrade without an Origin header; Node's WebSocket
  // (undici) takes `headers` beyond the WHATWG constructor its types declare.
  const Ws = WebSocket as unknown as new (url: string, init: { headers: Record<string, string> }) => WebSocket;
  const ws = new Ws(url, { headers: { Origin: inspector.origin } });
  await new Promise<void>((ok, fail) => {
    ws.addEventListener("open", () => ok(), { once: true });
    ws.addEventListener("error", () => fail(new Error(`cannot open ${url}`)), { once: true });
  });
  let next = 1;
  const waiting = new Map<number, { ok: (v: unknown) => void; fail: (e: Error) => void }>();
  ws.addEventListener("message", (ev) => {
    const msg = JSON.parse(String(ev.data)) as { id?: number; result?: unknown; error?: { message: string } };
    const w = msg.id === undefined ? undefined : waiting.get(msg.id);
    if (!w) return;
    waiting.delete(msg.id!);
    if (msg.error) w.fail(new Error(msg.error.message));
    else w.ok(msg.result);
  });
  return {
    call: (method, params = {}) =>
      new Promise((ok, fail) => {
        const id = next++;
        waiting.set(id, { ok, fail });
        ws.send(JSON.stringify({ id, method, params }));
      }),
    // The wrangler dev inspector proxy does not answer a close frame, so the socket (and this
    // process) would stay open: wait for the handshake briefly, and the caller exits regardless.
    close: () =>
      new Promise<void>((done) => {
        ws.addEventListener("close", () => done(), { once: true });
        setTimeout(done, 1000).unref();
        ws.close();
      }),
  };
}

/** Self time (ms) per function, and the total sampled. */
function selfTimes(p: Profile): { total: number; rows: [string, number][] } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const ms = new Map<string, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    const f = byId.get(id)!.callFrame;
    const key =
      f.url && !f.functionName.startsWith("(")
        ? `${f.functionName || "(anonymous)"}:${f.lineNumber + 1}`
        : f.functionName;
    ms.set(key, (ms.get(key) ?? 0) + dt);
    total += dt;
  });
  return { total, rows: [...ms].sort((a, b) => b[1] - a[1]) };
}

/** Inclusive time (ms) of the functions whose names match `re`: samples with such a frame on the stack. */
function inclusive(p: Profile, re: RegExp): number {
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const hit = new Map<number, boolean>();
  const has = (id: number): boolean => {
    let h = hit.get(id);
    if (h === undefined) {
      const up = parent.get(id);
      h = re.test(byId.get(id)!.callFrame.functionName) || (up !== undefined && has(up));
      hit.set(id, h);
    }
    return h;
  };
  let t = 0;
  p.samples.forEach((id, i) => {
    if (has(id)) t += (p.timeDeltas[i] ?? 0) / 1000;
  });
  return t;
}

interface HostCounts {
  version: number;
  /** expertLoads per ExpertHost name. */
  loads: Map<string, number>;
}

/** The ExpertHosts' expert-load counters and the placement version (/admin/hosts), or null without a token. */
async function hostCounts(): Promise<HostCounts | null> {
  const token = values["admin-token"];
  if (!token) return null;
  const res = await fetch(new URL("/admin/hosts", base), { headers: { authorization: `Bearer ${token}` } });
  if (!res.ok) throw new Error(`/admin/hosts answered ${res.status}: check --admin-token (ADMIN_TOKEN in .dev.vars)`);
  const body = (await res.json()) as { version: number; hosts: ({ name: string; expertLoads?: number } | null)[] };
  const loads = new Map<string, number>();
  for (const h of body.hosts) if (h) loads.set(h.name, h.expertLoads ?? 0);
  return { version: body.version, loads };
}

/** Loads between two snapshots, host by host (a host that restarted counts from 0). */
function loadsBetween(a: HostCounts, b: HostCounts): number {
  let n = 0;
  for (const [name, after] of b.loads) {
    const before = a.loads.get(name) ?? 0;
    n += after >= before ? after - before : after;
  }
  return n;
}

const repeatPrompts = values["repeat-prompts"];
// The burst's prompts: the numbers 1..streams again on every run, so a run before this one left
// kept donors of exactly these prompts.
const prompts = repeatPrompts
  ? SKEW_PHASES.flatMap((p) => p.variants)
  : distinctRequests(1, streams, Math.ceil(streams / SKEW_PHASES.length)).map((r) => r.content);
if (!repeatPrompts) {
  const token = values["admin-token"];
  if (token) {
    const r = await resetPrefixCache(base, token);
    console.log(`prefix cache reset: ${r.released} kept donors released (${r.bytes} KV bytes)`);
  } else
    console.warn(
      "WARNING: no --admin-token: kept prefix-sharing donors (of an earlier run's identical numbered prompts) " +
        "are not released, so the burst may copy their K/V instead of running its prompts",
    );
}
const counts0 = await hostCounts();
const cdp = await connect(await debuggerUrl());
await cdp.call("Profiler.enable");
await cdp.call("Profiler.setSamplingInterval", { interval: intervalUs });
const stop = AbortSignal.timeout(seconds * 1000);
const pids = values.pids.split(",").filter(Boolean).map(Number);
await cdp.call("Profiler.start");
const cpu0 = cpuMs(pids);
const t0 = performance.now();
const results = await Promise.all(
  Array.from({ length: streams }, (_, i) =>
    streamChat(base, { content: prompts[i % prompts.length], maxTokens: tokens }, {}, stop),
  ),
);
const wall = performance.now() - t0;
const cpu1 = cpuMs(pids);
const { profile } = (await cdp.call("Profiler.stop")) as { profile: Profile };
await cdp.close();
const counts1 = await hostCounts();
writeFileSync(values.out, JSON.stringify(profile));

const ok = results.filter((r) => r.status === 200 && !r.error);
const ttft = ok.map((r) => r.ttftMs ?? 0);
const toks = ok.reduce((n, r) => n + r.completionTokens, 0);
const fmt = (x: number | null) => (x === null ? "—" : x.toFixed(0));
console.log(`${streams} streams × ${tokens} tokens: ${ok.length} complete, ${toks} tokens in ${wall.toFixed(0)} ms`);
const [p50, p99] = [percentile(ttft, 50), percentile(ttft, 99)];
const rate = ((toks * 1000) / wall).toFixed(1);
console.log(`  (${rate} tok/s); TTFT p50 / p99 / max ${fmt(p50)} / ${fmt(p99)} / ${fmt(Math.max(...ttft))} ms`);
if (pids.length > 0 && cpu0 !== null && cpu1 !== null)
  console.log(
    `  CPU of pids ${pids.join(",")}: ${(cpu1 - cpu0).toFixed(0)} ms, ${((cpu1 - cpu0) / toks).toFixed(2)} ms/token`,
  );
console.log(`  TTFT each (sent order): ${ttft.map((x) => x.toFixed(0)).join(" ")}`);
if (counts0 && counts1)
  console.log(
    `  expert loads during the burst: ${loadsBetween(counts0, counts1)} ` +
      `(placement v${counts0.version} → v${counts1.version}, ${counts1.loads.size} ExpertHosts)`,
  );
for (const r of results.filter((x) => x.error)) console.log(`  failed: ${r.error}`);
const { total, rows } = selfTimes(profile);
console.log(`\nsampled ${total.toFixed(0)} ms (every ${intervalUs} µs); self time by function:`);
for (const [name, t] of rows.slice(0, top))
  console.log(`  ${((100 * t) / total).toFixed(1).padStart(5)}%  ${t.toFixed(0).padStart(6)} ms  ${name}`);
for (const name of values.inclusive.split(",").filter(Boolean)) {
  const t = inclusive(profile, new RegExp(name));
  console.log(`  inclusive ${((100 * t) / total).toFixed(1).padStart(5)}%  ${t.toFixed(0).padStart(6)} ms  /${name}/`);
}
console.log(`\nprofile written to ${values.out}`);
// The inspector's socket stays open (see connect's close): the run is over, so end the process.
process.exit(0);
