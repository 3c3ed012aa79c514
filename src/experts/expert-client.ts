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
import { localStore } from "./local-store";
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
  options: RunExpertsOptions = {},
): Promise<{ out: Float32Array; dispatch: LayerDispatch }> {
  const opts = { ...options, retry: retryConfig(env) };
  if (isWorkerPlacement(placement)) {
    const store = await localStore(env, placement.model);
    const local: FanOutTransport = {
      remote: false,
      call: async (_instance, _placement, items, x) => {
        try {
          return { ok: true, y: await store.run(layer, items, x) };
        } catch (err) {
          return storeFailure(err);
        }
      },
    };
    return fanOut(local, placement, layer, routing, h, dModel, opts);
  }
  const hosts: FanOutTransport = {
    remote: true,
    call: (instance, p, items, x) =>
      env.EXPERT_HOST.getByName(p.instances[instance].name).forward({ model: p.model, layer, items, x }),
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
