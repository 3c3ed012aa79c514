/**
 * @module The RPC contract between a caller (the Worker, or whatever runs the decode loop) and
 * HeadHost instances. One call per shard per step: the normed hidden states go to every shard,
 * each answers for its own vocabulary rows. Failures cross RPC as data (error classes do not).
 */
import type { MemoryPeakStats } from "../platform/memory-peak";
import type { PassStats } from "../platform/pass-stats";

/** Which rows of which model's head an instance serves (its placement entry, sent with every call
 * so an instance evicted and restarted reloads the same rows on demand). */
export interface HeadShardRef {
  model: string;
  rowStart: number;
  rowEnd: number;
  /** The caller's upload of the model (OpenedModel.version): a shard holding another one reloads or refuses. */
  version?: string;
}

/**
 * "logits": the shard's slice of the logits, [n, rowEnd − rowStart].
 * "greedy": per token the largest logit of the slice and its vocabulary id (ties → lowest id).
 */
export type HeadMode = "logits" | "greedy";

export interface HeadForwardRequest extends HeadShardRef {
  mode: HeadMode;
  /** Tokens in `hidden`. */
  n: number;
  /** [n, dModel] hidden states after the model's final norm. */
  hidden: Float32Array;
}

/** Failures a HeadHost reports as data. */
export type HeadFailureCode = "budget_exceeded" | "model_error" | "bad_request" | "model_changed" | "overloaded";

export type HeadFailure = { ok: false; code: HeadFailureCode; message: string };

export type HeadForwardResult =
  | { ok: true; mode: "logits"; logits: Float32Array /* [n, rowEnd − rowStart], ÷ logits_scaling */ }
  | { ok: true; mode: "greedy"; max: Float32Array /* [n] */; argmax: Int32Array /* [n], vocabulary ids */ }
  | HeadFailure;

/** Embedding rows a HeadHost holding the tied table can serve (ids within its rows). */
export type HeadEmbedResult = { ok: true; rows: Float32Array /* [ids.length, dModel] */ } | HeadFailure;

export interface HeadHostStats {
  name: string;
  model: string | null;
  /** Head tensor and rows held (null before the first load). */
  tensor: string | null;
  rowStart: number;
  rowEnd: number;
  /** How the rows are held: "bf16" (stored bf16) or "f32". */
  format: string | null;
  kernels: string | null;
  bytesLoaded: number;
  budgetBytes: number;
  wasmBytesInUse: number;
  /** Size of its Wasm memory now. */
  wasmMemoryBytes: number;
  /** High-water marks since the instance started (bytesHeldPeak: head rows loaded). */
  peak: MemoryPeakStats;
  calls: number;
  tokens: number;
  /** Continuous batching of the shard's calls; null when BATCHING is off. */
  batching: HeadBatchStats | null;
}

/** Counters of a HeadHost's head passes (src/head/head-host-batcher.ts). */
export type HeadBatchStats = PassStats;

export type HeadLoadResult = { ok: true; stats: HeadHostStats } | HeadFailure;
