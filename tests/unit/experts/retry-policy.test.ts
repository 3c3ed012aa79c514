/**
 * @module retry-policy.test — which failures are retried and where, the full-jitter bounds, the
 * RPC deadline and EXPERT_RPC_TIMEOUT_MS parsing.
 */
import { describe, expect, it } from "vitest";
import { ConfigError } from "../../../src/platform/env";
import {
  DEFAULT_RETRY,
  DEFAULT_RPC_TIMEOUT_MS,
  RpcDeadlineError,
  failureVerdict,
  jitterBackoff,
  retryConfig,
  sleep,
  thrownVerdict,
  withDeadline,
} from "../../../src/experts/retry-policy";

describe("retry policy", () => {
  it("retries model_error and not_assigned, never bad_request or budget_exceeded", () => {
    expect(failureVerdict("model_error")).toBe("retry");
    expect(failureVerdict("not_assigned")).toBe("retry");
    expect(failureVerdict("bad_request")).toBe("fatal");
    expect(failureVerdict("budget_exceeded")).toBe("fatal");
  });

  it("retries runtime errors marked retryable; overloaded, timed-out and unmarked ones only elsewhere", () => {
    expect(thrownVerdict(Object.assign(new Error("reset"), { retryable: true }))).toBe("retry");
    expect(thrownVerdict(Object.assign(new Error("busy"), { retryable: true, overloaded: true }))).toBe("elsewhere");
    expect(thrownVerdict(new Error("Durable Object is overloaded. Requests queued for too long."))).toBe("elsewhere");
    expect(thrownVerdict(new RpcDeadlineError("late"))).toBe("elsewhere");
    expect(thrownVerdict(new Error("something else"))).toBe("elsewhere");
  });

  it("draws full-jitter delays in [0, min(max, base · 2^attempt))", () => {
    const cfg = { ...DEFAULT_RETRY, baseDelayMs: 10, maxDelayMs: 50 };
    expect(jitterBackoff(1, cfg, () => 0)).toBe(0);
    expect(jitterBackoff(1, cfg, () => 0.999)).toBe(19);
    expect(jitterBackoff(2, cfg, () => 0.999)).toBe(39);
    expect(jitterBackoff(9, cfg, () => 0.999)).toBe(49);
  });

  it("reads EXPERT_RPC_TIMEOUT_MS (a bad value names the variable)", () => {
    expect(retryConfig({}).rpcTimeoutMs).toBe(DEFAULT_RPC_TIMEOUT_MS);
    expect(retryConfig({ EXPERT_RPC_TIMEOUT_MS: "250" }).rpcTimeoutMs).toBe(250);
    expect(() => retryConfig({ EXPERT_RPC_TIMEOUT_MS: "0" })).toThrow(ConfigError);
    expect(() => retryConfig({ EXPERT_RPC_TIMEOUT_MS: "fast" })).toThrow(/EXPERT_RPC_TIMEOUT_MS/);
  });

  it("puts a deadline on a call and follows the caller's signal", async () => {
    await expect(withDeadline(new Promise(() => {}), 20, "host h0")).rejects.toBeInstanceOf(RpcDeadlineError);
    await expect(withDeadline(Promise.resolve(7), 20, "host h0")).resolves.toBe(7);
    const ac = new AbortController();
    const pending = withDeadline(new Promise(() => {}), 10_000, "host h0", ac.signal);
    ac.abort(new Error("gone"));
    await expect(pending).rejects.toThrow("gone");
    await expect(sleep(10_000, ac.signal)).rejects.toThrow("gone");
    await expect(sleep(1)).resolves.toBeUndefined();
  });
});
