/**
 * @module The Worker's side of the experts, as the serving code uses it: `runExperts` sends one MoE
 * layer through the fan-out (./fan-out.ts) to the ExpertHosts — or to the Worker's own store when
 * EXPERT_BACKEND = "worker" — by the placement of ./placement-cache.ts, and counts the load that
 * ./load-reporter.ts sends the Coordinator.
 */
import { placementRow, type Placement } from "../coordinator/placement";
import { ApiError } from "../errors";
import type { Routing } from "../gating/router";
import { isWorkerPlacement } from "./backend";
import { storeFailure } from "./expert-store";
import { fanOut, type FanOutTransport, type LayerDispatch, type RunExpertsOptions } from "./fan-out";
import { recordLoad } from "./load-reporter";
import { dropLocalStore, localStore } from "./local-store";
import { isModelChanged } from "../platform/model-store";
import type { ExpertForwardResult } from "./protocol";
import { markPlacementStale, refreshedPlacement } from "./placement-cache";
import { retryConfig } from "./retry-policy";

// What callers imported from here before the split keeps its name and path.
export { expertBackend, WORKER_INSTANCE, type ExpertBackend } from "./backend";
export type { LayerDispatch, RunExpertsOptions } from "./fan-out";
export { flushLoad, flushLoadSoon, LOAD_FLUSH_MS } from "./load-reporter";
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
  const { modelVersion: version, ...fanOutOptions } = options;
  const opts = { ...fanOutOptions, retry: retryConfig(env) };
  // A host that holds another upload than the caller's answers model_changed (no replica would
  // do better): the request fails with a retryable 503, and this isolate reloads the model.
  let changed: string | null = null;
  const noteChanged = (r: ExpertForwardResult) => {
    if (!r.ok && r.code === "model_changed") changed = r.message;
    return r;
  };
  try {
    return await layerCall();
  } catch (err) {
    if (changed !== null) throw ApiError.modelChanged(changed);
    throw err;
  }

  async function layerCall() {
    if (isWorkerPlacement(placement)) return localLayer();
    const hosts: FanOutTransport = {
      remote: true,
      call: async (instance, p, items, x) =>
        noteChanged(
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
    try {
      const result = await fanOut(hosts, placement, layer, routing, h, dModel, opts);
      recordLoad(placement, placementRow(placement, layer), routing.ids, result.dispatch.rowsByInstance);
      return result;
    } catch (err) {
      // The table may be what went wrong (replicas moved): the next request asks the Coordinator.
      if (err instanceof ApiError && err.status === 503) markPlacementStale(placement.model);
      throw err;
    }
  }

  async function localLayer() {
    const store = await localStore(env, placement.model, version);
    const local: FanOutTransport = {
      remote: false,
      call: async (_instance, _placement, items, x) => {
        try {
          return { ok: true, y: await store.run(layer, items, x) };
        } catch (err) {
          if (isModelChanged(err)) dropLocalStore(placement.model, store);
          return noteChanged(storeFailure(err));
        }
      },
    };
    return fanOut(local, placement, layer, routing, h, dModel, opts);
  }
}

/** Options of one MoE layer call. */
export interface ExpertCallOptions extends RunExpertsOptions {
  /** The upload of the model the caller computes with (OpenedModel.version); hosts check it. */
  modelVersion?: string;
}
