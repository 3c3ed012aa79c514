/**
 * @module How the placement benchmark turns one window's per-expert counts and a placement into
 * per-instance rows, under each way of choosing replicas:
 *
 * - `split`: every expert's rows split over its replicas by the placement's shares — the expected
 *   rows of a static split. This is how EPLB is deployed (vLLM maps each (token, expert) to a
 *   pseudo-random replica, evenly; `eplb_map_to_physical_and_record`), and how edge-moe's shares
 *   alone would route.
 * - `least-loaded`: the window's rows, shuffled, are cut into layer calls of `rowsPerBatch` rows
 *   (one decode token × top-k by default), dealt in turn to `dispatchers` Worker isolates; each
 *   isolate dispatches a call with `dispatchLeastLoaded` (the Worker's dispatch) against its
 *   own table of rows it sent recently, decayed with a half-life of `halfLifeWindows` windows (the
 *   Worker's `recent` table). Rows in flight need timing and are modelled by the simulator only;
 *   an isolate sees only its own rows, never the cluster's.
 * - `oracle`: each expert's actual rows water-filled over its replicas with the whole window
 *   known in advance (min–max fractional split): the best any dispatch could do on this placement.
 */
import { dispatchLeastLoaded } from "../../src/experts/dispatch";
import type { Placement, Replica } from "../../src/coordinator/placement";
import { waterFill } from "../../src/coordinator/planner";
import { makeRng } from "./workloads";

export type DispatchMode = "split" | "least-loaded" | "oracle";

export interface BatchModel {
  /** Rows (token × expert assignments) per layer call. */
  rowsPerBatch: number;
  /** Worker isolates dispatching independently; calls are dealt to them in turn. */
  dispatchers: number;
  /** Half-life of an isolate's table of recently sent rows, in windows. */
  halfLifeWindows: number;
  /**
   * Clear the tables when the placement's replica sets change (a new version with other
   * replicas): rows sent under the old sets say little about the new ones, and a table that
   * remembers an instance as busy keeps starving it after the planner moved load off it.
   */
  resetOnChange: boolean;
}

export const DEFAULT_BATCH: BatchModel = { rowsPerBatch: 8, dispatchers: 8, halfLifeWindows: 0.5, resetOnChange: true };

/** [instance] rows of one layer under `split`: Σ count × share. */
export function splitRows(
  replicas: readonly (readonly Replica[])[],
  counts: readonly number[],
  nInstances: number,
): Float64Array {
  const out = new Float64Array(nInstances);
  for (let e = 0; e < replicas.length; e++) for (const r of replicas[e]) out[r.instance] += counts[e] * r.share;
  return out;
}

/**
 * [instance] rows of one layer under `oracle`: Gauss–Seidel water-filling of every multi-replica
 * expert's count over its replicas (converges to the min–max split; see src/coordinator/planner/shares.ts).
 */
export function oracleRows(
  replicas: readonly (readonly Replica[])[],
  counts: readonly number[],
  nInstances: number,
  sweeps = 60,
): Float64Array {
  const load = new Float64Array(nInstances);
  const multi: number[] = [];
  const x: number[][] = replicas.map((reps, e) => reps.map(() => counts[e] / reps.length));
  for (let e = 0; e < replicas.length; e++) {
    for (const r of replicas[e]) load[r.instance] += counts[e] / replicas[e].length;
    if (replicas[e].length > 1 && counts[e] > 0) multi.push(e);
  }
  multi.sort((a, b) => counts[b] - counts[a]);
  const base: number[] = [];
  const fill: number[] = [];
  const order: number[] = [];
  const total = counts.reduce((a, b) => a + b, 0);
  const tol = (1e-3 * total) / nInstances;
  for (let s = 0; s < sweeps; s++) {
    let delta = 0;
    for (let q = 0; q < multi.length; q++) {
      const e = multi[s % 2 === 0 ? q : multi.length - 1 - q];
      const reps = replicas[e];
      base.length = reps.length;
      for (let r = 0; r < reps.length; r++) base[r] = load[reps[r].instance] - x[e][r];
      waterFill(base, counts[e], fill, order);
      for (let r = 0; r < reps.length; r++) {
        delta = Math.max(delta, Math.abs(fill[r] - x[e][r]));
        x[e][r] = fill[r];
        load[reps[r].instance] = base[r] + fill[r];
      }
    }
    if (delta <= tol) break;
  }
  return load;
}

/**
 * Isolates with their recent-rows tables, kept across windows (isolates outlive re-plans). One
 * per benchmark run and policy; `rows` dispatches one window of one layer.
 */
export class DispatchModel {
  readonly model: BatchModel;
  #rng: () => number;
  /** [layer][dispatcher] → recent rows per instance. */
  #recent: Float64Array[][] = [];
  #nInstances: number;
  #tokens: Float64Array = new Float64Array(0);
  #experts: number[] = [];
  #out: number[][] = [];
  #rows: Int32Array = new Int32Array(0);
  /** [layer] → the replica sets the tables were built under. */
  #sets: (readonly (readonly Replica[])[] | null)[] = [];

