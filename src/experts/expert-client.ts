/**
 * @module The Worker's side of the expert fan-out: group one layer's routed tokens by ExpertHost
 * instance, send ONE RPC per instance (all in parallel), fail over to another replica when an
 * instance fails, and combine the outputs with the gate weights.
 */
import { placementRow, type Placement } from "../coordinator/placement";
import { initialPlacement, slotsPerInstance, type PlacementInit } from "../coordinator/initial-placement";
import type { Routing } from "../gating/router";
import { ApiError, BudgetError } from "../errors";
import type { ExpertForwardResult, ExpertWorkItem } from "./protocol";
import { ExpertStore } from "./expert-store";
import { createKernels } from "../kernels/workers";
import { openModelFromR2 } from "../platform/model-store";
import { expertStoreOptions } from "./options";
import { readBudgets } from "../platform/budgets";
import { formatMiB } from "../platform/format";

/**
 * Where routed experts run. "durable-objects" (the product): ExpertHost instances, one RPC per
 * instance per layer. "worker": every expert inside the Worker's own isolate, bounded by
 * WORKER_EXPERT_BUDGET_MB — for models small enough to fit one isolate, and the single-isolate
 * baseline that bench:e2e compares the fan-out against.
 */
export function expertBackend(env: Env): "durable-objects" | "worker" {
  const b = env.EXPERT_BACKEND || "durable-objects";
  if (b !== "durable-objects" && b !== "worker") throw new Error(`EXPERT_BACKEND must be "durable-objects" or "worker", got "${b}"`);
  return b;
}

/** The in-isolate instance name used by the "worker" backend's placement. */
export const WORKER_INSTANCE = "worker (in-isolate)";
const localStores = new Map<string, Promise<ExpertStore>>();

function localStore(env: Env, model: string): Promise<ExpertStore> {
  let s = localStores.get(model);
  if (!s) {
    s = openModelFromR2(env.MODELS, model).then(
      (opened) => new ExpertStore(opened, readBudgets(env).workerExpertBytes, "the Worker isolate (WORKER_EXPERT_BUDGET_MB)", (maxBytes) => createKernels("best", { maxBytes }), expertStoreOptions(env)),
    );
    localStores.set(model, s);
    s.catch(() => localStores.delete(model));
  }
  return s;
}

import { PLACEMENT_CHECK_MS } from "./placement-timing";
import { assignReplicas, loadOf, type Assignment } from "./replica-choice";
import { MAX_ATTEMPTS } from "./fanout-policy";

interface CachedPlacement {
  placement: Placement;
  checkedAt: number;
}

/** Per-isolate cache of placements, refreshed by version. */
const placements = new Map<string, CachedPlacement>();

export async function currentPlacement(env: Env, init: PlacementInit): Promise<Placement> {
  if (expertBackend(env) === "worker") return workerPlacement(env, init);
  const cached = placements.get(init.model);
  const coordinator = env.COORDINATOR.getByName(init.model);
  const now = Date.now();
  if (cached && now - cached.checkedAt < PLACEMENT_CHECK_MS) return cached.placement;
  if (cached && (await coordinator.placementVersion()) === cached.placement.version) {
    cached.checkedAt = now;
    return cached.placement;
  }
  // Checked here too: an error class thrown inside the Coordinator arrives as a plain Error.
  slotsPerInstance(init);
  const placement = await coordinator.ensurePlacement(init);
  placements.set(init.model, { placement, checkedAt: now });
  return placement;
}

function workerPlacement(env: Env, init: PlacementInit): Placement {
  const budget = readBudgets(env).workerExpertBytes;
  const need = (init.moeLayers?.length ?? init.nLayers) * init.nExperts * init.expertBytes;
  if (need > budget) {
    throw new BudgetError(
      `model "${init.model}" does not fit the Worker isolate: its experts need ${formatMiB(need)}, WORKER_EXPERT_BUDGET_MB allows ${formatMiB(budget)} (EXPERT_BACKEND = "worker")`,
    );
  }
  const p = initialPlacement({ ...init, budgetBytes: need, minInstances: 1, spareFraction: 0 });
  return { ...p, instances: [{ id: 0, name: WORKER_INSTANCE, budgetBytes: budget }] };
}

