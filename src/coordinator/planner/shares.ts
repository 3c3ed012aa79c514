/**
 * @module Share re-balancing (water-filling): for fixed replica sets, the shares minimising the
 * expected Σ load² of every layer, solved by Gauss–Seidel sweeps one expert at a time.
 */
import type { Replica } from "../placement";
import type { LayerState, State } from "./state";

/**
 * Share sweeps stop once no instance load moves by more than this fraction of the layer mean:
 * within 1% of the exact min–max, and the Worker's least-loaded dispatch re-splits within the
 * window anyway, so tighter sweeps only cost time.
 */
const TOLERANCE = 5e-3;
/**
 * Most experts re-balanced after a move (nearest first). Two hops from a hot expert with many
 * replicas reach most of a layer; beyond ~48 experts the extra sweeps cost time and changed no
 * measured balance.
 */
const NEAR_CAP = 48;

/**
 * Water-filling: spreads `total` over bins standing at `base` so that every bin that gets some
 * ends at one common level: out[k] = max(0, level − base[k]), Σ out = total. `order` is scratch;
 * when it already holds a permutation of 0…k−1 (the caller's order from the last call on the
 * same bins), it is re-sorted from there, which is nearly free when the bins moved little.
 */
export function waterFill(base: readonly number[], total: number, out: number[], order: number[] = []): void {
  const k = base.length;
  if (k === 1) {
    out[0] = total;
    return;
  }
  if (order.length !== k) {
    order.length = k;
    for (let i = 0; i < k; i++) order[i] = i;
  }
  for (let i = 1; i < k; i++) {
    const v = order[i];
    let j = i - 1;
    while (j >= 0 && base[order[j]] > base[v]) {
      order[j + 1] = order[j];
      j--;
    }
    order[j + 1] = v;
  }
  let sum = 0;
  let level = 0;
  for (let m = 0; m < k; m++) {
    sum += base[order[m]];
    level = (total + sum) / (m + 1);
    if (m + 1 === k || level <= base[order[m + 1]]) break;
  }
  for (let i = 0; i < k; i++) out[i] = level > base[i] ? level - base[i] : 0;
}

/**
 * Re-balances one expert's shares with the others fixed: minimises Σ (base + x)² + ρ Σ x² over
 * Σ x = load, which is water-filling of load·(1+ρ) scaled back by 1/(1+ρ). Returns the largest
 * change of an instance's load.
 */
function rebalanceExpert(ls: LayerState, e: number, base: number[], x: number[]): number {
  const is = ls.inst[e];
  const sh = ls.share[e];
  const L = ls.load[e];
  const k = is.length;
  if (k < 2 || L <= 0) return 0;
  const scale = 1 + ls.rho[e];
  if (k === 2) {
    // Two replicas (the common case): water-filling in closed form.
    const i0 = is[0];
    const i1 = is[1];
    const b0 = ls.instLoad[i0] - L * sh[0];
    const b1 = ls.instLoad[i1] - L * sh[1];
    const T = L * scale;
    const x0 = b1 - b0 >= T ? T : b0 - b1 >= T ? 0 : (T + b1 - b0) / 2;
    const s0 = x0 / T;
    const d = Math.abs(s0 - sh[0]) * L;
    sh[0] = s0;
    sh[1] = 1 - s0;
    ls.instLoad[i0] = b0 + s0 * L;
    ls.instLoad[i1] = b1 + sh[1] * L;
    return d;
  }
  base.length = k;
  x.length = k;
  for (let r = 0; r < k; r++) base[r] = ls.instLoad[is[r]] - L * sh[r];
  // A per-expert order survives between sweeps (replica sets change only through add/remove,
  // which reset it): insertion sort from the last order is nearly linear.
  let o = ls.order[e];
  if (!o || o.length !== k) o = ls.order[e] = [];
  waterFill(base, L * scale, x, o);
  let delta = 0;
  for (let r = 0; r < k; r++) {
    const s = x[r] / scale / L;
    const d = Math.abs(s - sh[r]) * L;
    if (d > delta) delta = d;
    sh[r] = s;
    ls.instLoad[is[r]] = base[r] + s * L;
  }
  return delta;
}

