/**
 * @module The Worker-side hooks: a middleware that counts every response by route and status
 * (429/503 also as admission refusals), logs failures as structured JSON with the request id,
 * and schedules this isolate's metrics flush; and a per-generation tracker the OpenAI routes use
 * to record TTFT, time per output token, end-to-end latency and tokens.
 */
import type { Context, MiddlewareHandler } from "hono";
import {
  flushIfLoadDue,
  recordGeneration,
  recordRequest,
  routeLabel,
  scheduleFlush,
  type GenerationRecord,
  type WaitUntilFn,
} from "./recorder";

/** When each request reached the Worker (keyed by the raw Request; no shared Context typing needed). */
const started = new WeakMap<Request, number>();

/** What the hooks read of any sub-app's context (routes add their own Variables: request id, API key). */
type AnyContext = Pick<Context<{ Bindings: Env }>, "env" | "req" | "res" | "var" | "executionCtx">;

/** The request id: hono's requestId middleware value when present, else the X-Request-Id header. */
export function requestIdOf(c: AnyContext): string | null {
  const fromVar = (c.var as Record<string, unknown>).requestId;
  if (typeof fromVar === "string") return fromVar;
  return c.res?.headers.get("x-request-id") ?? c.req.header("x-request-id") ?? null;
}

export function log(level: "info" | "warn" | "error", msg: string, fields: Record<string, unknown>): void {
  const line = JSON.stringify({ level, msg, ...fields });
  if (level === "error") console.error(line);
  else if (level === "warn") console.warn(line);
  else console.log(line);
}

function waitUntilOf(c: AnyContext): WaitUntilFn | undefined {
  try {
    const ctx = c.executionCtx;
    return (p) => ctx.waitUntil(p);
  } catch {
    return undefined;
  }
}

const KNOWN_METHODS = new Set(["GET", "POST", "OPTIONS", "HEAD", "PUT", "DELETE", "PATCH"]);

export function observe(): MiddlewareHandler<{ Bindings: Env }> {
  return async (c, next) => {
    const t0 = Date.now();
    started.set(c.req.raw, t0);
    await next();
    const route = routeLabel(new URL(c.req.url).pathname);
    const status = c.res.status;
    // The method is a label: only known ones, so a client cannot grow the series set.
    const method = KNOWN_METHODS.has(c.req.method) ? c.req.method : "other";
    recordRequest(route, method, status);
    if (status >= 400) {
      log(status >= 500 ? "error" : "warn", "request failed", {
        requestId: requestIdOf(c),
        method: c.req.method,
        route,
        status,
        ms: Date.now() - t0,
      });
    }
    scheduleFlush(c.env, waitUntilOf(c));
  };
}

export interface GenerationTracker {
  /** Call for every event the generator yields (the first one carries the first token). */
  event(): void;
  end(stats: { promptTokens: number; completionTokens: number }, finish: GenerationRecord["finish"]): void;
}

/** Times one generation from the request's arrival; records and logs it on `end`. */
export function trackGeneration(c: AnyContext, model: string): GenerationTracker {
  const t0 = started.get(c.req.raw) ?? Date.now();
  let first: number | null = null;
  let done = false;
  return {
    event() {
      first ??= Date.now();
      // A long stream keeps this isolate's in-flight gauge fresh at the hub (a heartbeat, not per token).
      flushIfLoadDue(c.env, waitUntilOf(c));
    },
    end(stats, finish) {
      if (done) return;
      done = true;
      const now = Date.now();
      const rec: GenerationRecord = {
        model,
        ttftMs: first === null ? null : first - t0,
        e2eMs: now - t0,
        promptTokens: stats.promptTokens,
        completionTokens: stats.completionTokens,
        decodeMs: first === null ? 0 : now - first,
        finish,
      };
      recordGeneration(rec);
      log("info", "generation", { requestId: requestIdOf(c), route: routeLabel(new URL(c.req.url).pathname), ...rec });
      // Streaming responses end after the middleware ran: schedule the flush from here too.
      scheduleFlush(c.env, waitUntilOf(c));
    },
  };
}
