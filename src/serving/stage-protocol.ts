/**
 * @module The RPC contract of the pipeline stages. One `run` call carries one chunk of one session
 * (a prompt chunk or a decode token) through a stage; the stage passes it on to the next stage of
 * `route` itself (a chain: the Worker pays one round trip per chunk, not one per stage), and the
 * last stage returns the final residual rows. Failures cross the RPC as data.
 */
import type { MemoryPeakStats } from "../platform/memory-peak";
import type { PassStats } from "../platform/pass-stats";
import type { RuntimeMemoryStats } from "./model-runtime";

/** One stage of the chain: its DO name and layer range [first, end). */
export interface StageHop {
  name: string;
  first: number;
  end: number;
}

export interface StageRunRequest {
  model: string;
  /** The caller's upload of the model (OpenedModel.version): a stage holding another reloads or refuses. */
  version?: string;
  /** Session id (one per request); its KV cache lives in every stage of the route. */
  session: string;
  /** Positions the session reserves when it opens (at start = 0): prompt + max tokens. */
  maxLen: number;
  /** Position of the first row of x. */
  start: number;
  x: Float32Array; // [n, dModel] residual stream entering route[0]
  /** Rows to return from the last stage (its last nOut rows). */
  nOut: number;
  /** This stage (route[0]) and every stage after it, in order. */
  route: StageHop[];
  /** Return the routing of every MoE layer (verify). */
  trace: boolean;
}

/** Routing of one MoE layer as it crosses the RPC. */
export interface StageLayerTrace {
  layer: number;
  n: number;
  topK: number;
  ids: Int32Array; // [n, topK]
  weights: Float32Array; // [n, topK]
  /** ExpertHost RPCs of this layer call. */
  rpcs: number;
}

export type StageFailureCode =
  | "busy"
  /** The stage's pass queue is full, or a call waited past its queue deadline: retry shortly. */
  | "overloaded"
  | "too_long"
  | "bad_request"
  | "model_error"
  | "budget_exceeded"
  | "expert_unavailable"
  /** An RPC further down the pipeline missed its deadline (a session driver reports it in band). */
  | "upstream_timeout"
  /** The stage no longer holds the session's KV cache (the instance was evicted or reset): replay it. */
  | "session_lost"
  | "model_changed";

export interface StageFailure {
  ok: false;
  code: StageFailureCode;
  message: string;
  /** With "busy": when a retry may find room. */
  retryAfterMs?: number;
}

export type StageRunResult =
  | {
      ok: true;
      y: Float32Array; // [nOut, dModel]
      trace: StageLayerTrace[];
      /** RPCs made by the stages of the route for this call (next-stage hops + expert fan-out). */
      rpcs: number;
    }
  | StageFailure;

/** A stage call's success. */
export type StageRunOk = Extract<StageRunResult, { ok: true }>;

/** A session driver's answer: token ids as little-endian int32 (serving/decode-loop.ts). */
export type StageDecodeResult = { ok: true; tokens: ReadableStream<Uint8Array> } | StageFailure;

export type StageMoeResult = { ok: true; out: Float32Array; trace: StageLayerTrace } | StageFailure;

/** Counters of a StageHost's passes over its layers (src/stages/stage-batcher.ts). */
export type StageBatchStats = PassStats;

export interface StageHostStats {
  name: string;
  model: string | null;
  first: number | null;
  end: number | null;
  kernels: string | null;
  /** Dense weight bytes held (exactly what the matrices take in Wasm memory, in `denseFormat`). */
  bytesHeld: number;
  budgetBytes: number;
  /** How the layers' matrices are held (DENSE_QUANT: f32, bf16 or int8); null before the first load. */
  denseFormat: string | null;
  /** The load: ranged reads, and the most checkpoint bytes + row scratch it held in JS at once. */
  load: { ms: number; reads: number; bytesRead: number; maxJsScratchBytes: number } | null;
  kvBytesUsed: number;
  kvBudgetBytes: number;
  /** Highest kvBytesUsed since the instance started. */
  kvBytesPeak: number;
  sessions: number;
  /** Sessions refused because the KV budget was full (429 to the client). */
  refused: number;
  wasmBytesInUse: number;
  wasmMemoryBytes: number;
  /** High-water marks since the instance started (bytesHeldPeak: weights + KV caches). */
  peak: MemoryPeakStats;
  /** A session driver's runtime (what it holds for the model it drives); null on a stage. */
  driver: RuntimeMemoryStats | null;
  /**
   * A session driver's shared decode steps (BATCHING on): steps run, the rows they carried and
   * their segments (one per generation a step); null on a stage or a driver that ran none.
   */
  driverSteps: { steps: number; rows: number; segments: number } | null;
  /** A session driver's sessions replayed from position 0 because a stage lost them; 0 on a stage. */
  replays: number;
  /** Continuous batching of the stage's calls (passes, merged passes and their rows); null when off. */
  batching: StageBatchStats | null;
}