export function forgetPlacement(model: string): void {
  placements.delete(model);
}

// ── load telemetry ───────────────────────────────────────────────────────────────────────────
// Counted on the hot path (a few integer adds per routed token), sent to the Coordinator off it:
// at most every LOAD_FLUSH_MS per isolate and model, from ctx.waitUntil.

export const LOAD_FLUSH_MS = 250;

export interface LoadReport {
  model: string;
  nLayers: number;
  nExperts: number;
  /** Routed (token, expert) pairs per layer·nExperts + expert since the last report. */
  counts: number[];
  /** Rows sent per instance id since the last report. */
  instanceRows: Record<number, number>;
  /** Placement version the counts were routed with. */
  version: number;
}

interface PendingLoad extends LoadReport {
  lastFlush: number;
  any: boolean;
  scheduled: boolean;
}

const pendingLoads = new Map<string, PendingLoad>();

function pendingFor(placement: Placement): PendingLoad {
  let p = pendingLoads.get(placement.model);
  if (!p || p.nExperts !== placement.nExperts || p.nLayers !== placement.nLayers) {
    p = { model: placement.model, nLayers: placement.nLayers, nExperts: placement.nExperts, counts: new Array(placement.nLayers * placement.nExperts).fill(0), instanceRows: {}, version: placement.version, lastFlush: Date.now(), any: false, scheduled: false };
    pendingLoads.set(placement.model, p);
  }
  return p;
}

/** Sends the load counted so far to the Coordinator when LOAD_FLUSH_MS have passed (never blocks the caller). */
export function flushLoad(env: Env, model: string, waitUntil: (p: Promise<unknown>) => void, force = false): void {
  const p = pendingLoads.get(model);
  if (!p || !p.any) return;
  const now = Date.now();
  if (!force && now - p.lastFlush < LOAD_FLUSH_MS) return;
  const report: LoadReport = { model, nLayers: p.nLayers, nExperts: p.nExperts, counts: p.counts, instanceRows: p.instanceRows, version: p.version };
  p.counts = new Array(p.nLayers * p.nExperts).fill(0);
  p.instanceRows = {};
  p.lastFlush = now;
  p.any = false;
  waitUntil(
    env.COORDINATOR.getByName(model)
      .reportLoad(report)
      .catch((err: unknown) => console.warn(`load report for ${model} lost: ${err instanceof Error ? err.message : String(err)}`)),
  );
}

/**
 * At the end of a request: make sure what it counted is sent within LOAD_FLUSH_MS even if no
 * other request comes (one delayed flush per isolate and model at a time).
 */
export function flushLoadSoon(env: Env, model: string, waitUntil: (p: Promise<unknown>) => void): void {
  const p = pendingLoads.get(model);
  if (!p || !p.any || p.scheduled) return;
  p.scheduled = true;
  const wait = Math.max(0, LOAD_FLUSH_MS - (Date.now() - p.lastFlush));
  waitUntil(
    new Promise<void>((resolve) =>
      setTimeout(() => {
        p.scheduled = false;
        flushLoad(env, model, waitUntil, true);
        resolve();
      }, wait),
    ),
  );
}

/** Tokens routed to each instance during one layer call (for load telemetry and tests). */
export interface LayerDispatch {
  layer: number;
  /** instance id → number of (token, expert) rows sent. */
  rowsByInstance: Map<number, number>;
  rpcs: number;
}


/**
 * Runs one MoE layer's routed experts. `h` is [n, dModel] (the post-attention-norm activations);
 * returns [n, dModel] = Σ_k gate_k · expert_k(h).
 */
