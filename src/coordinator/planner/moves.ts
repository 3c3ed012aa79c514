/**
 * @module The planner's moves: balancing moves (a replica for an expert loading the busiest
 * instances, evicting a spare replica when memory is full), hedges (a replica for the expert with
 * the most load per replica), and applying a move to the working state.
 */
import type { PlacementOp } from "../placement";
import { EPS, type Eviction, type State } from "./state";
import { maxLoad, rebalanceAround } from "./shares";

/** Instances within this fraction of the mean of the busiest one count as "the busiest". */
const BUSY_BAND = 0.01;

export interface Move {
  layer: number;
  expert: number;
  /** Destination; -1 for a new instance. */
  instance: number;
  evict: Eviction[];
  score: number;
}

function addedKey(st: State, l: number, e: number, j: number): number {
  return (l * st.nExperts + e) * 65536 + j;
}

/** May (l, f)'s replica on j go? Not its last pre-existing replica, not one this plan added. */
function evictable(st: State, l: number, f: number, j: number): boolean {
  const ls = st.layers[l];
  return ls.inst[f].length >= 2 && ls.original[f] >= 2 && (ls.addedTo[f] === 0 || !st.added.has(addedKey(st, l, f, j)));
}

interface EvictionCandidate extends Eviction {
  harm: number;
  bytes: number;
}

/**
 * Evictable replicas on instance j, cheapest first. Harm of evicting (l, f): how far its load,
 * moved to f's other replicas, would push them past 98% of that layer's max, plus a small term
 * for the load moved at all.
 */
function evictionCandidates(st: State, j: number, maxOf: readonly number[]): EvictionCandidate[] {
  const cands: EvictionCandidate[] = [];
  for (let l = 0; l < st.nLayers; l++) {
    const ls = st.layers[l];
    const mean = ls.total / ls.instLoad.length;
    for (const f of ls.experts[j]) {
      if (!evictable(st, l, f, j)) continue;
      const is = ls.inst[f];
      const r = is.indexOf(j);
      const x = ls.load[f] * ls.share[f][r];
      let minOther = Infinity;
      for (let k = 0; k < is.length; k++) if (k !== r && ls.instLoad[is[k]] < minOther) minOther = ls.instLoad[is[k]];
      const harm =
        mean > 0 ? Math.max(0, minOther + x / (is.length - 1) - 0.98 * maxOf[l]) / mean + (0.01 * x) / mean : 0;
      cands.push({ layer: l, expert: f, harm, bytes: st.bytes(l, f) });
    }
  }
  return cands.sort((a, b) => a.harm - b.harm || b.bytes - a.bytes);
}

/** The cheapest evictions among `cands` (not `avoid`) that free `need` bytes on j, or null. */
function findEvictions(
  st: State,
  j: number,
  need: number,
  avoid: Eviction,
  cands: readonly EvictionCandidate[],
): { evict: Eviction[]; harm: number } | null {
  let freed = st.budget[j] - st.used[j];
  if (freed >= need) return { evict: [], harm: 0 };
  const evict: Eviction[] = [];
  let harm = 0;
  for (const c of cands) {
    if (freed >= need) break;
    if (c.layer === avoid.layer && c.expert === avoid.expert) continue;
    evict.push({ layer: c.layer, expert: c.expert });
    freed += c.bytes;
    harm += c.harm;
  }
  return freed >= need ? { evict, harm } : null;
}

/**
 * Best balancing move in layer l: a replica, for an expert loading the busiest instances, on one
 * of the least-loaded instances that can take it. Estimated gain: the g busiest instances drain
 * into the new replica until both meet, limited by the expert's load on them.
 */
