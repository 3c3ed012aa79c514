/**
 * @module Memory budgets from the deployment's vars. Local workerd enforces no isolate limit, so
 * the code enforces its own (production: 128 MB per isolate for JS heap + Wasm + code).
 */
import { WASM_MAX_BYTES } from "../kernels/index";
import { ConfigError, intVar, mibVar, type Vars } from "./env";

const MIB = 1024 * 1024;

export interface Budgets {
  /** Bytes of expert weights one ExpertHost may hold. */
  expertHostBytes: number;
  /** Bytes of dense weights the Worker may hold. */
  workerBytes: number;
  minExpertHosts: number;
  /** Bytes of expert weights the Worker may hold itself (EXPERT_BACKEND = "worker" only). */
  workerExpertBytes: number;
}

/** Kernel memory beyond the weights: activations, KV caches and scratch. */
export const WORKER_SCRATCH_BYTES = 8 * MIB;
// ≥ ExpertStore scratch (expert-store.ts scratchBytes) for dModel, dFf ≤ 4096.
export const HOST_SCRATCH_BYTES = 5 * MIB;

/**
 * The KV-cache bytes the Worker may reserve for a model, within its Wasm memory: what is loaded
 * (`bytesInUse`: the dense weights) and a step's scratch must fit beside the sessions under the
 * memory's cap. WORKER_KV_BUDGET_MB alone let sessions fill the cap whenever weights + KV budget +
 * scratch passed it (granite's first 4 layers: 48.5 + 48 + 8 MiB against 104), and the next
 * step's scratch then failed.
 */
export function workerKvBudget(maxBytes: number, bytesInUse: number, kvBytes: number): number {
  return Math.max(0, Math.min(kvBytes, maxBytes - bytesInUse - WORKER_SCRATCH_BYTES));
}

export function readBudgets(env: Vars): Budgets {
  const expertHostBytes = mibVar(env, "EXPERT_HOST_BUDGET_MB", 96);
  const workerBytes = mibVar(env, "WORKER_BUDGET_MB", 96);
  for (const [name, bytes, scratch] of [
    ["EXPERT_HOST_BUDGET_MB", expertHostBytes, HOST_SCRATCH_BYTES],
    ["WORKER_BUDGET_MB", workerBytes, WORKER_SCRATCH_BYTES],
  ] as const) {
    if (bytes + scratch > WASM_MAX_BYTES) {
      const cap = (WASM_MAX_BYTES - scratch) / MIB;
      throw new ConfigError(
        name,
        `at most ${cap.toFixed(0)} MiB (${(scratch / MIB).toFixed(0)} MiB of scratch must fit under the ` +
          `${(WASM_MAX_BYTES / MIB).toFixed(0)} MiB Wasm memory cap; a production isolate has 128 MB in all)`,
        String(bytes / MIB),
      );
    }
  }
  const minExpertHosts = intVar(env, "MIN_EXPERT_HOSTS", 1, { min: 1 });
  // 0 (the default) disables the in-isolate expert backend.
  const workerExpertBytes = mibVar(env, "WORKER_EXPERT_BUDGET_MB", 0, { min: 0 });
  return { expertHostBytes, workerBytes, minExpertHosts, workerExpertBytes };
}
