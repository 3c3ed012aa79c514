/**
 * @module The fuzz run behind `npm run fuzz` and its shortened test: starts the bundled Worker in
 * local workerd (loopback only) with two small models, API keys on and CORS on, sends the cases of
 * fuzz-cases.ts with bounded concurrency until the count or the deadline is reached, and checks
 * every answer: never a 5xx or a dropped connection; every error a JSON body
 * `{error: {message, type, param, code}}`; a 400 caused by one field names that field; a stream
 * carries no server error in-band.
 */
import { createHash } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startLocalWorker, ROOT, type LocalWorker } from "./local-worker";
import { seedModelDir } from "./seed-lib";
import { makeDemoModel } from "./demo-model";
import { fuzzCase, FUZZ_KEY, type FuzzCase } from "./fuzz-cases";

export interface FuzzOptions {
  count: number;
  seed: number;
  concurrency: number;
  /** Stop sending after this long even if `count` is not reached. */
  deadlineMs: number;
  log?: (line: string) => void;
}

export interface FuzzReport {
  sent: number;
  ms: number;
  byStatus: Record<string, number>;
  byKind: Record<string, number>;
  serverErrors: number;
  violations: { case: FuzzCase; problem: string }[];
}

/** Vars of the fuzz server: generation capped small so that the valid cases stay cheap. */
export const FUZZ_VARS: Record<string, string> = {
  DEFAULT_MODEL: "tiny",
  MIN_EXPERT_HOSTS: "2",
  MAX_TOKENS_CAP: "8",
  DEFAULT_MAX_TOKENS: "4",
  // 10,000 requests from one client would be all 429s after the first minute's allowance; the
  // limiter has its own test (tests/integration/auth.test.ts).
  RATE_LIMIT_ENABLED: "false",
  CORS_ORIGINS: "https://app.example.com",
};

export async function startFuzzTarget(): Promise<LocalWorker> {
  const w = await startLocalWorker({
    vars: FUZZ_VARS,
    secrets: { API_KEY_HASHES: createHash("sha256").update(FUZZ_KEY).digest("hex") },
  });
  if (!["127.0.0.1", "localhost", "[::1]"].includes(w.url.hostname)) {
    await w.dispose();
    throw new Error(`the fuzz target must listen on loopback, got ${w.url.hostname}`);
  }
  const chat = join(mkdtempSync(join(tmpdir(), "edge-moe-fuzz-")), "model");
  makeDemoModel(chat, { size: { dModel: 32, nLayers: 2, nHeads: 4, nKvHeads: 2, dFf: 48, nExperts: 4, topK: 2 } });
  const bucket = await w.bucket();
  await seedModelDir(bucket, join(ROOT, "tests", "fixtures", "mixtral-tiny"), "tiny", {
    skip: (f) => f === "golden.json",
  });
  await seedModelDir(bucket, chat, "chat", {});
  return w;
}

function requestInit(c: FuzzCase): RequestInit {
  const init: RequestInit & { duplex?: "half" } = { method: c.method, headers: c.headers };
  if (c.method === "GET" || c.method === "HEAD") return init;
  if (c.chunkedBytes !== undefined) {
    // A stream has no Content-Length: the body arrives chunked, as a hostile client would send it.
    const bytes = c.chunkedBytes < 0 ? new TextEncoder().encode(String(c.body ?? "")) : null;
    let left = c.chunkedBytes;
    init.body = new ReadableStream<Uint8Array>({
      pull(ctl) {
        if (bytes) {
          ctl.enqueue(bytes);
          ctl.close();
        } else if (left <= 0) ctl.close();
        else {
          const n = Math.min(left, 65_536);
          ctl.enqueue(new Uint8Array(n).fill(0x78));
          left -= n;
        }
      },
    });
    init.duplex = "half";
    return init;
  }
  if (c.body !== undefined) init.body = c.body;
  return init;
}

interface ErrorBody {
  error?: { message?: unknown; type?: unknown; param?: unknown; code?: unknown };
}

/** What is wrong with an answer, or null. */
export function checkAnswer(c: FuzzCase, status: number, contentType: string, text: string): string | null {
  if (status >= 500) return `status ${status}: ${text.slice(0, 200)}`;
  if (c.method === "HEAD") return null;
  if (status >= 400) {
    if (!contentType.includes("application/json")) return `status ${status} with content-type "${contentType}"`;
    let body: ErrorBody;
    try {
      body = JSON.parse(text) as ErrorBody;
    } catch {
      return `status ${status} with a body that is not JSON: ${text.slice(0, 120)}`;
    }
    const e = body.error;
    if (!e || typeof e.message !== "string" || typeof e.type !== "string")
      return `error body lacks error.message/type: ${text.slice(0, 200)}`;
    if (!("param" in e) || !(e.param === null || typeof e.param === "string"))
      return `error body lacks error.param: ${text.slice(0, 200)}`;
    if (!("code" in e)) return `error body lacks error.code: ${text.slice(0, 200)}`;
    if (status === 400 && c.field !== undefined && e.code !== "invalid_json") {
      const p = e.param;
      const named =
        typeof p === "string" && (p === c.field || p.startsWith(`${c.field}[`) || p.startsWith(`${c.field}.`));
      if (!named) return `400 for a bad "${c.field}" names param ${JSON.stringify(p)}: ${e.message.slice(0, 160)}`;
    }
    return null;
  }
  if (contentType.includes("text/event-stream") && /"type":"server_error"/.test(text))
    return `stream carried a server error: ${text.slice(0, 200)}`;
  return null;
}

export async function runFuzz(w: LocalWorker, opts: FuzzOptions): Promise<FuzzReport> {
  const log = opts.log ?? (() => {});
  const report: FuzzReport = { sent: 0, ms: 0, byStatus: {}, byKind: {}, serverErrors: 0, violations: [] };
  const t0 = performance.now();
  let next = 0;
  let lastLog = t0;
  const worker = async () => {
    while (next < opts.count && performance.now() - t0 < opts.deadlineMs) {
      const c = fuzzCase(opts.seed, next++);
      report.byKind[c.kind] = (report.byKind[c.kind] ?? 0) + 1;
      let status = 0;
      let problem: string | null;
      try {
        const res = await w.fetch(c.path, requestInit(c));
        status = res.status;
        problem = checkAnswer(c, res.status, res.headers.get("content-type") ?? "", await res.text());
      } catch (err) {
        const cause = err instanceof Error ? String((err as { cause?: unknown }).cause ?? "") : "";
        problem = `no answer: ${err instanceof Error ? `${err.message} ${cause}` : String(err)}`;
      }
      report.sent++;
      const key = status === 0 ? "no answer" : String(status);
      report.byStatus[key] = (report.byStatus[key] ?? 0) + 1;
      if (status >= 500) report.serverErrors++;
      if (problem) report.violations.push({ case: c, problem });
      const now = performance.now();
      if (now - lastLog > 5000) {
        lastLog = now;
        log(`  ${report.sent} requests, ${((now - t0) / 1000).toFixed(0)} s, ${report.violations.length} violations`);
      }
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, worker));
  report.ms = performance.now() - t0;
  return report;
}

export function summary(r: FuzzReport): string {
  const statuses = Object.entries(r.byStatus)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([s, n]) => `${s} × ${n}`)
    .join(", ");
  const head = `fuzz: ${r.sent} requests in ${(r.ms / 1000).toFixed(1)} s`;
  return `${head}: ${r.serverErrors} × 5xx, ${r.violations.length} violations (${statuses})`;
}
