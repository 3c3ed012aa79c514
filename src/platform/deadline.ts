/**
 * @module Deadlines for Durable Object RPCs: a call that does not answer in time stops being waited
 * for (the RPC itself cannot be cancelled; its late answer is dropped). Used for every RPC the
 * Worker, a stage or a driver makes: ExpertHost, Coordinator, StageHost and HeadHost calls.
 */
import { intVar, type Vars } from "./env";

/** An RPC that did not answer within its deadline. */
export class RpcDeadlineError extends Error {
  override name = "RpcDeadlineError";
}

/**
 * `work` raced against a deadline and the caller's signal. The RPC itself cannot be cancelled; the
 * caller stops waiting for it (its late answer is dropped). Rejects with RpcDeadlineError on the
 * deadline and with the signal's reason when the caller went away.
 */
export function withDeadline<T>(work: Promise<T>, ms: number, what: string, signal?: AbortSignal): Promise<T> {
  if (signal?.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const late = () => new RpcDeadlineError(`${what} did not answer within ${ms} ms`);
    const timer = setTimeout(() => finish(() => reject(late())), ms);
    const onAbort = () => finish(() => reject(abortReason(signal!)));
    signal?.addEventListener("abort", onAbort, { once: true });
    let done = false;
    function finish(settle: () => void): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      settle();
    }
    work.then(
      (v) => finish(() => resolve(v)),
      (e: unknown) => finish(() => reject(e)),
    );
  });
}

export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("the request was aborted", "AbortError");
}

/**
 * Deadline of one StageHost / HeadHost RPC (PIPELINE_RPC_TIMEOUT_MS). Generous by default: a chain
 * call carries every later stage's work, and a cold stage first reads its layers from R2.
 */
export const DEFAULT_PIPELINE_RPC_TIMEOUT_MS = 120_000;

export function pipelineRpcTimeoutMs(env: Vars): number {
  return intVar(env, "PIPELINE_RPC_TIMEOUT_MS", DEFAULT_PIPELINE_RPC_TIMEOUT_MS, { min: 1 });
}
