/**
 * @module The Worker's side of the experts, as the serving code uses it: `runExperts` sends one MoE
 * layer through the fan-out (./fan-out.ts) to the ExpertHosts — or to the Worker's own store when
 * EXPERT_BACKEND = "worker" — by the placement of ./placement-cache.ts, and counts the load that
 * ./load-reporter.ts sends the Coordinator.
 */
import { waitUntil } from "cloudflare:workers";
import { placementRow, type Placement } from "../coordinator/placement";
import { ApiError } from "../errors";
import type { Routing } from "../gating/router";
import { isWorkerPlacement } from "./backend";
import { storeFailure, type ExpertStore } from "./expert-store";
import { batchingEnabled } from "../platform/env";
import { expertEvents } from "../platform/events";
import { batchMembers, runBatchedLayer } from "./layer-batcher";
import {
  fanOut,
  fanOutRows,
  type FanOutOptions,
  type FanOutTransport,
  type LayerDispatch,
  type RunExpertsOptions,
} from "./fan-out";
import { combineSlots } from "./combine";
import { recordLoad } from "./load-reporter";
import { dropLocalStore, localStore } from "./local-store";
import { isModelChanged } from "../platform/model-store";
import type { ExpertForwardResult } from "./protocol";
import { markPlacementStale, refreshedPlacement } from "./placement-cache";
import { dispatchPassRows } from "./replica-choice";
import { retryConfig } from "./retry-policy";
import { expandRouting } from "./slices";

// What callers imported from here before the split keeps its name and path.
export { expertBackend, WORKER_INSTANCE, type ExpertBackend } from "./backend";
export type { LayerDispatch, RunExpertsOptions } from "./fan-out";
export { flushLoad, flushLoadSoon, LOAD_FLUSH_MS } from "./load-reporter";
export { batchMembers, joinBatch } from "./layer-batcher";
export { currentPlacement, forgetPlacement } from "./placement-cache";
export type { LoadReport } from "./protocol";

/**
 * Runs one MoE layer's routed experts. `h` is [n, dModel] (the post-attention-norm activations);
 * returns [n, dModel] = Σ_k gate_k · expert_k(h), summed in slot order whatever the dispatch.
 * `options.signal` is the request's: once it aborts, no new expert call starts.
 */
export async function runExperts(
  env: Env,
  placement: Placement,
  layer: number,
  routing: Routing,
  h: Float32Array,
  dModel: number,
  options: ExpertCallOptions = {},
): Promise<{ out: Float32Array; dispatch: LayerDispatch }> {
  const { modelVersion: version, alone, ...fanOutOptions } = options;
  const opts = { ...fanOutOptions, retry: retryConfig(env), passRows: dispatchPassRows(env) };
  const { units, local, transport, changed } = await layerCall(env, placement, layer, routing, version);
  const onDispatch = (p: Placement, r: Routing, d: LayerDispatch) => {
    if (!local) recordLoad(p, placementRow(p, layer), r.ids, d.rowsByInstance);
  };
  try {
    // Merged with the other requests of this isolate at this layer (./layer-batcher.ts) — when some
    // request of the model decodes here and is counted. Where none is (a StageHost: its sessions are
    // driven from elsewhere), a batch could only leave on the next macrotask, which costs a single
    // stream far more than merging saves; those calls go out at once, and the ExpertHosts still merge
    // whatever meets there.
    if (!alone && batchingEnabled(env) && batchMembers(placement.model) > 0) {
      const call = { routing: units, h, placement, signal: opts.signal, version };
      const { signal: _own, ...shared } = opts;
      return await runBatchedLayer(call, layer, {
        transport,
        options: shared,
        dModel,
        onDispatch,
        keepAlive: keepRequestAlive,
      });
    }
    const result = await fanOut(transport(placement), placement, layer, units, h, dModel, opts);
    onDispatch(placement, units, result.dispatch);
    return result;
  } catch (err) {
    const message = changed();
    if (message !== null) throw ApiError.modelChanged(message);
    // The table may be what went wrong (replicas moved): the next request asks the Coordinator.
    if (!local && err instanceof ApiError && err.status === 503) markPlacementStale(placement.model);
    throw err;
  }
}

/**
 * `runExperts` for rows a caller already merged (a batched decode step: several requests' rows, one
 * call): `owner[t]` names the request of token row t. Never queued in the layer batcher (the rows
 * are the batch). A row no replica served fails only its owner (`lost`; that owner's output rows
 * are zero); the other owners' rows are retried per the policy. Without `owner` (null) any lost
 * row throws, as `runExperts` does. `gone(owner)`: that owner left (aborted), its rows are not retried.
 */
