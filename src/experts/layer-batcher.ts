/**
 * @module Worker-side continuous batching of the expert fan-out: the `runExperts` calls of
 * different requests that reach the same (model, MoE layer) in one isolate within one turn are
 * merged into ONE fan-out (./fan-out.ts) — one RPC per ExpertHost per layer, whatever the number of
 * requests — and each caller gets its own rows back, summed in its own slot order (./combine.ts).
 * Since hosts compute every row independently of the others in a call (row-independence test),
 * merging cannot change a caller's result, bit for bit.
 *
 * Requests that shared a layer's call resume together and meet again at the next layer, so they
 * stay in lockstep. To bring a request that started later into step, the first MoE layer of the
 * placement is a barrier: a call there waits (at most BARRIER_WAIT_MS) until every request of the
 * model that decodes in this isolate (`joinBatch`) has arrived — the ones ahead finish their step
 * and come round within one step. Every layer's batch leaves as soon as every such request has
 * joined it (sent by the last to arrive: requests in lockstep pay no timer), else at the end of
 * the turn (the barrier: after its bounded wait).
 *
 * Per caller: its AbortSignal (one caller going away fails only that caller; the merged call stops
 * only when all are gone), its failures (a row no replica served fails only the callers whose
 * rows it held; the other callers' rows are retried per ./retry-policy.ts), its result.
 */
import { placementRow, type Placement } from "../coordinator/placement";
import { ApiError } from "../errors";
import type { Routing } from "../gating/router";
import { Coalescer, QueueFullError, type BatchEntry, type BatchResult } from "../platform/coalescer";
import { combineSlots, type SlotOutputs } from "./combine";
import { fanOutRows, type FanOutOptions, type FanOutTransport, type LayerDispatch } from "./fan-out";
import { DEFAULT_RETRY } from "./retry-policy";

/** Rows (token, slot pairs before routing: tokens) in one merged fan-out at most. */
export const MAX_BATCH_TOKENS = 512;
/**
 * Longest wait at the barrier layer for the isolate's other decoding requests, in ms: about one
 * decode step of a full batch on the demo, so a request that started later falls into step.
 */
export const BARRIER_WAIT_MS = 25;

export interface LayerCall {
  routing: Routing;
  h: Float32Array; // [n, dModel]
  placement: Placement;
  signal?: AbortSignal;
  /**
   * The model upload the caller computes with (OpenedModel.version): calls of different uploads never
   * share a batch, so a request's experts always come from its own upload.
   */
  version?: string;
}

export interface LayerAnswer {
  out: Float32Array;
  /** The merged call's dispatch (its RPCs and rows carried every merged caller's rows). */
  dispatch: LayerDispatch;
}

/** What the batch needs from the caller's world (built per batch from its first caller). */
export interface LayerBatchContext {
  transport: (placement: Placement) => FanOutTransport;
  options: FanOutOptions;
  dModel: number;
  /**
   * Keeps the request that sends a merged fan-out alive until it answers (the Worker's
   * `waitUntil`): the RPCs belong to that request, and the other callers wait for them.
   */
  keepAlive?: (work: Promise<unknown>) => void;
  /** Called once per merged fan-out that answered (load telemetry). */
  onDispatch?: (placement: Placement, routing: Routing, dispatch: LayerDispatch) => void;
}

const members = new Map<string, number>();
const batchers = new Map<string, Coalescer<LayerCall, LayerAnswer>>();
const contexts = new Map<string, LayerBatchContext>();

/**
 * Counts a request decoding `model` in this isolate until the returned function is called (the
 * barrier waits for the requests counted here). Idempotent leave.
 */
export function joinBatch(model: string): () => void {
  members.set(model, (members.get(model) ?? 0) + 1);
  let left = false;
  return () => {
    if (left) return;
    left = true;
    const m = (members.get(model) ?? 1) - 1;
    if (m <= 0) members.delete(model);
    else members.set(model, m);
  };
}

/** Requests counted by `joinBatch` for `model` now. */
export function batchMembers(model: string): number {
  return members.get(model) ?? 0;
}

/** Batches sent and callers served per layer key so far (tests, bench). */
export function layerBatchStats(): { batches: number; callers: number } {
  let batches = 0;
  let callers = 0;
  for (const b of batchers.values()) {
    batches += b.batches;
    callers += b.callers;
  }
  return { batches, callers };
}

/**
 * One caller's layer through the merged fan-out. `ctx` describes how to reach the experts; the
 * batch uses the context of its first caller (every caller of an isolate and upload has the same).
 */
