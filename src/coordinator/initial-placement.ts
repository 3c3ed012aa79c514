/**
 * @module The first placement of a model: as few ExpertHost instances as the memory budget allows
 * (or MIN_EXPERT_HOSTS, if more), each layer's experts dealt round-robin so that one layer's
 * fan-out touches every instance in parallel rather than queueing on one. A sliced expert's units
 * (src/experts/slices.ts: unit e·S + s) are placed like experts: consecutive units, so one
 * expert's slices land on different instances and run in parallel.
 */
import { modelLayer, type Placement, type Replica } from "./placement";
import { hostName } from "../experts/protocol";
import { BudgetError } from "../errors";
import { formatMiB } from "../platform/format";

export interface PlacementInit {
  model: string;
  /** Model layers (all, when `moeLayers` is absent). */
  nLayers: number;
  /** The layers that have routed experts, when not all of them do. */
  moeLayers?: readonly number[];
  nExperts: number;
  /** Slices per expert (default 1): the placement holds nExperts · slices units a layer. */
  slices?: number;
  /** Bytes one expert occupies on a host (as stored in Wasm memory); of its largest slice when sliced. */
  expertBytes: number;
  budgetBytes: number;
  minInstances: number;
  /** Fraction of each instance's slots left free for hot-expert replicas (0 ≤ f < 1). */
  spareFraction?: number;
}

/** Experts one instance can hold; throws a BudgetError naming the budget when not even one fits. */
export function slotsPerInstance(init: PlacementInit): number {
  const { model, expertBytes, budgetBytes } = init;
  const slots = Math.floor(budgetBytes / expertBytes);
  if (slots < 1) {
    const what = (init.slices ?? 1) > 1 ? `one slice of an expert (${init.slices} slices)` : "one expert";
    throw new BudgetError(
      `model "${model}" does not fit: ${what} needs ${formatMiB(expertBytes)} but an ExpertHost may hold ` +
        `${formatMiB(budgetBytes)} (EXPERT_HOST_BUDGET_MB). ` +
        "Quantize the experts or raise the budget (≤ what a 128 MB isolate holds).",
    );
  }
  return slots;
}

export function initialPlacement(init: PlacementInit): Placement {
  const { model, budgetBytes, minInstances } = init;
  const slices = init.slices ?? 1;
  if (!Number.isInteger(slices) || slices < 1) throw new RangeError(`slices must be an integer ≥ 1, got ${slices}`);
  const nExperts = init.nExperts * slices; // placement units
  const layers = init.moeLayers ? [...init.moeLayers] : null;
  const nLayers = layers ? layers.length : init.nLayers;
  const spare = Math.min(Math.max(init.spareFraction ?? 0, 0), 0.9);
  const slots = Math.max(1, Math.floor(slotsPerInstance(init) * (1 - spare)));
  const total = nLayers * nExperts;
  const nInstances = Math.max(minInstances, Math.ceil(total / slots));
  const replicas: Replica[][][] = [];
  for (let l = 0; l < nLayers; l++) {
    const row: Replica[][] = [];
    for (let e = 0; e < nExperts; e++) row.push([{ instance: homeInstance(l, e, nExperts, nInstances), share: 1 }]);
    replicas.push(row);
  }
  return {
    model,
    version: 1,
    nLayers,
    nExperts,
    ...(slices > 1 ? { slices } : {}),
    ...(layers && !layers.every((l, i) => l === i) ? { layers } : {}),
    instances: Array.from({ length: nInstances }, (_, id) => ({ id, name: hostName(model, id), budgetBytes })),
    replicas,
  };
}

/**
 * The instance the first placement gives unit `expert` of placement row `row`, among `nInstances`
 * (round-robin over all rows). The consolidation after a burst (planner/consolidate.ts) moves
 * experts back here, so that an idle placement is the fresh one again.
 */
export function homeInstance(row: number, expert: number, nExperts: number, nInstances: number): number {
  return (row * nExperts + expert) % nInstances;
}

/** The experts (units, when sliced) each instance holds (model layer numbers), by instance id. */
export function expertsByInstance(p: Placement): { layer: number; expert: number }[][] {
  const out = p.instances.map(() => [] as { layer: number; expert: number }[]);
  p.replicas.forEach((row, r) =>
    row.forEach((reps, expert) => reps.forEach((rep) => out[rep.instance].push({ layer: modelLayer(p, r), expert }))),
  );
  return out;
}