export async function runExpertsOwned(
  env: Env,
  placement: Placement,
  layer: number,
  routing: Routing,
  h: Float32Array,
  dModel: number,
  owner: Int32Array | null,
  options: ExpertCallOptions & Pick<FanOutOptions, "gone"> = {},
): Promise<{ out: Float32Array; dispatch: LayerDispatch; lost: Map<number, ApiError> }> {
  if (owner === null) {
    const { gone: _, ...alone } = options;
    const r = await runExpertsAlone(env, placement, layer, routing, h, dModel, alone);
    return { ...r, lost: new Map() };
  }
  const { modelVersion: version, ...fanOutOptions } = options;
  const opts = { ...fanOutOptions, retry: retryConfig(env), passRows: dispatchPassRows(env), owner };
  const { units, local, transport, changed } = await layerCall(env, placement, layer, routing, version);
  const r = await fanOutRows(transport(placement), placement, layer, units, h, dModel, opts);
  const message = changed();
  if (message !== null) throw ApiError.modelChanged(message);
  if (r.lost.size > 0 && !local) markPlacementStale(placement.model);
  if (!local && r.dispatch.rowsByInstance.size > 0)
    recordLoad(placement, placementRow(placement, layer), units.ids, r.dispatch.rowsByInstance);
  // A lost owner's slots have no output: left out of the sum (its rows are not used).
  const ids =
    r.lost.size === 0 ? units.ids : units.ids.map((id, i) => (r.lost.has(owner[Math.floor(i / units.topK)]) ? -1 : id));
  const out = combineSlots(units.n, units.topK, ids, units.weights, dModel, r.slots);
  return { out, dispatch: r.dispatch, lost: r.lost };
}

/**
 * What `runExperts` and `runExpertsOwned` set up alike for one layer call: the routing as units, the
 * Worker's own store (EXPERT_BACKEND = "worker") or null, the transport to a placement, and the
 * model_changed message a host answered during the call (null while none did).
 */
async function layerCall(
  env: Env,
  placement: Placement,
  layer: number,
  routing: Routing,
  version: string | undefined,
): Promise<{
  units: Routing;
  local: ExpertStore | null;
  transport: (p: Placement) => FanOutTransport;
  changed: () => string | null;
}> {
  if (routing.rerouted) expertEvents()?.rerouted(layer, routing.rerouted);
  // Sliced experts: each (token, expert) row becomes one row per slice (unit), same weight; the
  // fan-out, the batcher and the combine then treat units as experts (./slices.ts).
  const units = expandRouting(routing, placement.slices ?? 1);
  // A host that holds another upload than the caller's answers model_changed (no replica would
  // do better): the request fails with a retryable 503, and this isolate reloads the model.
  let changed: string | null = null;
  const noteChanged = (r: ExpertForwardResult) => {
    if (!r.ok && r.code === "model_changed") changed = r.message;
    return r;
  };
  const local = isWorkerPlacement(placement) ? await localStore(env, placement.model, version) : null;
  const transport = (p: Placement): FanOutTransport =>
    local ? localTransport(local, p.model, layer, noteChanged) : hostTransport(env, layer, version, noteChanged);
  return { units, local, transport, changed: () => changed };
}

/** `runExperts` without the layer batcher. */
function runExpertsAlone(
  env: Env,
  placement: Placement,
  layer: number,
  routing: Routing,
  h: Float32Array,
  dModel: number,
  options: ExpertCallOptions,
): Promise<{ out: Float32Array; dispatch: LayerDispatch }> {
  return runExperts(env, placement, layer, routing, h, dModel, { ...options, alone: true });
}

/** Options of one MoE layer call. */
export interface ExpertCallOptions extends RunExpertsOptions {
  /** The upload of the model the caller computes with (OpenedModel.version); hosts check it. */
  modelVersion?: string;
  /** Sent at once, never merged in the layer batcher (the caller merged its rows already). */
  alone?: boolean;
}

/**
 * Extends the current request until `work` settles: a merged fan-out's RPCs belong to the request
 * that sent it, which must outlive them even when its own rows answered first or it was aborted.
 * (In a Durable Object the object stays alive anyway; where the runtime refuses, nothing is lost.)
 */
export function keepRequestAlive(work: Promise<unknown>): void {
  try {
    waitUntil(work.catch(() => {}));
  } catch {
    // No request context to extend (a Durable Object alarm, tests): the caller's own await holds it.
  }
}

type NoteChanged = (r: ExpertForwardResult) => ExpertForwardResult;

/** The Worker's own store (EXPERT_BACKEND = "worker") as a fan-out transport. */
function localTransport(store: ExpertStore, model: string, layer: number, note: NoteChanged): FanOutTransport {
  return {
    remote: false,
    call: async (_instance, _placement, items, x) => {
      try {
        return { ok: true, y: await store.run(layer, items, x) };
      } catch (err) {
        if (isModelChanged(err)) dropLocalStore(model, store);
        return note(storeFailure(err));
      }
    },
  };
}

/** ExpertHost RPCs: one `forward` per instance, naming the caller's upload. */
function hostTransport(env: Env, layer: number, version: string | undefined, note: NoteChanged): FanOutTransport {
  return {
    remote: true,
    call: async (instance, p, items, x) =>
      note(
        await env.EXPERT_HOST.getByName(p.instances[instance].name).forward({
          model: p.model,
          version,
          layer,
          items,
          x,
        }),
      ),
    refresh: (have) => refreshedPlacement(env, have),
  };
}