function multiOf(ls: LayerState): number[] {
  if (ls.multi === null) {
    const m: number[] = [];
    for (let e = 0; e < ls.inst.length; e++) if (ls.inst[e].length > 1 && ls.load[e] > 0) m.push(e);
    ls.multi = m.sort((a, b) => ls.load[b] - ls.load[a]);
  }
  return ls.multi;
}

export function rebalanceLayer(ls: LayerState, nInstances: number, maxSweeps: number, exact = true): void {
  const multi = multiOf(ls);
  if (multi.length > 0) {
    const tol = (TOLERANCE * ls.total) / nInstances;
    const base: number[] = [];
    const x: number[] = [];
    for (let sweep = 0; sweep < maxSweeps; sweep++) {
      let delta = 0;
      // Alternating direction (symmetric Gauss–Seidel) lets load travel both ways along chains.
      for (let q = 0; q < multi.length; q++) {
        const d = rebalanceExpert(ls, multi[sweep % 2 === 0 ? q : multi.length - 1 - q], base, x);
        if (d > delta) delta = d;
      }
      if (delta <= tol) break;
    }
  }
  if (!exact) return;
  // Recompute from the shares: sweeps accumulate rounding.
  ls.instLoad.fill(0);
  for (let e = 0; e < ls.inst.length; e++) {
    const is = ls.inst[e];
    for (let r = 0; r < is.length; r++) ls.instLoad[is[r]] += ls.load[e] * ls.share[e][r];
  }
}

/**
 * A few sweeps over the experts next to a change: those sharing an instance with expert e, and
 * those sharing an instance with them (at most NEAR_CAP, nearest first). Cheap enough after every
 * move; the plan ends with a full re-balance of every touched layer.
 */
export function rebalanceAround(ls: LayerState, e: number, sweeps: number): void {
  // Stamps instead of sets: this runs after every move.
  const stamp = ++ls.stamp;
  const near = ls.near;
  const queue = ls.queue;
  near.length = 0;
  queue.length = 0;
  for (const i of ls.inst[e])
    if (ls.instSeen[i] !== stamp) {
      ls.instSeen[i] = stamp;
      queue.push(i);
    }
  for (let hop = 0, from = 0; hop < 2 && near.length < NEAR_CAP; hop++) {
    const to = queue.length;
    for (let q = from; q < to; q++) {
      for (const f of ls.experts[queue[q]]) {
        if (ls.expertSeen[f] === stamp || ls.inst[f].length < 2 || !(ls.load[f] > 0)) continue;
        if (near.length >= NEAR_CAP) break;
        ls.expertSeen[f] = stamp;
        near.push(f);
        for (const k of ls.inst[f])
          if (ls.instSeen[k] !== stamp) {
            ls.instSeen[k] = stamp;
            queue.push(k);
          }
      }
    }
    from = to;
  }
  near.sort((a, b) => ls.load[b] - ls.load[a]);
  const base: number[] = [];
  const x: number[] = [];
  for (let sweep = 0; sweep < sweeps; sweep++) {
    if (sweep % 2 === 0) for (let q = 0; q < near.length; q++) rebalanceExpert(ls, near[q], base, x);
    else for (let q = near.length - 1; q >= 0; q--) rebalanceExpert(ls, near[q], base, x);
  }
}

export function maxLoad(ls: LayerState): number {
  let m = 0;
  for (const v of ls.instLoad) if (v > m) m = v;
  return m;
}

export function ratio(ls: LayerState, nInstances: number): number {
  return ls.total > 0 ? maxLoad(ls) / (ls.total / nInstances) : 1;
}

export function exportShares(st: State): Replica[][][] {
  return st.layers.map((ls) =>
    ls.inst.map((is, e) => {
      const sh = ls.share[e];
      let sum = 0;
      for (const s of sh) sum += s > 1e-9 ? s : 0;
      return is.map((instance, r) => ({ instance, share: sum > 0 ? (sh[r] > 1e-9 ? sh[r] / sum : 0) : 1 / is.length }));
    }),
  );
}
