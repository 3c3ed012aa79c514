/**
 * @module Which failed expert calls the fan-out retries, how long it waits, and the deadline of each
 * ExpertHost RPC — after Cloudflare's guidance for Durable Objects (retry an error marked
 * `retryable` that is not `overloaded`; full-jitter exponential backoff, as in cloudflare/agents
 * `retries.ts`). A `forward` call only reads weights and computes, so repeating it elsewhere is
 * safe; what decides a retry is whether it can succeed and whether it would add to an overload.
 */
import { abortReason, RpcDeadlineError } from "../platform/deadline";
import { intVar, type Vars } from "../platform/env";

export { abortReason, RpcDeadlineError, withDeadline } from "../platform/deadline";
import type { ExpertFailureCode } from "./protocol";

export interface RetryConfig {
  /** Attempts per (token, expert) row, the first included. */
  maxAttempts: number;
  /** Full-jitter backoff before attempt a (a ≥ 1): uniform in [0, min(maxDelayMs, baseDelayMs · 2^a)). */
  baseDelayMs: number;
  maxDelayMs: number;
  /** Deadline of one ExpertHost RPC (EXPERT_RPC_TIMEOUT_MS). */
  rpcTimeoutMs: number;
}

/**
 * The first call to an instance whose isolate was evicted reads its experts from R2 before it
 * computes, so the deadline leaves room for that; a stuck instance still costs at most this long.
 */
export const DEFAULT_RPC_TIMEOUT_MS = 15_000;

export const DEFAULT_RETRY: RetryConfig = {
  maxAttempts: 3,
  baseDelayMs: 10,
  maxDelayMs: 200,
  rpcTimeoutMs: DEFAULT_RPC_TIMEOUT_MS,
};

export function retryConfig(env: Vars): RetryConfig {
  return { ...DEFAULT_RETRY, rpcTimeoutMs: intVar(env, "EXPERT_RPC_TIMEOUT_MS", DEFAULT_RPC_TIMEOUT_MS, { min: 1 }) };
}

/**
 * What to do with the rows of a failed call:
 * - "retry": again, on another replica when the expert has one, else on the same instance after
 *   the backoff (a Durable Object reset mid-call usually answers the next time);
 * - "elsewhere": only on another replica — never back to an instance that is overloaded or did not
 *   answer within its deadline;
 * - "fatal": not at all (the request is wrong, or the answer would be the same everywhere).
 */
export type RetryVerdict = "retry" | "elsewhere" | "fatal";

/** Verdict on a failure an ExpertHost answered with. */
export function failureVerdict(code: ExpertFailureCode): RetryVerdict {
  switch (code) {
    case "model_error":
    case "not_assigned":
      return "retry";
    case "overloaded":
      return "elsewhere";
    case "bad_request":
    case "budget_exceeded":
    case "model_changed":
      return "fatal";
  }
}

/** Verdict on an exception from the RPC itself (the runtime's errors carry `retryable` / `overloaded`). */
export function thrownVerdict(err: unknown): RetryVerdict {
  if (err instanceof RpcDeadlineError) return "elsewhere";
  const flags = typeof err === "object" && err !== null ? (err as { retryable?: unknown; overloaded?: unknown }) : {};
  if (flags.overloaded === true || String(err).includes("Durable Object is overloaded")) return "elsewhere";
  if (flags.retryable === true) return "retry";
  // Unmarked: the call may or may not have run; it is idempotent, so another replica may serve it.
  return "elsewhere";
}

/** Full jitter: uniform in [0, min(maxDelayMs, baseDelayMs · 2^attempt)). */
export function jitterBackoff(attempt: number, cfg: RetryConfig, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(cfg.maxDelayMs, cfg.baseDelayMs * 2 ** attempt));
}

/** Waits `ms`, or rejects at once when the caller goes away. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(abortReason(signal));
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortReason(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export function isAbort(err: unknown, signal?: AbortSignal): boolean {
  return !!signal?.aborted && (err === signal.reason || (err instanceof DOMException && err.name === "AbortError"));
}
