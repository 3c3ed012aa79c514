/**
 * @module The Worker isolate's copy of each model's placement. It asks the Coordinator whether the
 * version changed at most every PLACEMENT_CHECK_MS; when the Coordinator cannot be reached it keeps
 * serving from the last placement it got, for at most PLACEMENT_MAX_STALE_MS. Serving from a stale
 * table is safe: ExpertHosts refuse experts they are not assigned (`not_assigned`), and the fan-out
 * then refreshes and tries another replica.
 */
import { slotsPerInstance, type PlacementInit } from "../coordinator/initial-placement";
import type { Placement } from "../coordinator/placement";
import { ApiError } from "../errors";
import { expertBackend, workerPlacement } from "./backend";
import { PLACEMENT_CHECK_MS } from "./placement-timing";
import { withDeadline } from "./retry-policy";

/**
 * How long after the last successful contact a cached placement may still be served while the
 * Coordinator is unreachable. Only the Coordinator changes placements, so during its outage the
 * table rarely goes wrong; the bound keeps a Worker from serving a long-superseded one forever.
 */
export const PLACEMENT_MAX_STALE_MS = 5 * 60_000;

/**
 * Deadlines of the Coordinator calls: a version check or a read is one SQLite-backed answer; a
 * first placement loads every expert into its ExpertHost (from R2) before it answers. A stuck
 * Coordinator then costs a request at most this long, and a cached placement is served instead.
 */
export const PLACEMENT_READ_TIMEOUT_MS = 2_000;
export const PLACEMENT_CREATE_TIMEOUT_MS = 60_000;

/** Retry-After (seconds) of the 503 answered when there is no placement to serve from. */
export const PLACEMENT_RETRY_AFTER_S = 2;

interface CachedPlacement {
  placement: Placement;
  /** Last time the Coordinator was asked (successfully or not): the next check waits PLACEMENT_CHECK_MS. */
  checkedAt: number;
  /** Last time the Coordinator answered. */
  confirmedAt: number;
  /** An unreachable Coordinator was logged (once per outage). */
  warned: boolean;
}

const placements = new Map<string, CachedPlacement>();

type CoordinatorStub = ReturnType<Env["COORDINATOR"]["getByName"]>;

export async function currentPlacement(env: Env, init: PlacementInit): Promise<Placement> {
  return sameSlices(init, await placementOf(env, init));
}

/**
 * A placement made with another slice count than this deployment computes (EXPERT_SLICES or the
 * host budget changed since the Coordinator stored it): its units would name other slices than
 * the ExpertHosts load, so serving from it would be wrong, not slow. Refused, naming the fix.
 */
function sameSlices(init: PlacementInit, p: Placement): Placement {
  const want = init.slices ?? 1;
  const have = p.slices ?? 1;
  if (want === have) return p;
  throw new ApiError(
    500,
    `the placement of "${p.model}" cuts experts into ${have} slice(s), this deployment into ${want} ` +
      "(EXPERT_SLICES / EXPERT_HOST_BUDGET_MB changed): serve the model under a new id or restore the vars",
    "server_error",
    null,
    "placement_slices_mismatch",
  );
}

async function placementOf(env: Env, init: PlacementInit): Promise<Placement> {
  if (expertBackend(env) === "worker") return workerPlacement(env, init);
  const cached = placements.get(init.model);
  const now = Date.now();
  if (cached && now - cached.checkedAt < PLACEMENT_CHECK_MS) return cached.placement;
  // Checked here too: an error class thrown inside the Coordinator arrives as a plain Error.
  slotsPerInstance(init);
  const coordinator = env.COORDINATOR.getByName(init.model);
  try {
    if (cached) {
      const version = await ask(coordinator.placementVersion(), PLACEMENT_READ_TIMEOUT_MS);
      if (version === cached.placement.version) {
        confirmed(cached, now);
        return cached.placement;
      }
    }
    const placement = await ask(coordinator.ensurePlacement(init), PLACEMENT_CREATE_TIMEOUT_MS);
    placements.set(init.model, { placement, checkedAt: now, confirmedAt: now, warned: false });
    return placement;
  } catch (err) {
    return fallBack(init.model, cached, now, err);
  }
}

/**
 * The newest placement the Coordinator has, when it is newer than `have` (asked now, whatever the
 * check interval: the fan-out calls this after an instance refused an expert). Returns `have` when
 * the Coordinator has nothing newer or cannot be reached.
 */
export async function refreshedPlacement(env: Env, have: Placement): Promise<Placement> {
  const now = Date.now();
  const cached = placements.get(have.model);
  let latest: Placement | null;
  try {
    latest = await ask(coordinatorOf(env, have.model).getPlacement(), PLACEMENT_READ_TIMEOUT_MS);
  } catch (err) {
    if (cached) cached.checkedAt = now;
    logUnreachable(have.model, cached, err);
    return cached && cached.placement.version > have.version ? cached.placement : have;
  }
  if (!latest || latest.version <= have.version) {
    if (cached) confirmed(cached, now);
    return cached && cached.placement.version > have.version ? cached.placement : have;
  }
  placements.set(have.model, { placement: latest, checkedAt: now, confirmedAt: now, warned: false });
  return latest;
}

/** Makes the next `currentPlacement` ask the Coordinator (the cached table stays as the fallback). */
export function markPlacementStale(model: string): void {
  const cached = placements.get(model);
  if (cached) cached.checkedAt = 0;
}

/** Drops the isolate's copy (tests). */
export function forgetPlacement(model: string): void {
  placements.delete(model);
}

function ask<T>(call: Promise<T>, ms: number): Promise<T> {
  return withDeadline(call, ms, "the Coordinator");
}

function coordinatorOf(env: Env, model: string): CoordinatorStub {
  return env.COORDINATOR.getByName(model);
}

function confirmed(cached: CachedPlacement, now: number): void {
  cached.checkedAt = now;
  cached.confirmedAt = now;
  if (cached.warned) console.log(`Coordinator of "${cached.placement.model}" reachable again`);
  cached.warned = false;
}

function fallBack(model: string, cached: CachedPlacement | undefined, now: number, err: unknown): Placement {
  if (cached && now - cached.confirmedAt <= PLACEMENT_MAX_STALE_MS) {
    // Wait a full interval before asking again: a struggling Coordinator is not asked by every request.
    cached.checkedAt = now;
    logUnreachable(model, cached, err);
    return cached.placement;
  }
  const why = err instanceof Error ? err.message : String(err);
  const detail = cached
    ? `the cached placement is older than ${PLACEMENT_MAX_STALE_MS / 1000} s`
    : "no placement is cached";
  throw new ApiError(
    503,
    `the placement of "${model}" is unavailable (${detail}): ${why}`,
    "service_unavailable",
    null,
    "placement_unavailable",
    ApiError.retryIn(PLACEMENT_RETRY_AFTER_S),
  );
}

function logUnreachable(model: string, cached: CachedPlacement | undefined, err: unknown): void {
  if (!cached || cached.warned) return;
  cached.warned = true;
  const why = err instanceof Error ? err.message : String(err);
  console.warn(`Coordinator of "${model}" unreachable (${why}); serving placement v${cached.placement.version}`);
}