export function runBatchedLayer(call: LayerCall, layer: number, ctx: LayerBatchContext): Promise<LayerAnswer> {
  const model = call.placement.model;
  // Per top-k: a call whose capacity-dropped slots were removed comes flat (top-k 1), and one merged
  // routing holds a single top-k.
  const key = `${model}\u0000${call.version ?? ""}\u0000${layer}\u0000${call.routing.topK}`;
  contexts.set(key, ctx);
  let b = batchers.get(key);
  if (!b) {
    const barrier = placementRow(call.placement, layer) === 0;
    b = new Coalescer<LayerCall, LayerAnswer>(
      (entries) => runMerged(entries, layer, contexts.get(key)!),
      {
        maxWaitMs: barrier ? BARRIER_WAIT_MS : 0,
        maxRows: MAX_BATCH_TOKENS,
        // Admitted requests are bounded by the KV ledger; this bounds what one isolate keeps waiting.
        maxInFlight: 4,
        maxQueuedRows: 16 * MAX_BATCH_TOKENS,
        queueDeadlineMs: 30_000,
        // Every attempt of the merged fan-out under its RPC deadline, with backoff.
        runDeadlineMs: runDeadlineMs(ctx),
      },
      // Every layer leaves as soon as all the isolate's decoding requests are in; only the
      // barrier waits (boundedly) for the missing ones, the others leave at the end of the turn.
      () => batchMembers(model),
      `expert batch queue of layer ${layer}`,
      (work) => contexts.get(key)?.keepAlive?.(work),
    );
    batchers.set(key, b);
  }
  return b.submit(call, call.routing.n, call.signal).catch((err: unknown) => {
    if (err instanceof QueueFullError) {
      throw new ApiError(
        503,
        err.message,
        "service_unavailable",
        null,
        "batch_queue_full",
        ApiError.retryIn(err.retryAfterS),
      );
    }
    throw err;
  });
}

function runDeadlineMs(ctx: LayerBatchContext): number {
  const r = ctx.options.retry ?? DEFAULT_RETRY;
  return r.maxAttempts * (r.rpcTimeoutMs + r.maxDelayMs) + 1_000;
}

async function runMerged(
  entries: readonly BatchEntry<LayerCall>[],
  layer: number,
  ctx: LayerBatchContext,
): Promise<BatchResult<LayerAnswer>[]> {
  const { dModel } = ctx;
  const topK = entries[0].item.routing.topK;
  const n = entries.reduce((s, e) => s + e.item.routing.n, 0);
  // The newest placement any caller holds: the others' may only be older versions of it.
  let placement = entries[0].item.placement;
  for (const e of entries) if (e.item.placement.version > placement.version) placement = e.item.placement;
  const ids = new Int32Array(n * topK);
  const weights = new Float32Array(n * topK);
  const h = new Float32Array(n * dModel);
  const owner = new Int32Array(n);
  const offsets: number[] = [];
  let at = 0;
  entries.forEach((e, i) => {
    const r = e.item.routing;
    if (r.topK !== topK) throw new Error(`internal: top-k ${r.topK} and ${topK} in one layer batch`);
    offsets.push(at);
    ids.set(r.ids, at * topK);
    weights.set(r.weights, at * topK);
    h.set(e.item.h.subarray(0, r.n * dModel), at * dModel);
    owner.fill(i, at, at + r.n);
    at += r.n;
  });
  const routing: Routing = { n, topK, ids, weights };
  // The merged call stops only when every caller has gone.
  const stop = new AbortController();
  const signals = entries.map((e) => e.item.signal).filter((s): s is AbortSignal => s !== undefined);
  const onAbort = () => {
    if (entries.every((e) => e.gone || e.item.signal?.aborted)) stop.abort();
  };
  if (signals.length === entries.length) for (const s of signals) s.addEventListener("abort", onAbort);
  try {
    const r = await fanOutRows(ctx.transport(placement), placement, layer, routing, h, dModel, {
      ...ctx.options,
      signal: signals.length === entries.length ? stop.signal : undefined,
      owner,
      gone: (i) => entries[i].gone,
    });
    if (r.lost.size < entries.length) ctx.onDispatch?.(placement, routing, r.dispatch);
    return entries.map((e, i) => {
      const lost = r.lost.get(i);
      if (lost) return { ok: false, error: lost };
      if (e.gone) return { ok: false, error: new Error("caller gone") };
      const m = e.item.routing.n;
      const o = offsets[i] * topK;
      const slots: SlotOutputs = {
        bufferOf: r.slots.bufferOf.slice(o, o + m * topK),
        rowOf: r.slots.rowOf.subarray(o, o + m * topK),
      };
      const out = combineSlots(m, topK, e.item.routing.ids, e.item.routing.weights, dModel, slots);
      return { ok: true, value: { out, dispatch: r.dispatch } };
    });
  } finally {
    for (const s of signals) s.removeEventListener("abort", onAbort);
  }
}
