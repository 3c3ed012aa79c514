/**
 * @module Where routed experts run (EXPERT_BACKEND), and the one-instance placement the "worker"
 * backend serves from (its store is in ./local-store.ts).
 */
import { initialPlacement, type PlacementInit } from "../coordinator/initial-placement";
import type { Placement } from "../coordinator/placement";
import { BudgetError } from "../errors";
import { readBudgets } from "../platform/budgets";
import { enumVar, type Vars } from "../platform/env";
import { formatMiB } from "../platform/format";

export type ExpertBackend = "durable-objects" | "worker";

/**
 * "durable-objects" (the product): ExpertHost instances, one RPC per instance per layer.
 * "worker": every expert inside the Worker's own isolate, bounded by WORKER_EXPERT_BUDGET_MB — for
 * models small enough to fit one isolate, and the single-isolate baseline of bench:e2e.
 */
export function expertBackend(env: Vars): ExpertBackend {
  return enumVar(env, "EXPERT_BACKEND", ["durable-objects", "worker"], "durable-objects");
}

/** The in-isolate instance name used by the "worker" backend's placement. */
export const WORKER_INSTANCE = "worker (in-isolate)";

export function isWorkerPlacement(placement: Placement): boolean {
  return placement.instances.length === 1 && placement.instances[0].name === WORKER_INSTANCE;
}

/**
 * The in-isolate placements, built once per model's init: every MoE layer call asks for the
 * placement, and rebuilding [layers][experts] replica arrays per call is work on the hot path.
 */
const workerPlacements = new WeakMap<PlacementInit, Placement>();

/** Every expert on one in-isolate instance; refused when they do not fit WORKER_EXPERT_BUDGET_MB. */
export function workerPlacement(env: Env, init: PlacementInit): Placement {
  const cached = workerPlacements.get(init);
  if (cached) return cached;
  const placement = buildWorkerPlacement(env, init);
  workerPlacements.set(init, placement);
  return placement;
}

function buildWorkerPlacement(env: Env, init: PlacementInit): Placement {
  const budget = readBudgets(env).workerExpertBytes;
  const need = (init.moeLayers?.length ?? init.nLayers) * init.nExperts * (init.slices ?? 1) * init.expertBytes;
  if (need > budget) {
    throw new BudgetError(
      `model "${init.model}" does not fit the Worker isolate: its experts need ${formatMiB(need)}, ` +
        `WORKER_EXPERT_BUDGET_MB allows ${formatMiB(budget)} (EXPERT_BACKEND = "worker")`,
    );
  }
  const p = initialPlacement({ ...init, budgetBytes: need, minInstances: 1, spareFraction: 0 });
  return { ...p, instances: [{ id: 0, name: WORKER_INSTANCE, budgetBytes: budget }] };
}
