/**
 * @module The planner's latency model (pure): what a layer call costs under a placement at the
 * current load, so that a replica or an instance is added only when it makes layer calls faster,
 * and kept only while it still does.
 *
 * A layer call sends ONE RPC to every instance it touches, in parallel, and waits for the last
 * (a barrier). Per instance i of a layer with C calls per window:
 * - q_i, the chance a call touches i: 1 − Π_e (1 − min(1, rows of e on i per call)), calls assumed
 *   independent;
 * - its kernel time per touching call: one pass per expert with rows in the call — the read of
 *   the expert's weights, paid once however many rows the pass brings (`passMsPerMiB`) — plus the
 *   rows × the per-row compute (`rowMsPerMiB`), both per MiB of the expert; an expert with r < 1
 *   expected rows per call is passed in a share min(1, r) of the calls. Batched calls (a decode
 *   step of 16 streams brings ~4 rows an expert) cost little more than one row, which a linear
 *   per-row cost overstated many times over and answered with copies that only widen the fan-out;
 * - its utilisation u_i over ALL layers' calls (`HOST_CALL_SHARE` of an RPC of host work each) and rows
 *   (and any replica it is loading), and the M/D/1 mean wait u S / (2 (1 − u)) for a call of
 *   service S, so a hot instance's queue counts;
 * - R_i = kernel + wait; the expected maximum of R over the touched instances, sorted by R
 *   descending: Σ_k R_k q_k Π_{j<k} (1 − q_j), conditioned on touching at least one.
 * The RPCs themselves: half the round trip fixed, half an exponential tail, so F parallel RPCs
 * (F = Σ q / P(any), the expected fan-out of a call) cost rpc/2 + rpc/2 · H(F) — every extra instance a call touches
 * lengthens the wait for the slowest answer. Spreading an expert's rows therefore pays only when
 * it shortens the kernel time or the queue of the slowest instance by more than the wider fan-out
 * costs: at low load it rarely does; at high load the waits dominate and balance wins.
 */
import type { State } from "./state";

/** Measured costs and the current call rate: the model's inputs (see the module comment). */
export interface LatencyModel {
  /** One RPC round trip of a layer call (ms); `HOST_CALL_SHARE` of it occupies the host. */
  rpcMs: number;
  /**
   * Expert kernel time per routed row per MiB of the expert's weights (ms), beyond the pass's
   * weight read: the compute a row adds to a pass (a sliced or int8 expert costs less).
   */
  rowMsPerMiB: number;
  /**
   * Fixed cost of one expert pass per MiB of its weights (ms): the read of the weights, paid once
   * per call that brings the expert any rows. 0 or absent: rows only (each row costs a pass).
   */
  passMsPerMiB?: number;
  /** Loading one replica occupies its destination this long (ms per MiB of expert weights). */
  loadMsPerMiB: number;
  /** The load window (ms): utilisation is busy time over it. */
  windowMs: number;
  /** [layer] layer calls per window (forecast). A layer with none is not modelled. */
  calls: readonly number[];
}

/**
 * Share of an RPC's round trip that occupies the host (deserialising, scheduling the call): a
 * round trip between Durable Objects is mostly network, so this is small; the rest is transit.
 */
export const HOST_CALL_SHARE = 0.1;

/**
 * Past this utilisation the M/D/1 wait continues along its tangent: the model stays finite on an
 * overloaded instance, and taking load off it still counts (a flat cap would make an instance at
 * 300% look no worse than one at 96%, and no copy would seem to help where it helps most).
 */
const MAX_UTIL = 0.95;

/** M/D/1 mean wait in units of the service time: u / (2 (1 − u)), linear past MAX_UTIL. */
function waitFactor(u: number): number {
  if (u <= MAX_UTIL) return u / (2 * (1 - u));
  const slope = 1 / (2 * (1 - MAX_UTIL) ** 2);
  return MAX_UTIL / (2 * (1 - MAX_UTIL)) + slope * (u - MAX_UTIL);
}

/** One instance of one layer, as the model sees it. */
export interface InstanceCall {
  /** Chance a call of the layer touches the instance. */
  q: number;
  /** Σ over its experts of rows per window × MiB of the expert: its kernel work for the layer. */
  rowMiB: number;
  /** Σ over its experts of min(1, rows per call) × MiB of the expert: the weights its passes read per call. */
  passMiB?: number;
}

