/**
 * The Worker's KV budget within its Wasm memory (src/platform/budgets.ts workerKvBudget): the
 * weights loaded and a step's scratch always fit beside a full KV budget under the memory's cap.
 */
import { describe, expect, it } from "vitest";
import { WASM_MAX_BYTES } from "../../../src/kernels/index";
import { WORKER_SCRATCH_BYTES, workerKvBudget } from "../../../src/platform/budgets";

const MIB = 1024 * 1024;

describe("workerKvBudget", () => {
  it("is WORKER_KV_BUDGET_MB when weights, KV and scratch fit the cap", () => {
    expect(workerKvBudget(WASM_MAX_BYTES, 34 * MIB, 48 * MIB)).toBe(48 * MIB);
  });

  it("shrinks to what fits beside the weights and a step's scratch (granite's first 4 layers)", () => {
    const weights = 48.5 * MIB;
    const kv = workerKvBudget(WASM_MAX_BYTES, weights, 48 * MIB);
    expect(kv).toBe(WASM_MAX_BYTES - weights - WORKER_SCRATCH_BYTES);
    expect(kv).toBeLessThan(48 * MIB);
    expect(weights + kv + WORKER_SCRATCH_BYTES).toBeLessThanOrEqual(WASM_MAX_BYTES);
  });

  it("is never negative", () => {
    expect(workerKvBudget(WASM_MAX_BYTES, WASM_MAX_BYTES - MIB, 48 * MIB)).toBe(0);
  });
});
