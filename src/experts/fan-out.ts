/**
 * @module One MoE layer's routed experts through the ExpertHosts: group the (token, slot) rows by
 * expert, choose a replica for each (./replica-choice.ts), send ONE call per instance, all in
 * parallel, each under a deadline; retry the rows of failed calls as ./retry-policy.ts allows; add
 * the outputs up in a fixed order (./combine.ts).
 *
 * Transport-free: ./expert-client.ts wires it to ExpertHost RPCs (or the Worker's own store), tests
 * to simulated instances.
 */
import { placementRow, type Placement } from "../coordinator/placement";
import { ApiError } from "../errors";
import type { Routing } from "../gating/router";
import { expertEvents } from "../platform/events";
import { combineSlots, slotOutputs } from "./combine";
import type { ExpertForwardResult, ExpertWorkItem } from "./protocol";
import { assignReplicas, loadOf, type Assignment, type InstanceLoad } from "./replica-choice";
import {
  DEFAULT_RETRY,
  failureVerdict,
  isAbort,
  jitterBackoff,
  RpcDeadlineError,
  sleep,
  thrownVerdict,
  withDeadline,
  type RetryConfig,
  type RetryVerdict,
} from "./retry-policy";

/** Rows routed to each instance during one layer call (for load telemetry and tests). */
export interface LayerDispatch {
  layer: number;
  /** instance id → number of (token, expert) rows it served. */
  rowsByInstance: Map<number, number>;
  rpcs: number;
}

/** Retry-After (seconds) of the 503 answered when no replica could serve a layer. */
export const EXPERTS_RETRY_AFTER_S = 1;

export interface RunExpertsOptions {
  /** The request's signal: when the client goes away, no new call starts and waiting stops. */
  signal?: AbortSignal;
  /**
   * Tie-breaks of the replica choice. Default Math.random — deliberately not the request's seeded
   * sampler: how many draws dispatch takes depends on the cluster's load, and drawing from the
   * sampler's stream would make the sampled tokens depend on it.
   */
  random?: () => number;
}

/** What `fanOut` needs from the world: how to reach an instance, and how to learn a newer placement. */
export interface FanOutTransport {
  /** Sends one instance its rows; may throw (the RPC's own failures). */
  call(
    instance: number,
    placement: Placement,
    items: ExpertWorkItem[],
    x: Float32Array, // [Σ nTokens, dModel]
    signal?: AbortSignal,
  ): Promise<ExpertForwardResult>;
  /** A newer placement than `have`, or `have` (asked after an instance refused an unassigned expert). */
  refresh?(have: Placement): Promise<Placement>;
  /** Counts an RPC per call in `LayerDispatch.rpcs` (false for the in-isolate store). */
  remote: boolean;
}

export interface FanOutOptions extends RunExpertsOptions {
  retry?: RetryConfig;
  /** This isolate's view of instance load (default: the per-isolate table of ./replica-choice.ts). */
  load?: InstanceLoad;
}

/**
 * One MoE layer's routed experts over `transport`. `h` is [n, dModel] (the post-attention-norm
 * activations); returns [n, dModel] = Σ_k gate_k · expert_k(h), summed in slot order whatever the
 * dispatch. Throws ApiError 503 (with Retry-After) when some rows found no replica that served them.
 */
