/**
 * @module Least-loaded dispatch of one layer call's routed tokens over each expert's replicas
 * (pure apart from the load table it is given). The Worker knows the exact per-expert token
 * counts of the call it is about to send and the rows it has in flight per instance; this turns
 * that into per-replica token counts that keep the busiest instance as light as possible.
 *
 * Rule: experts with one replica go first (no choice; their rows are the "rigid" load), then the
 * others, most tokens first, each water-filled over its replicas' instances: rows go to the
 * replicas whose instance load is lowest until they meet at one level (integer counts; the last
 * few rows one at a time to the lowest). One Gauss–Seidel sweep then re-fills every multi-replica
 * expert against the final loads (later experts changed them). This minimises the busiest
 * instance of the call given `instanceLoad`; across calls, `instanceLoad` carries the caller's
 * view of the cluster (in-flight or recently sent rows), so a busy instance is avoided.
 *
 * Pass cost (`passRows`, row-equivalents; 0 = rows only): an ExpertHost streams an expert's whole
 * weights once per pass however many rows it brings, so sending any rows of an expert to a replica
 * costs that fixed read plus the rows. With a pass cost, an instance's load counts it for every
 * pass, and an expert uses m of its replicas (the least loaded) only when that lowers its busiest
 * instance by more than the reads it adds: it minimises (busiest level of its replicas) +
 * passRows × (m − 1). A split adds a full weight read to the cluster's work (rows are conserved),
 * so it must shorten the busiest instance by at least that much to pay — a few decode rows stay on
 * one replica, a large prefill batch still splits, and a busy replica still sheds rows to an idle one.
 *
 * The planner's shares only break ties (a replica is picked among equally loaded ones with
 * probability ∝ share): an idle caller (all loads equal, one token) follows the planner's split,
 * which encodes the cluster-wide load other callers add. Shares are NOT used as weights on the
 * load: (load + 1) / share counts other experts' rows on an instance against this expert's share
 * and over-corrects — e.g. an expert whose replica shares the planner lowered because its
 * instance carries other load would then be kept off that instance twice.
 */
import type { Replica } from "../coordinator/placement";

export interface DispatchOptions {
  /** Uniform [0, 1) source for tie-breaks. Default Math.random. */
  random?: () => number;
  /** Re-fill sweeps after the first pass. Default 1. */
  sweeps?: number;
  /** Output to reuse ([expert][replica], rows sized like `replicas`); the rows dispatched are overwritten. */
  out?: number[][];
  /**
   * The experts with tokens in this call, when the caller has the list (it skips a scan over all
   * experts; rows of experts not listed are then left as they are in `out`).
   */
  experts?: ArrayLike<number>;
  /**
   * Fixed cost of one expert pass (its weight read) in row-equivalents, ≥ 0. Default 0: rows only
   * (every replica is water-filled as if a pass were free).
   */
  passRows?: number;
}

const TIE = 1e-9;

/**
 * Splits each expert's tokens over its replicas. `tokensPerExpert[e]` ([nExperts], integers ≥ 0)
 * are one call's routed rows per expert; `replicas[e]` the placement's replicas of expert e;
 * `instanceLoad[i]` ([nInstances] rows) the caller's current load per instance, which is UPDATED
 * IN PLACE: on return it includes this call's rows. Returns `[expert][replica]` row counts,
 * parallel to `replicas[e]`, summing to `tokensPerExpert[e]`.
 */
export function dispatchLeastLoaded(
  tokensPerExpert: ArrayLike<number>,
  replicas: readonly (readonly Replica[])[],
  instanceLoad: Float64Array,
  options: DispatchOptions = {},
): number[][] {
  const random = options.random ?? Math.random;
  const sweeps = options.sweeps ?? 1;
  const pass = options.passRows ?? 0;
  const listed = options.experts;
  const count = listed ? listed.length : replicas.length;
  const out = options.out ?? replicas.map((reps) => new Array<number>(reps.length).fill(0));
  const flexible = flexibleScratch;
  flexible.length = 0;
  for (let q = 0; q < count; q++) {
    const e = listed ? listed[q] : q;
    const row = out[e];
    const reps = replicas[e];
    for (let r = 0; r < reps.length; r++) row[r] = 0;
    const n = tokensPerExpert[e] ?? 0;
    if (n <= 0) continue;
    if (reps.length === 1) {
      row[0] = n;
      instanceLoad[reps[0].instance] += n + pass;
    } else flexible.push(e);
  }
  if (flexible.length === 0) return out;
  // Most rows first (insertion sort when the call lists few experts, as decode calls do).
  if (flexible.length > 32) flexible.sort((a, b) => tokensPerExpert[b] - tokensPerExpert[a] || a - b);
  else
    for (let i = 1; i < flexible.length; i++) {
      const e = flexible[i];
      const n = tokensPerExpert[e];
      let j = i - 1;
      while (j >= 0 && (tokensPerExpert[flexible[j]] < n || (tokensPerExpert[flexible[j]] === n && flexible[j] > e))) {
        flexible[j + 1] = flexible[j];
        j--;
      }
      flexible[j + 1] = e;
    }
  const fill: typeof fillExpertWithPasses = pass > 0 ? fillExpertWithPasses : fillExpert;
  for (const e of flexible) fill(replicas[e], tokensPerExpert[e], instanceLoad, out[e], random, pass);
  for (let s = 0; s < sweeps; s++) {
    for (const e of flexible) {
      const reps = replicas[e];
      const row = out[e];
      for (let r = 0; r < reps.length; r++) if (row[r] > 0) instanceLoad[reps[r].instance] -= row[r] + pass;
      fill(reps, tokensPerExpert[e], instanceLoad, row, random, pass);
    }
  }
  return out;
}

