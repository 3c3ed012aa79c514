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
import { combineSlots, slotOutputs, type SlotOutputs } from "./combine";
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
  /**
   * Owner of each token (the caller it came from, when the batcher merged several calls): a lost
   * row fails its owner only, and an owner that lost a row (or `gone` says left) has its
   * remaining rows dropped rather than retried. Default: every token owner 0.
   */
  owner?: Int32Array;
  /** Whether an owner stopped waiting (aborted): its rows are not retried. */
  gone?: (owner: number) => boolean;
  /** This isolate's view of instance load (default: the per-isolate table of ./replica-choice.ts). */
  load?: InstanceLoad;
  /**
   * Fixed cost of one expert pass in row-equivalents (`DISPATCH_PASS_ROWS`, ./replica-choice.ts):
   * a few rows of an expert stay on one replica. Default 0: rows only.
   */
  passRows?: number;
}

/**
 * One MoE layer's routed experts over `transport`. `h` is [n, dModel] (the post-attention-norm
 * activations); returns [n, dModel] = Σ_k gate_k · expert_k(h), summed in slot order whatever the
 * dispatch. Throws ApiError 503 (with Retry-After) when some rows found no replica that served them.
 */
export async function fanOut(
  ...args: Parameters<typeof fanOutRows>
): Promise<{ out: Float32Array; dispatch: LayerDispatch }> {
  const r = await fanOutRows(...args);
  if (r.error) throw r.error;
  const [, , , routing, , dModel] = args;
  return {
    out: combineSlots(routing.n, routing.topK, routing.ids, routing.weights, dModel, r.slots),
    dispatch: r.dispatch,
  };
}

/** What `fanOutRows` answers: each served row's output, and the error of the rows no replica served. */
export interface RowsOutcome {
  slots: SlotOutputs;
  dispatch: LayerDispatch;
  /** Owners (see FanOutOptions.owner) that lost a row, with the error their caller gets. */
  lost: Map<number, ApiError>;
  /** The first owner's error, when any row was lost (what `fanOut` throws). */
  error: ApiError | null;
}

/**
 * `fanOut` without the sum and without the throw: every row's output where it landed, and the
 * owners (callers merged into this call by the batcher) whose rows found no replica. A lost row
 * costs only its owner: the other owners' rows are still retried per the policy. With no `owner`
 * every token belongs to owner 0, so the first loss ends the call, as `fanOut` always did.
 */
export async function fanOutRows(
  transport: FanOutTransport,
  initial: Placement,
  layer: number,
  routing: Routing,
  h: Float32Array,
  dModel: number,
  options: FanOutOptions = {},
): Promise<RowsOutcome> {
  const { n, topK, ids } = routing;
  const cfg = options.retry ?? DEFAULT_RETRY;
  const random = options.random ?? Math.random;
  const passRows = options.passRows ?? 0;
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
  const ownerOf = (t: number) => (options.owner ? options.owner[t] : 0);
  const lost = new Map<number, ApiError>();
  const unavailable = () =>
    new ApiError(
      503,
      `expert layer ${layer} failed on every replica tried: ${errors.join("; ")}`,
      "service_unavailable",
      null,
      "expert_unavailable",
      ApiError.retryIn(EXPERTS_RETRY_AFTER_S),
    );
  /** Marks the owners of these rows as failed (the first error an owner meets is the one it gets). */
  const lose = (list: readonly Assignment[], error: () => ApiError) => {
    for (const a of list) for (const t of a.tokens) if (!lost.has(ownerOf(t))) lost.set(ownerOf(t), error());
  };
  /**
   * Rows still worth serving: their owner has lost nothing and is still waiting. An owner gone
   * meanwhile counts as lost (its rows get no output), so the combine leaves its slots out.
   */
  const prune = (list: Assignment[]): Assignment[] => {
    if (options.gone)
      for (const a of list)
        for (const t of a.tokens)
          if (!lost.has(ownerOf(t)) && options.gone(ownerOf(t)))
            lost.set(ownerOf(t), new ApiError(400, "the request went away while its expert rows were retried"));
    const keep = (t: number) => !lost.has(ownerOf(t));
    const out: Assignment[] = [];
    for (const a of list) {
      if (a.tokens.every(keep)) {
        out.push(a);
        continue;
      }
      const b: Assignment = { expert: a.expert, tokens: [], slots: [] };
      a.tokens.forEach((t, i) => {
        if (!keep(t)) return;
        b.tokens.push(t);
        b.slots.push(a.slots[i]);
      });
      if (b.tokens.length > 0) out.push(b);
    }
    return out;
  };

  for (let attempt = 0; attempt < cfg.maxAttempts && pending.length > 0; attempt++) {
    if (attempt > 0) await sleep(jitterBackoff(attempt, cfg), signal);
    const row = placementRow(placement, layer);
    if (row < 0) throw noLayer(layer, placement);
    const p = placement;
    const replicasOf = (e: number) => p.replicas[row][e].filter((r) => !excluded.has(r.instance));
    const stranded = pending.filter((a) => replicasOf(a.expert).length === 0);
    if (stranded.length > 0) {
      // These rows cannot complete: their owners answer now rather than spend attempts on their other rows.
      for (const a of stranded) errors.push(`expert ${layer}:${a.expert}: no replica left to try`);
      lose(stranded, unavailable);
      pending = prune(pending);
      if (pending.length === 0) break;
    }
    const byInstance = assignReplicas(pending, replicasOf, failed, attempt, load, random, passRows);
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
        const sent = events && transport.remote ? performance.now() : null;
        const answer = transport.call(instance, p, items, x, signal);
        result = await withDeadline(answer, cfg.rpcTimeoutMs, `ExpertHost ${name}`, signal);
        if (sent !== null && result.ok && result.hostMs !== undefined)
          events?.rpcWait(layer, Math.max(0, performance.now() - sent - result.hostMs) / 1000);
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
      if (verdict === "fatal") {
        // Never retried: the rows' owners fail with it (the other owners' rows go on).
        lose(list, () => fatalError(layer, { code: code ?? "model_error", message }));
        continue;
      }
      events?.failover(layer, code ?? ("reason" in result ? result.reason : "rpc_error"));
      if (code === "not_assigned") refresh = true;
      (verdict === "retry" ? failed : excluded).add(instance);
      pending.push(...list);
    }
    pending = prune(pending);
    // A refused expert, or one whose every known replica failed, may have moved: ask for a newer table.
    const tried = (i: number) => failed.has(i) || excluded.has(i);
    const cornered = pending.some((a) => p.replicas[row][a.expert].every((r) => tried(r.instance)));
    if ((refresh || cornered) && transport.refresh && pending.length > 0) {
      placement = await transport.refresh(placement);
    }
  }

  lose(pending, unavailable);
  const error: ApiError | null = lost.values().next().value ?? null;
  // Timed as before: a layer call that answered (every row of a merged call's owners but the lost).
  if (!error || (options.owner && dispatch.rowsByInstance.size > 0)) {
    events?.layerCall(layer, (performance.now() - t0) / 1000, dispatch.rpcs);
  }
  return { slots, dispatch, lost, error };
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