export async function fanOut(
  transport: FanOutTransport,
  initial: Placement,
  layer: number,
  routing: Routing,
  h: Float32Array,
  dModel: number,
  options: FanOutOptions = {},
): Promise<{ out: Float32Array; dispatch: LayerDispatch }> {
  const { n, topK, ids, weights } = routing;
  const cfg = options.retry ?? DEFAULT_RETRY;
  const random = options.random ?? Math.random;
  const signal = options.signal;
  // Timed only when a metrics sink listens (the Worker and DO isolates; not tests or scripts).
  const events = expertEvents();
  const t0 = events ? performance.now() : 0;
  let placement = initial;
  if (placementRow(placement, layer) < 0) throw noLayer(layer, placement);
  signal?.throwIfAborted();

  let pending = groupByExpert(ids, n, topK);
  const slots = slotOutputs(n, topK);
  const dispatch: LayerDispatch = { layer, rowsByInstance: new Map(), rpcs: 0 };
  const load = options.load ?? loadOf(placement.model, placement.version);
  /** Instances that failed with a retryable error: used again only when an expert has no other replica. */
  const failed = new Set<number>();
  /** Instances never to be used again in this layer call (overloaded, past their deadline). */
  const excluded = new Set<number>();
  const errors: string[] = [];

  for (let attempt = 0; attempt < cfg.maxAttempts && pending.length > 0; attempt++) {
    if (attempt > 0) await sleep(jitterBackoff(attempt, cfg), signal);
    const row = placementRow(placement, layer);
    if (row < 0) throw noLayer(layer, placement);
    const p = placement;
    const replicasOf = (e: number) => p.replicas[row][e].filter((r) => !excluded.has(r.instance));
    const stranded = pending.filter((a) => replicasOf(a.expert).length === 0);
    if (stranded.length > 0) {
      // The layer cannot complete: answer now rather than spend attempts on the other rows.
      for (const a of stranded) errors.push(`expert ${layer}:${a.expert}: no replica left to try`);
      break;
    }
    const byInstance = assignReplicas(pending, replicasOf, failed, attempt, load, random);
    const calls = [...byInstance].map(async ([instance, list]) => {
      const items: ExpertWorkItem[] = list.map((a) => ({ expert: a.expert, nTokens: a.tokens.length }));
      const rows = items.reduce((s, it) => s + it.nTokens, 0);
      const x = new Float32Array(rows * dModel); // [rows, dModel], rows in the order of `items`
      let r = 0;
      for (const a of list) for (const t of a.tokens) x.set(h.subarray(t * dModel, (t + 1) * dModel), dModel * r++);
      const name = p.instances[instance]?.name ?? `instance ${instance}`;
      load.inflight[instance] = (load.inflight[instance] ?? 0) + rows;
      let result: ExpertForwardResult | { ok: false; verdict: RetryVerdict; message: string; reason: string };
      try {
        const answer = transport.call(instance, p, items, x, signal);
        result = await withDeadline(answer, cfg.rpcTimeoutMs, `ExpertHost ${name}`, signal);
        if (result.ok && result.y.length !== rows * dModel) {
          const message = `answered ${result.y.length} values for ${rows} × ${dModel}`;
          result = { ok: false, code: "model_error", message };
        }
      } catch (err) {
        if (isAbort(err, signal)) throw err;
        const message = err instanceof Error ? err.message : String(err);
        const reason = err instanceof RpcDeadlineError ? "deadline" : "rpc_error";
        result = { ok: false, verdict: thrownVerdict(err), message, reason };
      } finally {
        load.inflight[instance] -= rows;
      }
      return { instance, name, list, rows, result };
    });
    if (transport.remote) dispatch.rpcs += calls.length;
    const answers = await Promise.all(calls);

    pending = [];
    let refresh = false;
    let fatal: { code: string; message: string } | null = null;
    for (const { instance, name, list, rows, result } of answers) {
      if (result.ok) {
        dispatch.rowsByInstance.set(instance, (dispatch.rowsByInstance.get(instance) ?? 0) + rows);
        let r = 0;
        for (const a of list) {
          for (let i = 0; i < a.tokens.length; i++, r++) {
            const s = a.tokens[i] * topK + a.slots[i];
            slots.bufferOf[s] = result.y;
            slots.rowOf[s] = r;
          }
        }
        continue;
      }
      const code = "code" in result ? result.code : null;
      const verdict = "verdict" in result ? result.verdict : failureVerdict(result.code);
      const message = result.message.startsWith(name) ? result.message : `${name}: ${result.message}`;
      errors.push(message);
      if (verdict === "fatal") fatal ??= { code: code ?? "model_error", message };
      else events?.failover(layer, code ?? ("reason" in result ? result.reason : "rpc_error"));
      if (code === "not_assigned") refresh = true;
      (verdict === "retry" ? failed : excluded).add(instance);
      pending.push(...list);
    }
    if (fatal) throw fatalError(layer, fatal);
    // A refused expert, or one whose every known replica failed, may have moved: ask for a newer table.
    const tried = (i: number) => failed.has(i) || excluded.has(i);
    const cornered = pending.some((a) => p.replicas[row][a.expert].every((r) => tried(r.instance)));
    if ((refresh || cornered) && transport.refresh && pending.length > 0) {
      placement = await transport.refresh(placement);
    }
  }

  if (pending.length > 0) {
    throw new ApiError(
      503,
      `expert layer ${layer} failed on every replica tried: ${errors.join("; ")}`,
      "service_unavailable",
      null,
      "expert_unavailable",
      ApiError.retryIn(EXPERTS_RETRY_AFTER_S),
    );
  }
  const out = combineSlots(n, topK, ids, weights, dModel, slots);
  events?.layerCall(layer, (performance.now() - t0) / 1000, dispatch.rpcs);
  return { out, dispatch };
}

/** (token, slot) rows grouped by expert, experts in order of first use; dropped slots (-1) left out. */
function groupByExpert(ids: Int32Array, n: number, topK: number): Assignment[] {
  const byExpert = new Map<number, Assignment>();
  for (let t = 0; t < n; t++) {
    for (let k = 0; k < topK; k++) {
      const e = ids[t * topK + k];
      if (e < 0) continue;
      let a = byExpert.get(e);
      if (!a) byExpert.set(e, (a = { expert: e, tokens: [], slots: [] }));
      a.tokens.push(t);
      a.slots.push(k);
    }
  }
  return [...byExpert.values()];
}

function noLayer(layer: number, placement: Placement): Error {
  return new Error(`layer ${layer} has no experts in the placement of "${placement.model}"`);
}

function fatalError(layer: number, f: { code: string; message: string }): ApiError {
  if (f.code === "budget_exceeded") {
    const message = `expert layer ${layer}: ${f.message}`;
    return new ApiError(
      503,
      message,
      "service_unavailable",
      null,
      "expert_budget_exceeded",
      ApiError.retryIn(EXPERTS_RETRY_AFTER_S),
    );
  }
  // The Worker built a request an ExpertHost rejects: a fault on our side, not the client's.
  return new ApiError(500, `expert layer ${layer}: ${f.message}`, "server_error", null, "expert_request_rejected");
}