  constructor(nInstances: number, model: BatchModel, seed: number) {
    if (!(model.rowsPerBatch >= 1) || !Number.isInteger(model.rowsPerBatch))
      throw new RangeError(`rowsPerBatch must be an integer ≥ 1, got ${model.rowsPerBatch}`);
    if (!(model.dispatchers >= 1) || !Number.isInteger(model.dispatchers))
      throw new RangeError(`dispatchers must be an integer ≥ 1, got ${model.dispatchers}`);
    if (!(model.halfLifeWindows > 0)) throw new RangeError(`halfLifeWindows must be > 0, got ${model.halfLifeWindows}`);
    this.model = model;
    this.#nInstances = nInstances;
    this.#rng = makeRng(seed);
  }

  /** [instance] rows of `layer` in a window with `counts` per expert under least-loaded dispatch. */
  rows(placement: Placement, layer: number, counts: readonly number[]): Float64Array {
    const replicas = placement.replicas[layer];
    const n = Math.max(this.#nInstances, placement.instances.length);
    const nExperts = replicas.length;
    const { rowsPerBatch, dispatchers, halfLifeWindows } = this.model;
    // Every row of the window, shuffled: calls draw from the window's mix in a random order.
    let total = 0;
    for (const c of counts) total += Math.round(c);
    if (this.#rows.length < total) this.#rows = new Int32Array(total);
    const rows = this.#rows;
    let k = 0;
    for (let e = 0; e < nExperts; e++) for (let c = Math.round(counts[e]); c > 0; c--) rows[k++] = e;
    const rng = this.#rng;
    for (let i = total - 1; i > 0; i--) {
      const j = Math.floor(rng() * (i + 1));
      const t = rows[i];
      rows[i] = rows[j];
      rows[j] = t;
    }
    while (this.#recent.length <= layer) this.#recent.push([]);
    const tables = this.#recent[layer];
    while (tables.length < dispatchers) tables.push(new Float64Array(n));
    if (this.model.resetOnChange && !sameSets(this.#sets[layer] ?? null, replicas)) for (const t of tables) t.fill(0);
    this.#sets[layer] = replicas;
    for (let d = 0; d < dispatchers; d++)
      if (tables[d].length < n) {
        const grown = new Float64Array(n);
        grown.set(tables[d]);
        tables[d] = grown;
      }
    if (this.#tokens.length < nExperts) this.#tokens = new Float64Array(nExperts);
    if (this.#out.length !== nExperts || this.#out.some((row, e) => row.length < replicas[e].length))
      this.#out = replicas.map((reps) => new Array<number>(reps.length).fill(0));
    const tokens = this.#tokens;
    const experts = this.#experts;
    const out = this.#out;
    const nBatches = Math.ceil(total / rowsPerBatch);
    // A table halves every halfLifeWindows windows; it decays every `every` own calls (about one
    // row per instance in between), which keeps the decay's cost below the dispatch's.
    const every = Math.max(1, Math.ceil(n / rowsPerBatch));
    const keep = 0.5 ** (every / Math.max(1e-9, (halfLifeWindows * nBatches) / dispatchers));
    const load = new Float64Array(n);
    for (let b = 0; b < nBatches; b++) {
      const table = tables[b % dispatchers];
      if (Math.floor(b / dispatchers) % every === 0) for (let i = 0; i < n; i++) table[i] *= keep;
      experts.length = 0;
      const end = Math.min(total, (b + 1) * rowsPerBatch);
      for (let q = b * rowsPerBatch; q < end; q++) {
        const e = rows[q];
        if (tokens[e] === 0) experts.push(e);
        tokens[e]++;
      }
      dispatchLeastLoaded(tokens, replicas, table, { random: rng, out, experts });
      for (const e of experts) {
        const reps = replicas[e];
        for (let r = 0; r < reps.length; r++) load[reps[r].instance] += out[e][r];
      }
      for (const e of experts) tokens[e] = 0;
    }
    return load;
  }
}

function sameSets(a: readonly (readonly Replica[])[] | null, b: readonly (readonly Replica[])[]): boolean {
  if (a === b) return true;
  if (!a || a.length !== b.length) return false;
  for (let e = 0; e < a.length; e++) {
    if (a[e].length !== b[e].length) return false;
    for (let r = 0; r < a[e].length; r++) if (!b[e].some((x) => x.instance === a[e][r].instance)) return false;
  }
  return true;
}

/** max / mean of a row of instance loads over the first `n` instances (1 when empty). */
export function maxOverMean(row: ArrayLike<number>, n: number): number {
  let total = 0;
  let max = 0;
  for (let i = 0; i < n; i++) {
    total += row[i];
    if (row[i] > max) max = row[i];
  }
  return total > 0 ? max / (total / n) : 1;
}