export function bestMove(st: State, l: number, n: number, canGrow: boolean): Move | null {
  const ls = st.layers[l];
  const mean = ls.total / n;
  if (mean <= 0) return null;
  const h = maxLoad(ls);
  const busy: number[] = [];
  for (let i = 0; i < n; i++) if (ls.instLoad[i] >= h - BUSY_BAND * mean) busy.push(i);
  const g = busy.length;
  const onBusy = new Map<number, number>(); // expert → its load on the busiest instances
  for (const i of busy) {
    for (const e of ls.experts[i]) {
      const x = ls.load[e] * ls.share[e][ls.inst[e].indexOf(i)];
      if (x > EPS) onBusy.set(e, (onBusy.get(e) ?? 0) + x);
    }
  }
  const experts = [...onBusy.keys()]
    .sort((a, b) => ls.load[b] / ls.inst[b].length - ls.load[a] / ls.inst[a].length)
    .slice(0, 12);
  // Instances lightest first, only as far as needed: each expert tries ≤ 3 destinations below the
  // busy band, so the lightest few (plus those an expert already holds) almost always suffice.
  const byLoad = lightest(ls.instLoad, n, Math.min(n, 24));
  const fullOrder = (): void => {
    if (byLoad.length < n) {
      byLoad.length = 0;
      for (let i = 0; i < n; i++) byLoad.push(i);
      byLoad.sort((a, b) => ls.instLoad[a] - ls.instLoad[b] || a - b);
    }
  };
  const maxOf = st.layers.map(maxLoad);
  const candsOf = new Map<number, EvictionCandidate[]>(); // destination → its eviction candidates
  let best: Move | null = null;
  for (const e of experts) {
    const on = onBusy.get(e) ?? 0;
    const need = st.bytes(l, e);
    let tried = 0;
    for (let q = 0; q < byLoad.length || q < n; q++) {
      if (q >= byLoad.length) fullOrder(); // the order past the first few is sorted only when needed
      const j = byLoad[q];
      if (tried >= 3 || ls.instLoad[j] >= h - BUSY_BAND * mean) break;
      if (ls.inst[e].includes(j)) continue;
      let cands = candsOf.get(j);
      if (!cands && st.budget[j] - st.used[j] < need) candsOf.set(j, (cands = evictionCandidates(st, j, maxOf)));
      const ev = findEvictions(st, j, need, { layer: l, expert: e }, cands ?? []);
      if (!ev) continue;
      tried++;
      const gain = Math.min(on, ((h - ls.instLoad[j]) * g) / (g + 1)) / g;
      const score = gain / mean - ev.harm;
      if (!best || score > best.score) best = { layer: l, expert: e, instance: j, evict: ev.evict, score };
    }
    if (tried === 0 && canGrow) {
      // Nowhere to put it: a new, empty instance (a small penalty prefers existing room).
      const gain = Math.min(on, (h * g) / (g + 1)) / g;
      const score = gain / mean - 0.02;
      if (!best || score > best.score) best = { layer: l, expert: e, instance: -1, evict: [], score };
    }
  }
  return best;
}

const KEEP = 3;

/**
 * Per instance, its KEEP cheapest evictions for a hedge: evictable replicas whose expert keeps
 * the least load per replica (over the layer's mean instance load) without them. Cached in the
 * state; an instance is recomputed only when marked dirty by a change to a replica set touching
 * it (an expert's replica count changes its load per replica on every instance holding it).
 */
function hedgeEvictions(st: State, n: number): { ev: Eviction[][]; af: number[][] } {
  const c = st.hedgeCache;
  if (c.n !== n) {
    c.n = n;
    c.ev = Array.from({ length: n }, () => []);
    c.af = Array.from({ length: n }, () => []);
    c.dirty = new Array<boolean>(n).fill(true);
  }
  for (let j = 0; j < n; j++) {
    if (!c.dirty[j]) continue;
    c.dirty[j] = false;
    const ev = c.ev[j];
    const af = c.af[j];
    ev.length = 0;
    af.length = 0;
    for (let l = 0; l < st.nLayers; l++) {
      const ls = st.layers[l];
      if (ls.total <= 0) continue;
      const mean = ls.total / n;
      for (const f of ls.experts[j]) {
        if (!evictable(st, l, f, j)) continue;
        const after = ls.load[f] / (ls.inst[f].length - 1) / mean;
        if (af.length === KEEP && after >= af[KEEP - 1]) continue;
        // Insert in order, dropping the last when full (no splice: this runs per replica).
        let p = af.length === KEEP ? KEEP - 1 : af.length;
        while (p > 0 && af[p - 1] > after) {
          af[p] = af[p - 1];
          ev[p] = ev[p - 1];
          p--;
        }
        af[p] = after;
        ev[p] = { layer: l, expert: f };
      }
    }
  }
  return c;
}

