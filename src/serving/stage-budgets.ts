/**
 * @module Memory budgets of a pipeline stage and of the KV caches, from the deployment's vars.
 * A StageHost's Wasm memory = weights (STAGE_HOST_BUDGET_MB) + KV caches (STAGE_KV_BUDGET_MB) +
 * per-call scratch, all under the kernels' memory cap (a production isolate has 128 MB in all).
 */
import { WASM_MAX_BYTES } from "../kernels/index";
import { ConfigError, intVar, mibVar, type Vars } from "../platform/env";

const MIB = 1024 * 1024;

/** Per-call activations of a stage: a prompt chunk of ≤ PREFILL_CHUNK tokens stays inside it. */
export const STAGE_SCRATCH_BYTES = 8 * MIB;

/** Prompt tokens per stage call: bounds per-call scratch and keeps RPC payloads far below 32 MiB. */
export const PREFILL_CHUNK = 128;

/** A session unused this long is freed by the stage's alarm (a client that vanished mid-stream). */
export const SESSION_IDLE_MS = 60_000;

/** What a refused (KV-full) request is told to wait before retrying. */
export const KV_RETRY_AFTER_MS = 2_000;

export interface StageBudgets {
  /** Dense weight bytes one StageHost may hold. */
  stageBytes: number;
  /** KV-cache bytes one StageHost may hold over all sessions. */
  stageKvBytes: number;
  /** KV-cache bytes the Worker may hold when it runs layers itself. */
  workerKvBytes: number;
  /** Force this many pipeline stages (0 = from the budgets). */
  forcedStages: number;
  /** Force the output head onto this many HeadHost shards (0 = only when it does not fit the Worker). */
  forcedHeadShards: number;
}

/** Embedding rows the Worker caches when the table is not in its memory (untied models). */
export const EMBED_CACHE_BYTES = 4 * MIB;

export function readStageBudgets(env: Vars): StageBudgets {
  const stageBytes = mibVar(env, "STAGE_HOST_BUDGET_MB", 64);
  const stageKvBytes = mibVar(env, "STAGE_KV_BUDGET_MB", 24);
  if (stageBytes + stageKvBytes + STAGE_SCRATCH_BYTES > WASM_MAX_BYTES) {
    const cap = (WASM_MAX_BYTES - STAGE_SCRATCH_BYTES) / MIB;
    throw new ConfigError(
      "STAGE_HOST_BUDGET_MB",
      `at most ${cap.toFixed(0)} MiB together with STAGE_KV_BUDGET_MB ` +
        `(${STAGE_SCRATCH_BYTES / MIB} MiB of scratch must fit the Wasm memory cap)`,
      String(stageBytes / MIB),
    );
  }
  const workerKvBytes = mibVar(env, "WORKER_KV_BUDGET_MB", 48);
  const forcedStages = intVar(env, "PIPELINE_STAGES", 0, { min: 0, max: 1024 });
  const forcedHeadShards = intVar(env, "HEAD_SHARDS", 0, { min: 0, max: 4096 });
  return { stageBytes, stageKvBytes, workerKvBytes, forcedStages, forcedHeadShards };
}
