/**
 * @module Memory budgets of a pipeline stage and of the KV caches, from the deployment's vars.
 * A StageHost's Wasm memory = weights (STAGE_HOST_BUDGET_MB) + KV caches (STAGE_KV_BUDGET_MB) +
 * per-call scratch, all under the kernels' memory cap (a production isolate has 128 MB in all).
 */
import { WASM_MAX_BYTES } from "../kernels/index";
import type { DenseFormat } from "../kernels/dense";
import { ConfigError, enumVar, intVar, mibVar, type Vars } from "../platform/env";
import { maxServableTokens, type ModelSpec } from "../model/config";
import { kvLayout } from "./attention";

const MIB = 1024 * 1024;

/** Per-call activations of a stage: a prompt chunk of ≤ PREFILL_CHUNK tokens stays inside it. */
export const STAGE_SCRATCH_BYTES = 8 * MIB;

/** Prompt tokens per stage call: bounds per-call scratch and keeps RPC payloads far below 32 MiB. */
export const PREFILL_CHUNK = 128;

/** A session unused this long is freed by the stage's alarm (a client that vanished mid-stream). */
export const SESSION_IDLE_MS = 60_000;

/** What a refused (KV-full) request is told to wait before retrying. */
export const KV_RETRY_AFTER_MS = 2_000;

/** Retry-After of a stage whose pass queue refused a call (`stage_overloaded`): a moment's congestion. */
export const STAGE_OVERLOAD_RETRY_MS = 1_000;

/**
 * Checkpoint bytes per ranged read while a StageHost loads its layers: the load's JS memory is one
 * such chunk plus one f32 row (src/model/dense-layers.ts), whatever the stage's size.
 */
export const STAGE_LOAD_CHUNK_BYTES = MIB;

/** DENSE_QUANT values: how StageHosts store their layers' matrices (norms, biases, routers stay f32). */
export const DENSE_QUANTS = ["f32", "bf16", "int8-group"] as const;
export type DenseQuant = (typeof DENSE_QUANTS)[number];
/** The default, chosen by measured accuracy, speed and bytes (README, "Dense weights in the stages"). */
export const DEFAULT_DENSE_QUANT: DenseQuant = "int8-group";

/** The kernel format of a DENSE_QUANT value ("int8-group": int8 with one scale per DEFAULT_GROUP inputs). */
export function denseFormatOf(q: DenseQuant): DenseFormat {
  return q === "int8-group" ? "int8" : q;
}

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
  /** How StageHosts hold their layers' matrices (DENSE_QUANT); the Worker's own layers are always f32. */
  denseFormat: DenseFormat;
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
  const denseFormat = denseFormatOf(enumVar(env, "DENSE_QUANT", DENSE_QUANTS, DEFAULT_DENSE_QUANT));
  return { stageBytes, stageKvBytes, workerKvBytes, forcedStages, forcedHeadShards, denseFormat };
}

/** KV-cache bytes per position of layers [first, end) (f32 K and V). */
export function kvBytesPerPosition(spec: ModelSpec, first: number, end: number): number {
  const { nKvHeads, kHeadDim, vHeadDim } = kvLayout(spec.attention);
  return (end - first) * nKvHeads * (kHeadDim + vHeadDim) * 4;
}

/**
 * Longest prompt + generation one request may have on this placement: the model's context, or
 * less where a KV budget binds — the Worker's when it runs every layer (no stages), else each
 * stage's for its layers (a session reserves its whole length up front on each).
 */
export function deploymentMaxLen(
  spec: ModelSpec,
  stages: readonly { first: number; end: number }[],
  budgets: Pick<StageBudgets, "workerKvBytes" | "stageKvBytes">,
): number {
  const kvLimits =
    stages.length === 0
      ? [Math.floor(budgets.workerKvBytes / kvBytesPerPosition(spec, 0, spec.nLayers))]
      : stages.map((s) => Math.floor(budgets.stageKvBytes / kvBytesPerPosition(spec, s.first, s.end)));
  return Math.min(maxServableTokens(spec), ...kvLimits);
}