/** Marks every instance holding (l, e) — and j — for `hedgeEvictions` to recompute. */
function dirtyHedge(st: State, l: number, e: number, j: number): void {
  const c = st.hedgeCache;
  if (j < c.n) c.dirty[j] = true;
  for (const i of st.layers[l].inst[e]) if (i < c.n) c.dirty[i] = true;
}

/** The `count` least-loaded of the first n instances, lightest first (ties: lower index). */
function lightest(load: readonly number[], n: number, count: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const v = load[i];
    if (out.length === count && v >= load[out[count - 1]]) continue;
    let p = out.length === count ? count - 1 : out.length;
    while (p > 0 && load[out[p - 1]] > v) {
      out[p] = out[p - 1];
      p--;
    }
    out[p] = i;
  }
  return out;
}

/**
 * Best hedge: a replica for the expert with the most load per replica (relative to its layer's
 * mean instance load) on the least-loaded instance with room, or — memory full — in place of the
 * spare replica whose expert keeps the least load per replica without it, if that shrinks the
 * largest load per replica by more than `margin`.
 */
export function bestHedge(st: State, n: number, margin: number): Move | null {
  const TOP = 8;
  const top: { layer: number; expert: number; unit: number }[] = [];
  st.layers.forEach((ls, l) => {
    const mean = ls.total / n;
    if (mean <= 0) return;
    for (let e = 0; e < ls.inst.length; e++) {
      const k = ls.inst[e].length;
      if (k >= n) continue;
      const unit = ls.load[e] / k / mean;
      if (top.length === TOP && unit <= top[TOP - 1].unit) continue;
      let p = top.length === TOP ? TOP - 1 : top.length;
      while (p > 0 && top[p - 1].unit < unit) p--;
      top.splice(p, 0, { layer: l, expert: e, unit });
      if (top.length > TOP) top.pop();
    }
  });
  if (top.length === 0) return null;
  // Per instance, its few cheapest evictions (least load per replica left behind), kept across
  // calls and refreshed only where a move changed them (see `dirtyHedge`).
  const { ev: cheapest, af: cheapestAfter } = hedgeEvictions(st, n);
  const afterOf = (l: number, f: number): number => {
    const lf = st.layers[l];
    return lf.load[f] / (lf.inst[f].length - 1) / (lf.total / n);
  };
  for (const c of top) {
    const ls = st.layers[c.layer];
    const k = ls.inst[c.expert].length;
    const newUnit = (c.unit * k) / (k + 1);
    const need = st.bytes(c.layer, c.expert);
    let best: Move | null = null;
    let bestKey = Infinity;
    for (let j = 0; j < n; j++) {
      if (ls.inst[c.expert].includes(j)) continue;
      if (st.budget[j] - st.used[j] >= need) {
        const key = -1 + ls.instLoad[j] / (ls.total + EPS); // free room beats any eviction
        if (key < bestKey) {
          bestKey = key;
          best = { layer: c.layer, expert: c.expert, instance: j, evict: [], score: c.unit };
        }
        continue;
      }
      let found = false;
      for (let q = 0; q < cheapest[j].length && !found; q++) {
        const { layer: l, expert: f } = cheapest[j][q];
        if ((l === c.layer && f === c.expert) || st.budget[j] - st.used[j] + st.bytes(l, f) < need) continue;
        found = true;
        const after = cheapestAfter[j][q];
        if (after * (1 + margin) >= newUnit || after >= bestKey) continue;
        bestKey = after;
        best = { layer: c.layer, expert: c.expert, instance: j, evict: [{ layer: l, expert: f }], score: c.unit };
      }
      if (found || cheapest[j].length < KEEP) continue;
      // Rare: none of the cheapest fits (sizes differ, or it is the candidate itself) — scan all.
      for (let l = 0; l < st.nLayers; l++) {
        if (st.layers[l].total <= 0) continue;
        for (const f of st.layers[l].experts[j]) {
          if ((l === c.layer && f === c.expert) || !evictable(st, l, f, j)) continue;
          if (st.budget[j] - st.used[j] + st.bytes(l, f) < need) continue;
          const after = afterOf(l, f);
          if (after * (1 + margin) >= newUnit || after >= bestKey) continue;
          bestKey = after;
          best = { layer: c.layer, expert: c.expert, instance: j, evict: [{ layer: l, expert: f }], score: c.unit };
        }
      }
    }
    if (best) return best;
  }
  return null;
}

