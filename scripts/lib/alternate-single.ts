/**
 * One stream on two servers, request by request in turn: `bench:load --after-burst`'s comparison of
 * the server that took the burst (after its idle release) with a control server started beside it
 * that never took one (a fresh placement). Measured one after the other, minutes apart, the two
 * single streams differ by as much as this 2-core VM's speed drifts (a lone stream has run 35%
 * slower an hour later, the same code); in turn, each pair of requests meets the same machine, and
 * the pair order flips every pair (A B, B A, …) so neither server always runs second.
 * Both get the same requests: the workload of `skewed-prompts.ts`, its hot set moving every
 * `phaseRequests` pairs (the Coordinators re-place during the run, as in the levels), each prompt
 * numbered (distinct: each server runs each one once) unless `repeatPrompts`.
 */
import { compareChunks, loopbackUrl, percentile, streamChat, type StreamResult } from "./load-client";
import { distinctRequests, SKEW_PHASES } from "./skewed-prompts";

export interface AlternateSide {
  url: string;
  /** CPU ms the server's processes have used so far, or null (not measured). */
  cpuMs?: () => number | null;
}

export interface SideReport {
  requests: number;
  failed: number;
  completionTokens: number;
  /** Sum of its requests' wall times (s): they never overlap the other side's. */
  seconds: number;
  /** Completion tokens ÷ its requests' summed wall time. */
  decodeTokensPerSec: number;
  tpotMsP50: number | null;
  ttftMsP50: number | null;
  /** The server processes' CPU ms per completion token over the run, or null. */
  serverCpuMsPerToken: number | null;
}

export interface AlternateReport {
  a: SideReport;
  b: SideReport;
  /** a ÷ b decode tok/s. */
  ratio: number | null;
  /** Chunks that differ between the two servers' answers to the same request (greedy: 0 expected). */
  tokensDiffering: number;
}

export interface AlternateOptions {
  model?: string;
  maxTokens: number | null;
  /** Requests each server gets. */
  requests: number;
  /** The hot set moves every this many requests (pairs). */
  phaseRequests: number;
  /** Each phase's few prompts repeated (bench:load --repeat-prompts) instead of numbered ones. */
  repeatPrompts?: boolean;
  /** A request still running after this long is aborted (counted failed): the run stops by itself. */
  requestTimeoutMs?: number;
}

/** Default per-request limit: a 64-token stream alone takes about a second here. */
const REQUEST_TIMEOUT_MS = 60_000;

/** Runs `opts.requests` single-stream requests on each of a and b, in turn; see the module doc. */
export async function alternateSingle(
  a: AlternateSide,
  b: AlternateSide,
  opts: AlternateOptions,
): Promise<AlternateReport> {
  const sides = [a, b].map((s) => ({ base: loopbackUrl(s.url), cpu: s.cpuMs, results: [] as StreamResult[], cpu0: 0 }));
  for (const s of sides) s.cpu0 = s.cpu?.() ?? Number.NaN;
  let differing = 0;
  const numbered = distinctRequests(1, opts.requests, opts.phaseRequests);
  for (let k = 0; k < opts.requests; k++) {
    const phase = SKEW_PHASES[numbered[k].phase];
    const content = opts.repeatPrompts ? phase.variants[k % phase.variants.length] : numbered[k].content;
    const order = k % 2 === 0 ? [0, 1] : [1, 0];
    const got: StreamResult[] = [];
    for (const i of order) {
      const signal = AbortSignal.timeout(opts.requestTimeoutMs ?? REQUEST_TIMEOUT_MS);
      const req = { model: opts.model, content, maxTokens: opts.maxTokens };
      const r = await streamChat(sides[i].base, req, {}, signal);
      sides[i].results.push(r);
      got[i] = r;
    }
    if (!got[0].error && !got[1].error) {
      const d = compareChunks(got[0].chunks, got[1].chunks);
      differing += d.changed + d.lost;
    }
  }
  const [ra, rb] = sides.map((s) => side(s.results, s.cpu ? s.cpu() : null, s.cpu0));
  return {
    a: ra,
    b: rb,
    ratio: rb.decodeTokensPerSec > 0 ? ra.decodeTokensPerSec / rb.decodeTokensPerSec : null,
    tokensDiffering: differing,
  };
}

function side(results: StreamResult[], cpu1: number | null, cpu0: number): SideReport {
  const ok = results.filter((r) => !r.error);
  const tokens = ok.reduce((n, r) => n + r.completionTokens, 0);
  const seconds = results.reduce((s, r) => s + (r.endedAt - r.startedAt), 0) / 1000;
  const cpu = cpu1 !== null && Number.isFinite(cpu0) && tokens > 0 ? (cpu1 - cpu0) / tokens : null;
  return {
    requests: results.length,
    failed: results.length - ok.length,
    completionTokens: tokens,
    seconds,
    decodeTokensPerSec: seconds > 0 ? tokens / seconds : 0,
    tpotMsP50: percentile(
      ok.flatMap((r) => (r.tpotMs === null ? [] : [r.tpotMs])),
      50,
    ),
    ttftMsP50: percentile(
      ok.flatMap((r) => (r.ttftMs === null ? [] : [r.ttftMs])),
      50,
    ),
    serverCpuMsPerToken: cpu,
  };
}
