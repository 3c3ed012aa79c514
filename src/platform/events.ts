/**
 * @module A tiny, typed event sink for facts the expert fan-out learns on the request path (one
 * layer call's latency, RPCs, capacity drops and re-routes; a failed expert call that is retried or
 * sent elsewhere; an RPC's wait before the ExpertHost took it). It lives at the bottom layer so
 * `src/experts` can report without importing `src/observability` (which sits above it):
 * observability installs a sink at load, everyone else only calls `expertEvents()`. No sink
 * installed (tests, scripts) means reporting costs one null check.
 */

/**
 * What the expert fan-out and the MoE block report; implementations must be cheap and must not
 * throw. Positional arguments, so a report allocates nothing on the request path.
 */
export interface ExpertEventSink {
  /**
   * One MoE layer's tokens, after routing: `dropped` (token, expert) assignments found no expert
   * with room under the capacity factor (0 unless CAPACITY_FACTOR is set).
   */
  routed(layer: number, tokens: number, dropped: number): void;
  /** One layer's fan-out answered: its wall time (RPCs, retries, combine) and the RPCs it sent. */
  layerCall(layer: number, seconds: number, rpcs: number): void;
  /** One batched decode step of `model` ran: the requests and token rows it carried (the batch size). */
  batched?(model: string, requests: number, rows: number): void;
  /** Prompt positions of `model` copied from a live session's KV cache instead of run (prefix sharing). */
  prefixShared?(model: string, tokens: number): void;
  /** A failed expert call whose rows are retried or sent to another replica; `code` is bounded. */
  failover(layer: number, code: string): void;
  /**
   * One MoE layer's (token, expert) assignments that the capacity factor moved to a token's
   * later choice (kept, but outside its uncapped top-k).
   */
  rerouted(layer: number, assignments: number): void;
  /**
   * One ExpertHost RPC's time outside the object: its round trip minus the time the host says it
   * spent inside `forward` — the wait in workerd's input queue for the object, plus transit.
   */
  rpcWait(layer: number, seconds: number): void;
  /**
   * Sends what this isolate recorded soon, off the request path. The Worker flushes after each
   * request; a Durable Object that runs layers itself (StageHost) calls this after its work.
   */
  flushSoon?(env: Env, waitUntil: (p: Promise<unknown>) => void): void;
}

let sink: ExpertEventSink | null = null;

/** Installs (or with null removes) this isolate's sink; returns the one it replaces. */
export function setExpertEventSink(next: ExpertEventSink | null): ExpertEventSink | null {
  const prev = sink;
  sink = next;
  return prev;
}

/** This isolate's sink, or null when nothing listens (callers skip timing then). */
export function expertEvents(): ExpertEventSink | null {
  return sink;
}

/** Asks the installed sink to flush soon (see ExpertEventSink.flushSoon); nothing without one. */
export function flushExpertEventsSoon(env: Env, waitUntil: (p: Promise<unknown>) => void): void {
  sink?.flushSoon?.(env, waitUntil);
}