/** The harmonic number H(x), linear between integers: E[max] of x exponential tails of mean 1. */
function harmonic(x: number): number {
  let h = 0;
  const k = Math.floor(x);
  for (let i = 1; i <= k; i++) h += 1 / i;
  return h + (x - k) / (k + 1);
}

/** Expected layer latency (ms) from per-instance touch chances, rows, and utilisations. */
export function expectedLayerMs(
  inst: readonly InstanceCall[],
  util: readonly number[],
  calls: number,
  model: Pick<LatencyModel, "rpcMs" | "rowMsPerMiB" | "passMsPerMiB">,
): number {
  const r: { q: number; ms: number }[] = [];
  let fanOut = 0;
  inst.forEach((c, i) => {
    if (!(c.q > 0)) return;
    const q = Math.min(1, c.q);
    fanOut += q;
    const kernel = ((c.rowMiB / calls) * model.rowMsPerMiB + (c.passMiB ?? 0) * (model.passMsPerMiB ?? 0)) / q;
    const wait = (model.rpcMs * HOST_CALL_SHARE + kernel) * waitFactor(util[i] ?? 0);
    r.push({ q, ms: kernel + wait });
  });
  if (r.length === 0) return 0;
  r.sort((a, b) => b.ms - a.ms);
  let none = 1; // chance no slower instance was touched
  let max = 0;
  for (const x of r) {
    max += x.ms * x.q * none;
    none *= 1 - x.q;
  }
  // Every call touches at least one instance: condition on it (independent touches would
  // otherwise count calls touching none, and splitting one expert's rows would look free).
  const touched = 1 - none;
  const perCall = touched > 0 ? fanOut / touched : 1; // instances per call, given it touches one
  const rpc = model.rpcMs / 2 + (model.rpcMs / 2) * harmonic(Math.max(1, perCall));
  return rpc + (touched > 0 ? max / touched : 0);
}

/** Per layer and instance, the call touch chances and rows of the planner's working state. */
function instanceCalls(st: State, n: number, calls: readonly number[]): InstanceCall[][] {
  return st.layers.map((ls, l) => {
    const C = calls[l] ?? 0;
    const out: InstanceCall[] = Array.from({ length: n }, () => ({ q: 0, rowMiB: 0, passMiB: 0 }));
    if (!(C > 0)) return out;
    const miss = new Array<number>(n).fill(1);
    ls.inst.forEach((is, e) => {
      const L = ls.load[e];
      if (!(L > 0)) return;
      const mib = st.bytes(l, e) / 2 ** 20;
      is.forEach((i, r) => {
        if (i >= n) return;
        const touch = Math.min(1, (L * ls.share[e][r]) / C); // its rows per call, at most one pass
        miss[i] *= 1 - touch;
        out[i].rowMiB += L * ls.share[e][r] * mib;
        out[i].passMiB = (out[i].passMiB ?? 0) + touch * mib;
      });
    });
    for (let i = 0; i < n; i++) out[i].q = 1 - miss[i];
    return out;
  });
}

/**
 * Σ over layers of the expected layer latency (ms) of the state's placement and shares.
 * `loadingBytes[i]`: bytes being loaded onto instance i this window (its copies' load time).
 */
export function stateLatencyMs(st: State, n: number, model: LatencyModel, loadingBytes?: readonly number[]): number {
  const perLayer = instanceCalls(st, n, model.calls);
  const util = new Array<number>(n).fill(0);
  perLayer.forEach((row, l) => {
    const C = model.calls[l] ?? 0;
    row.forEach((c, i) => {
      util[i] +=
        C * c.q * model.rpcMs * HOST_CALL_SHARE +
        c.rowMiB * model.rowMsPerMiB +
        C * (c.passMiB ?? 0) * (model.passMsPerMiB ?? 0);
    });
  });
  for (let i = 0; i < n; i++) {
    const loading = ((loadingBytes?.[i] ?? 0) / 2 ** 20) * model.loadMsPerMiB;
    util[i] = (util[i] + loading) / model.windowMs;
  }
  let total = 0;
  perLayer.forEach((row, l) => {
    const C = model.calls[l] ?? 0;
    if (C > 0) total += expectedLayerMs(row, util, C, model);
  });
  return total;
}

/** Does the model apply (some layer has calls)? */
export function modelled(model: LatencyModel | undefined): model is LatencyModel {
  return !!model && model.calls.some((c) => c > 0) && model.windowMs > 0;
}
