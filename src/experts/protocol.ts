/**
 * @module The contracts between the Worker, the ExpertHost instances and the Coordinator: one
 * `forward` call carries every (expert, token batch) of one MoE layer that an instance serves;
 * failures cross RPC as data (error classes do not survive it); load reports go to the Coordinator.
 */
import type { MemoryPeakStats } from "../platform/memory-peak";

export interface ExpertRef {
  layer: number;
  expert: number;
}

export interface ExpertWorkItem {
  expert: number;
  nTokens: number;
}

export interface ExpertForwardRequest {
  model: string;
  /**
   * The upload of the model the caller computed with (OpenedModel.version). An instance holding
   * another upload loads the current one, or refuses with `model_changed` when the caller is behind.
   */
  version?: string;
  layer: number;
  /** Work items in the order their rows appear in `x`. */
  items: ExpertWorkItem[];
  x: Float32Array; // [Σ nTokens, dModel]
}

/**
 * Failures an ExpertHost reports as data. Whether the Worker retries one is decided in
 * ./retry-policy.ts: `model_error` and `not_assigned` may be retried (on another replica when one
 * exists); `overloaded` (the host's batch queue is full or a call waited past its queue deadline)
 * only on another replica; `bad_request` and `budget_exceeded` never are, nor `model_changed` (the
 * model was re-uploaded: the caller must reload it, every replica would answer the same).
 */
export type ExpertFailureCode =
  | "budget_exceeded"
  | "model_error"
  | "bad_request"
  | "not_assigned"
  | "overloaded"
  | "model_changed";

export interface ExpertFailure {
  ok: false;
  code: ExpertFailureCode;
  message: string;
}

/**
 * `y` holds one row per input row, in the order of `x`: each row is one expert's output for one
 * token, never a sum over rows. The Worker adds them up in a fixed order (./combine.ts), so what an
 * instance returns cannot depend on which other items shared its call.
 */
export type ExpertForwardResult =
  | {
      ok: true;
      y: Float32Array /* [Σ nTokens, dModel] */;
      /** ms the host spent inside `forward` (its clock); the caller's round trip minus it = queue wait. */
      hostMs?: number;
    }
  | ExpertFailure;

export interface ExpertHostStats {
  name: string;
  model: string | null;
  kernels: string | null;
  loaded: ExpertRef[];
  /** Experts this instance is assigned (it serves only these); sorted by layer, then expert. */
  assigned: ExpertRef[];
  bytesLoaded: number;
  budgetBytes: number;
  wasmBytesInUse: number;
  /** Size of its Wasm memories now. */
  wasmMemoryBytes: number;
  /** High-water marks since the instance started (bytesHeldPeak: expert bytes loaded). */
  peak: MemoryPeakStats;
  calls: number;
  tokens: number;
  /**
   * Expert passes run: one per expert of each kernel call, each streaming that expert's weights
   * once (what the Worker's dispatch pass cost, DISPATCH_PASS_ROWS, stands for).
   */
  expertPasses: number;
  /**
   * Experts read from the checkpoint and packed since the model opened here (replicas added, reloads
   * after a release): what a re-placement costs this instance.
   */
  expertLoads: number;
  /**
   * Forward calls inside this instance right now (begun, not answered: opening the model, running
   * kernels, stalled). Calls the runtime queues before they enter the object are not visible here.
   */
  inflight: number;
  /** Tokens served per "layer:expert". */
  expertTokens: Record<string, number>;
}

export type ExpertLoadResult = { ok: true; stats: ExpertHostStats } | ExpertFailure;

/** What `reconcile` did: the experts it dropped from memory because the assignment no longer holds them. */
export type ExpertReconcileResult = { ok: true; unloaded: ExpertRef[] } | { ok: false; code: string; message: string };

/** Routed-token counts a Worker isolate sends the Coordinator (./load-reporter.ts). */
export interface LoadReport {
  model: string;
  nLayers: number;
  nExperts: number;
  /** Routed (token, expert) pairs per layer·nExperts + expert since the last report. */
  counts: number[];
  /** Rows sent per instance id since the last report. */
  instanceRows: Record<number, number>;
  /** Placement version the counts were routed with (the Coordinator drops `instanceRows` of another). */
  version: number;
  /** Layer calls per placement row since the last report (the latency model's call rate). */
  calls?: number[];
}

export function expertKey(layer: number, expert: number): string {
  return `${layer}:${expert}`;
}

/** DO name of instance `id` of `model`'s ExpertHosts. */
export function hostName(model: string, id: number): string {
  return `${model}/h${id}`;
}