export async function runExperts(
  env: Env,
  placement: Placement,
  layer: number,
  routing: Routing,
  h: Float32Array,
  dModel: number,
  rng: () => number,
): Promise<{ out: Float32Array; dispatch: LayerDispatch }> {
  const { n, topK, ids, weights } = routing;
  const row = placementRow(placement, layer);
  if (row < 0) throw new Error(`layer ${layer} has no experts in the placement of "${placement.model}"`);
  // Group (token, slot) pairs by expert.
  const byExpert = new Map<number, Assignment>();
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < topK; j++) {
      const e = ids[t * topK + j];
      let a = byExpert.get(e);
      if (!a) byExpert.set(e, (a = { expert: e, tokens: [], slots: [] }));
      a.tokens.push(t);
      a.slots.push(j);
    }
  }
  const out = new Float32Array(n * dModel);
  const dispatch: LayerDispatch = { layer, rowsByInstance: new Map(), rpcs: 0 };
  const local = placement.instances.length === 1 && placement.instances[0].name === WORKER_INSTANCE ? await localStore(env, placement.model) : null;
  let pending = [...byExpert.values()];
  const load = loadOf(placement.model, placement.version);
  const failed = new Set<number>();
  const errors: string[] = [];
  for (let attempt = 0; attempt < MAX_ATTEMPTS && pending.length > 0; attempt++) {
    const byInstance = assignReplicas(pending, (e) => placement.replicas[row][e], failed, attempt, load, rng);
    const calls = [...byInstance].map(async ([instance, list]) => {
      const items: ExpertWorkItem[] = list.map((a) => ({ expert: a.expert, nTokens: a.tokens.length }));
      const rows = items.reduce((s, it) => s + it.nTokens, 0);
      const x = new Float32Array(rows * dModel);
      let r = 0;
      for (const a of list) for (const t of a.tokens) x.set(h.subarray(t * dModel, (t + 1) * dModel), dModel * r++);
      let result: ExpertForwardResult;
      load.inflight[instance] = (load.inflight[instance] ?? 0) + rows;
      try {
        result = local
          ? { ok: true, y: await local.run(layer, items, x) }
          : await env.EXPERT_HOST.getByName(placement.instances[instance].name).forward({ model: placement.model, layer, items, x });
      } catch (err) {
        result = { ok: false, code: "model_error", message: err instanceof Error ? err.message : String(err) };
      } finally {
        load.inflight[instance] -= rows;
      }
      return { instance, list, rows, result };
    });
    if (!local) dispatch.rpcs += calls.length;
    pending = [];
    for (const { instance, list, rows, result } of await Promise.all(calls)) {
      if (!result.ok) {
        failed.add(instance);
        errors.push(`${placement.instances[instance].name}: ${result.message}`);
        pending.push(...list);
        continue;
      }
      dispatch.rowsByInstance.set(instance, (dispatch.rowsByInstance.get(instance) ?? 0) + rows);
      let r = 0;
      for (const a of list) {
        for (let i = 0; i < a.tokens.length; i++, r++) {
          const t = a.tokens[i];
          const g = weights[t * topK + a.slots[i]];
          const y = result.y.subarray(r * dModel, (r + 1) * dModel);
          const o = t * dModel;
          for (let d = 0; d < dModel; d++) out[o + d] += g * y[d];
        }
      }
    }
  }
  if (!local) {
    const report = pendingFor(placement);
    const base = row * placement.nExperts;
    for (let i = 0; i < ids.length; i++) report.counts[base + ids[i]]++;
    for (const [instance, rows] of dispatch.rowsByInstance) report.instanceRows[instance] = (report.instanceRows[instance] ?? 0) + rows;
    report.version = placement.version;
    report.any = true;
  }
  if (pending.length > 0) {
    forgetPlacement(placement.model);
    throw new ApiError(503, `expert layer ${layer} failed on every replica tried: ${errors.join("; ")}`, "service_unavailable", null, "expert_unavailable");
  }
  return { out, dispatch };
}

