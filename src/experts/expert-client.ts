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
import { runBatchedLayer } from "./layer-batcher";
import { fanOut, type FanOutTransport, type LayerDispatch, type RunExpertsOptions } from "./fan-out";
import { recordLoad } from "./load-reporter";
import { localStore } from "./local-store";
import { markPlacementStale, refreshedPlacement } from "./placement-cache";
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
 * `options` may be the request's seeded rng, as earlier callers pass it: it is not drawn from (see
 * RunExpertsOptions.random).
 */
export async function runExperts(
  env: Env,
  placement: Placement,
  layer: number,
  routing: Routing,
  h: Float32Array,
  dModel: number,
  options: RunExpertsOptions | (() => number) = {},
): Promise<{ out: Float32Array; dispatch: LayerDispatch }> {
  const opts = { ...(typeof options === "function" ? {} : options), retry: retryConfig(env) };
  // Sliced experts: each (token, expert) row becomes one row per slice (unit), same weight; the
  // fan-out, the batcher and the combine then treat units as experts (./slices.ts).
  const units = expandRouting(routing, placement.slices ?? 1);
  const local = isWorkerPlacement(placement) ? await localStore(env, placement.model) : null;
  const transport = (p: Placement): FanOutTransport =>
    local ? localTransport(local, layer) : hostTransport(env, p, layer);
  const onDispatch = (p: Placement, r: Routing, d: LayerDispatch) => {
    if (!local) recordLoad(p, placementRow(p, layer), r.ids, d.rowsByInstance);
  };
  try {
    if (batchingEnabled(env)) {
      // Merged with the other requests of this isolate at this layer (./layer-batcher.ts).
      const call = { routing: units, h, placement, signal: opts.signal };
      const { signal: _own, ...shared } = opts;
      return await runBatchedLayer(call, layer, { transport, options: shared, dModel, onDispatch, keepAlive });
    }
    const result = await fanOut(transport(placement), placement, layer, units, h, dModel, opts);
    onDispatch(placement, units, result.dispatch);
    return result;
  } catch (err) {
    // The table may be what went wrong (replicas moved): the next request asks the Coordinator.
    if (!local && err instanceof ApiError && err.status === 503) markPlacementStale(placement.model);
    throw err;
  }
}

/**
 * Extends the current request until `work` settles: a merged fan-out's RPCs belong to the request
 * that sent it, which must outlive them even when its own rows answered first or it was aborted.
 * (In a Durable Object the object stays alive anyway; where the runtime refuses, nothing is lost.)
 */
function keepAlive(work: Promise<unknown>): void {
  try {
    waitUntil(work.catch(() => {}));
  } catch {
    // No request context to extend (a Durable Object alarm, tests): the caller's own await holds it.
  }
}

/** The Worker's own store (EXPERT_BACKEND = "worker") as a fan-out transport. */
function localTransport(store: ExpertStore, layer: number): FanOutTransport {
  return {
    remote: false,
    call: async (_instance, _placement, items, x) => {
      try {
        return { ok: true, y: await store.run(layer, items, x) };
      } catch (err) {
        return storeFailure(err);
      }
    },
  };
}

/** ExpertHost RPCs: one `forward` per instance. */
function hostTransport(env: Env, _placement: Placement, layer: number): FanOutTransport {
  return {
    remote: true,
    call: (instance, p, items, x) =>
      env.EXPERT_HOST.getByName(p.instances[instance].name).forward({ model: p.model, layer, items, x }),
    refresh: (have) => refreshedPlacement(env, have),
  };
}