// Scratch (calls are synchronous): replica counts are small, so a few module-level arrays suffice.
const flexibleScratch: number[] = [];
const base: number[] = [];
const order: number[] = [];
const picked: boolean[] = [];

/** Integer water-filling of n rows over reps against instanceLoad; writes row, adds to instanceLoad. */
function fillExpert(
  reps: readonly Replica[],
  n: number,
  instanceLoad: Float64Array,
  row: number[],
  random: () => number,
): void {
  const k = reps.length;
  base.length = k;
  picked.length = k;
  for (let r = 0; r < k; r++) {
    base[r] = instanceLoad[reps[r].instance];
    picked[r] = false;
  }
  if (n <= 4 * k) {
    // Few rows (the usual decode call): one at a time to the lowest is the same water-filling.
    for (let r = 0; r < k; r++) row[r] = 0;
    for (let t = 0; t < n; t++) row[lowestOf(reps, base, row, picked, k, random, false)]++;
    for (let r = 0; r < k; r++) instanceLoad[reps[r].instance] += row[r];
    return;
  }
  order.length = k;
  for (let r = 0; r < k; r++) order[r] = r;
  order.sort((a, b) => base[a] - base[b]);
  let sum = 0;
  let level = 0;
  for (let m = 0; m < k; m++) {
    sum += base[order[m]];
    level = (n + sum) / (m + 1);
    if (m + 1 === k || level <= base[order[m + 1]]) break;
  }
  let given = 0;
  for (let r = 0; r < k; r++) {
    const x = level > base[r] ? Math.floor(level - base[r] + TIE) : 0;
    row[r] = x;
    given += x;
  }
  // Flooring leaves fewer than k rows (rounding can overshoot by one on exact levels: take back).
  given = takeBackOvershoot(row, base, k, given, n);
  for (; given < n; given++) row[lowestOf(reps, base, row, picked, k, random, false)]++;
  for (let r = 0; r < k; r++) instanceLoad[reps[r].instance] += row[r];
}

/**
 * Water-filling with a pass cost: replicas are ordered least loaded first (equal loads in a
 * share-weighted random order); the first m share the rows at one level (each used instance at
 * load + pass + rows), and the m minimising level + pass × (m − 1) wins, the fewest on a tie.
 * Writes row; adds to instanceLoad the rows and a pass for each replica used.
 */
function fillExpertWithPasses(
  reps: readonly Replica[],
  n: number,
  instanceLoad: Float64Array,
  row: number[],
  random: () => number,
  pass: number,
): void {
  const k = reps.length;
  base.length = k;
  order.length = 0;
  picked.length = k;
  for (let r = 0; r < k; r++) {
    base[r] = instanceLoad[reps[r].instance] + pass; // the level this replica starts at once used
    row[r] = 0;
    picked[r] = false;
  }
  for (let m = 0; m < k; m++) order.push(lowestOf(reps, base, row, picked, k, random));
  let sum = base[order[0]];
  let m = 1;
  let level = base[order[0]] + n;
  let best = level;
  for (let j = 1; j < k; j++) {
    const at = (n + sum + base[order[j]]) / (j + 1);
    // Once the next replica would get less than one row, so would every later (higher) one.
    if (at < base[order[j]] + 1 - TIE) break;
    sum += base[order[j]];
    if (at + pass * j < best - TIE) {
      best = at + pass * j;
      level = at;
      m = j + 1;
    }
  }
  let given = 0;
  for (let j = 0; j < m; j++) {
    const r = order[j];
    const x = m === 1 ? n : Math.max(0, Math.floor(level - base[r] + TIE));
    row[r] = x;
    given += x;
  }
  // Flooring leaves fewer than m rows (rounding can overshoot by one on exact levels: take back).
  given = takeBackOvershoot(row, base, k, given, n);
  for (let j = 0; j < k; j++) picked[j] = true;
  for (let j = 0; j < m; j++) picked[order[j]] = false;
  while (given < n) {
    row[lowestOf(reps, base, row, picked, k, random, false)]++;
    given++;
  }
  for (let r = 0; r < k; r++) if (row[r] > 0) instanceLoad[reps[r].instance] += row[r] + pass;
}

/**
 * Among replicas not `picked`, the one with the lowest base + row; ties by share-weighted draw.
 * Marks it picked when `mark` (building an order); else leaves the marks as they are.
 */
function lowestOf(
  reps: readonly Replica[],
  level: number[],
  row: number[],
  picked: boolean[],
  k: number,
  random: () => number,
  mark = true,
): number {
  let best = -1;
  let bestLoad = Infinity;
  let weight = 0;
  for (let r = 0; r < k; r++) {
    if (picked[r]) continue;
    const v = level[r] + row[r];
    const w = reps[r].share > 0 ? reps[r].share : 1e-6;
    if (v < bestLoad - TIE) {
      best = r;
      bestLoad = v;
      weight = w;
    } else if (v <= bestLoad + TIE) {
      weight += w;
      if (random() * weight < w) best = r;
    }
  }
  if (mark) picked[best] = true;
  return best;
}

/** Takes rows back one at a time from the highest base + row replica holding rows until given ≤ n; returns given. */
function takeBackOvershoot(row: number[], base: number[], k: number, given: number, n: number): number {
  for (; given > n; given--) {
    let best = -1;
    for (let r = 0; r < k; r++) if (row[r] > 0 && (best < 0 || base[r] + row[r] > base[best] + row[best])) best = r;
    row[best]--;
  }
  return given;
}