function addReplica(st: State, l: number, e: number, j: number): void {
  const ls = st.layers[l];
  ls.inst[e].push(j);
  ls.share[e].push(0);
  ls.order[e] = undefined;
  ls.experts[j].push(e);
  ls.multi = null;
  st.used[j] += st.bytes(l, e);
  st.added.add(addedKey(st, l, e, j));
  ls.addedTo[e]++;
  dirtyHedge(st, l, e, j);
}

export function removeReplica(st: State, l: number, e: number, j: number): void {
  const ls = st.layers[l];
  const r = ls.inst[e].indexOf(j);
  const s = ls.share[e][r];
  ls.inst[e].splice(r, 1);
  ls.share[e].splice(r, 1);
  ls.order[e] = undefined;
  ls.original[e]--;
  ls.multi = null;
  ls.instLoad[j] -= ls.load[e] * s;
  // The share goes to the remaining replicas evenly; the re-balance that follows refines it.
  const k = ls.inst[e].length;
  for (let q = 0; q < k; q++) {
    ls.share[e][q] += s / k;
    ls.instLoad[ls.inst[e][q]] += (ls.load[e] * s) / k;
  }
  const ex = ls.experts[j];
  ex.splice(ex.indexOf(e), 1);
  st.used[j] -= st.bytes(l, e);
  dirtyHedge(st, l, e, j);
}

function addInstance(st: State, budget: number): number {
  const j = st.budget.length;
  st.budget.push(budget);
  st.used.push(0);
  for (const ls of st.layers) {
    ls.instLoad.push(0);
    ls.experts.push([]);
    ls.instSeen.push(0);
  }
  return j;
}

/** Applies a move to the state and appends its ops; returns the instance count. */
export function applyMove(
  st: State,
  move: Move,
  ops: PlacementOp[],
  n: number,
  newBudget: number,
  touched: Set<number>,
  sweeps: number,
): number {
  let j = move.instance;
  if (j < 0) {
    j = addInstance(st, newBudget);
    n++;
    ops.push({ op: "add-instance" });
  }
  for (const ev of move.evict) {
    removeReplica(st, ev.layer, ev.expert, j);
    ops.push({ op: "remove-replica", layer: ev.layer, expert: ev.expert, instance: j });
    touched.add(ev.layer);
    if (ev.layer !== move.layer) rebalanceAround(st.layers[ev.layer], ev.expert, sweeps);
  }
  addReplica(st, move.layer, move.expert, j);
  ops.push({ op: "add-replica", layer: move.layer, expert: move.expert, instance: j });
  touched.add(move.layer);
  rebalanceAround(st.layers[move.layer], move.expert, sweeps);
  return n;
}
