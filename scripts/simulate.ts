/**
 * @module `npm run simulate [-- --calibration FILE] [--out FILE]`: a discrete-event model of N
 * ExpertHost instances, each a single-threaded FIFO actor, serving a skewed, drifting,
 * request-correlated token stream at a fixed offered load, under three placements — static
 * round-robin, EPLB re-planned from scratch every window, and edge-moe — each with the replica
 * choice it is deployed with, plus the other choice as an extra row. Reports p50/p99 per-layer
 * latency and throughput (JSON to bench-results/simulate.json).
 *
 * Why a simulator: local workerd runs every Durable Object on one thread, so replication cannot
 * show a latency win there. Every per-call cost comes from measurements (scripts/lib/calibrate.ts,
 * cached in bench-results/calibration.json, measured when absent): the expert FFN kernel per
 * tokens per call, the Worker → DO RPC round trip per payload size, and loading one expert.
 *
 * Model, per decode step (one token; `--tokens-per-step` for more): each step belongs to one of
 * the requests in flight (`--requests`: each prefers its own experts for ~8 windows), and for each
 * MoE layer in turn the router picks top-k distinct experts from that request's view of the
 * window's popularity. Replicas are chosen per call, as the placement is deployed:
 * - `split` (static, eplb, eplb-free-copies, edge-moe-split): a replica per (token, expert) drawn
 *   by the placement's shares — vLLM's pseudo-random replica for EPLB;
 * - `least-loaded` (edge-moe, eplb-ll, eplb-ll-free-copies): the Worker's `dispatchLeastLoaded` in
 *   the step's Worker isolate (steps are dealt to `--isolates` isolates in turn) against that
 *   isolate's own rows in flight plus its recently sent rows (half-life 1 s, as the Worker keeps
 *   them; cleared when the published replica sets change).
 * ONE call per instance carries all of that instance's work. A
 * call costs half the RPC round trip in transit each way (not occupying the instance) and, on the
 * instance, the other half plus Σ kernel(tokens) over its experts; the instance serves calls FIFO.
 * The layer ends when its last call returns (the barrier); the next layer starts then (dense work
 * in the Worker is not modelled: the same for every placement). At each window boundary a policy
 * re-plans from the counts routed in the window before; each copied replica occupies its
 * destination instance for one measured expert load, queued FIFO with the calls. edge-moe
 * re-plans with the Coordinator's own `replanStep` and the deployed config (wrangler.toml [vars];
 * its REPLAN_INTERVAL_MS is the window) unless a flag overrides a knob.
 *
 * Offered load ρ, on two bases (both reported):
 * - cluster: the arrival rate at which the instances would be busy a fraction ρ of the time on
 *   average if the static placement's work were spread evenly (total busy time demanded ÷
 *   (N × elapsed time)). A skewed static placement is saturated here: its busiest instance needs
 *   more than the wall clock, so its queue and latency grow for as long as the run lasts.
 * - static: the arrival rate at which the static placement's busiest instance (worst window) is
 *   busy a fraction ρ of the time: every placement is stable, and static is the reference.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { pathToFileURL } from "node:url";
import type { Placement } from "../src/coordinator/placement";
import type { ReplanConfig } from "../src/coordinator/replan";
import { dispatchLeastLoaded } from "../src/experts/dispatch";
import { calibrate, D_MODEL, interpolate, type Calibration, type CostPoint } from "./lib/calibrate";
import { machineInfo, makePolicy, quantile, type ClusterShape, type PolicyName } from "./lib/placement-policies";
import { shapeFor } from "./lib/placement-scenarios";
import { REPLAN_FLAGS_HELP, applyReplanFlag, describeReplanConfig } from "./lib/replan-config";
import { progressBar } from "./lib/progress";
import { DEFAULT_SIM, type LoadBasis, type SimConfig } from "./lib/sim-config";
import { gaussian, makeRng, popularityTrace, type LoadTrace } from "./lib/workloads";

// ── configuration ─────────────────────────────────────────────────────────────────────────────

/** Per-call costs from a calibration, made monotone (pool-adjacent violators) against noise. */
export interface Costs {
  kernelMs(tokens: number): number;
  rpcMs(bytes: number): number;
  expertLoadMs: number;
}

export function monotone(points: readonly CostPoint[]): CostPoint[] {
  const blocks: { x: number[]; sum: number; n: number }[] = [];
  for (const p of [...points].sort((a, b) => a.x - b.x)) {
    blocks.push({ x: [p.x], sum: p.ms, n: 1 });
    while (
      blocks.length > 1 &&
      blocks[blocks.length - 2].sum / blocks[blocks.length - 2].n >
        blocks[blocks.length - 1].sum / blocks[blocks.length - 1].n
    ) {
      const b = blocks.pop()!;
      const a = blocks[blocks.length - 1];
      a.x.push(...b.x);
      a.sum += b.sum;
      a.n += b.n;
    }
  }
  return blocks.flatMap((b) => b.x.map((x) => ({ x, ms: b.sum / b.n })));
}

export function costsFrom(cal: Calibration): Costs {
  const kernel = monotone(cal.kernel.points);
  const rpc = monotone(cal.rpc.points);
  return {
    kernelMs: (n) => interpolate(kernel, n),
    rpcMs: (b) => interpolate(rpc, b),
    expertLoadMs: cal.expertLoad.ms,
  };
}

// ── the event simulation ──────────────────────────────────────────────────────────────────────

/** Binary min-heap of events by time (ties by insertion order, so the run is deterministic). */
class EventQueue<T> {
  #t: number[] = [];
  #seq: number[] = [];
  #v: T[] = [];
  #n = 0;
  get size(): number {
    return this.#t.length;
  }
  push(t: number, v: T): void {
    const seq = this.#n++;
    let i = this.#t.length;
    this.#t.push(t);
    this.#seq.push(seq);
    this.#v.push(v);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.#less(i, p)) {
        this.#swap(i, p);
        i = p;
      } else break;
    }
  }
  pop(): [number, T] {
    const t = this.#t[0];
    const v = this.#v[0];
    const last = this.#t.length - 1;
    this.#swap(0, last);
    this.#t.pop();
    this.#seq.pop();
    this.#v.pop();
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < this.#t.length && this.#less(l, m)) m = l;
      if (r < this.#t.length && this.#less(r, m)) m = r;
      if (m === i) break;
      this.#swap(i, m);
      i = m;
    }
    return [t, v];
  }
  #less(a: number, b: number): boolean {
    return this.#t[a] < this.#t[b] || (this.#t[a] === this.#t[b] && this.#seq[a] < this.#seq[b]);
  }
  #swap(a: number, b: number): void {
    // Temporaries, not destructuring: that allocates an array per swap (a third of the run in GC).
    const t = this.#t[a];
    this.#t[a] = this.#t[b];
    this.#t[b] = t;
    const q = this.#seq[a];
    this.#seq[a] = this.#seq[b];
    this.#seq[b] = q;
    const v = this.#v[a];
    this.#v[a] = this.#v[b];
    this.#v[b] = v;
  }
}

type SimEvent =
  | { kind: "step" }
  | { kind: "arrive"; instance: number; serviceMs: number; transitMs: number; step: number; rows: number }
  | { kind: "return"; step: number; instance: number; rows: number }
  | { kind: "window"; index: number };

interface Step {
  layer: number;
  pending: number;
  layerStart: number;
  /** Worker isolate dispatching this step. */
  isolate: number;
  /** [layer] → the experts of every token, drawn at arrival so every placement sees one stream. */
  routed: number[][];
}

/**
 * The three placements with the replica choice each is deployed with — static and EPLB split
 * tokens by shares, edge-moe dispatches least-loaded — plus rows that separate the effects: EPLB
 * with weight copies costing nothing, EPLB with least-loaded dispatch (with and without copy cost),
 * and edge-moe's placement with a static split.
 */
export type SimPolicy =
  | "static"
  | "eplb"
  | "eplb-free-copies"
  | "eplb-ll"
  | "eplb-ll-free-copies"
  | "edge-moe"
  | "edge-moe-today"
  | "edge-moe-split";
export type Dispatch = "split" | "least-loaded";
export const SIM_SPECS: Record<SimPolicy, { placement: PolicyName; copies: boolean; dispatch: Dispatch }> = {
  static: { placement: "static", copies: false, dispatch: "split" },
  eplb: { placement: "eplb", copies: true, dispatch: "split" },
  "eplb-free-copies": { placement: "eplb", copies: false, dispatch: "split" },
  "eplb-ll": { placement: "eplb", copies: true, dispatch: "least-loaded" },
  "eplb-ll-free-copies": { placement: "eplb", copies: false, dispatch: "least-loaded" },
  "edge-moe": { placement: "edge-moe", copies: true, dispatch: "least-loaded" },
  "edge-moe-today": { placement: "edge-moe-today", copies: true, dispatch: "least-loaded" },
  "edge-moe-split": { placement: "edge-moe", copies: true, dispatch: "split" },
};
export const SIM_POLICIES: SimPolicy[] = [
  "static",
  "eplb",
  "eplb-free-copies",
  "eplb-ll",
  "eplb-ll-free-copies",
  "edge-moe",
  "edge-moe-today",
  "edge-moe-split",
];

export interface SimResult {
  policy: SimPolicy;
  /** What `load` is relative to (see the module comment). */
  basis: LoadBasis;
  load: number;
  offeredStepsPerSec: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  latencyMeanMs: number;
  /** Tokens whose last layer completed, per second of simulated time after warm-up. */
  throughputTokensPerSec: number;
  /** Tokens per second at which the busiest instance would be busy 100% of a window (worst window). */
  saturationTokensPerSec: number;
  /** Busy fraction over measured windows: mean over instances, and the busiest instance (worst window). */
  utilMean: number;
  utilMaxWindow: number;
  /** Online max/mean of routed tokens per instance (p50 over windows and layers). */
  balanceP50: number;
  copiesPerReplan: number;
  /** Work still queued on the busiest instance when the run ends (ms): large = saturated. */
  backlogMs: number;
  saturated: boolean;
}

/** Alias table for O(1) sampling from a discrete distribution (Vose). */
function aliasTable(p: readonly number[]): { prob: Float64Array; alias: Int32Array } {
  const n = p.length;
  const prob = new Float64Array(n);
  const alias = new Int32Array(n);
  const scaled = p.map((x) => x * n);
  const small: number[] = [];
  const large: number[] = [];
  scaled.forEach((x, i) => (x < 1 ? small : large).push(i));
  while (small.length && large.length) {
    const s = small.pop()!;
    const l = large.pop()!;
    prob[s] = scaled[s];
    alias[s] = l;
    scaled[l] = scaled[l] + scaled[s] - 1;
    (scaled[l] < 1 ? small : large).push(l);
  }
  for (const i of [...small, ...large]) prob[i] = 1;
  return { prob, alias };
}

/** The popularity each window actually draws from: the drifting Zipf with a burst factor per expert. */
function windowPopularity(cfg: SimConfig): number[][][] {
  const base = popularityTrace({
    nExperts: cfg.nExperts,
    nLayers: cfg.nLayers,
    s: cfg.s,
    nWindows: cfg.windows,
    assignmentsPerWindow: 1,
    drift: cfg.drift,
    seed: cfg.seed,
  });
  const rng = makeRng(cfg.seed * 977 + 5);
  return base.map((layers) =>
    layers.map((p) => {
      const q = p.map((x) => x * Math.exp(cfg.burstiness * gaussian(rng) - (cfg.burstiness * cfg.burstiness) / 2));
      const sum = q.reduce((a, b) => a + b, 0);
      return q.map((x) => x / sum);
    }),
  );
}

interface Router {
  /** Requests in flight (1 without `requests`): a step belongs to one, drawn by `request()`. */
  slots: number;
  request(): number;
  /** Top-k distinct experts for one token of request `slot` at `layer` in `window`; writes into `out`. */
  pick(window: number, layer: number, slot: number, out: number[]): void;
}

/**
 * Per (window, layer, request slot) an alias table of the window's popularity tilted by that
 * request's affinity; a slot's request ends with probability 1 / meanWindows per window and a
 * new one (fresh affinity) takes its place. The tilts come from their own seeded stream, so
 * every policy sees the same requests.
 */
function makeRouter(cfg: SimConfig, popularity: number[][][], rng: () => number): Router {
  const mix = cfg.requests;
  const slots = mix ? mix.active : 1;
  const tiltRng = makeRng(cfg.seed * 131 + 7);
  const tilt = (): Float64Array[] =>
    popularity[0].map((p) => Float64Array.from(p, () => (mix ? Math.exp(mix.affinity * gaussian(tiltRng)) : 1)));
  const current = Array.from({ length: slots }, tilt);
  const tables = popularity.map((layers, w) => {
    if (w > 0 && mix) for (let r = 0; r < slots; r++) if (tiltRng() < 1 / mix.meanWindows) current[r] = tilt();
    return layers.map((p, l) => current.map((t) => aliasTable(normalised(p.map((x, e) => x * t[l][e])))));
  });
  const byPopularity = popularity.map((layers) => layers.map((p) => p.map((_, e) => e).sort((a, b) => p[b] - p[a])));
  return {
    slots,
    request: () => (slots === 1 ? 0 : Math.floor(rng() * slots)),
    pick(window, layer, slot, out) {
      const { prob, alias } = tables[window][layer][slot];
      const n = prob.length;
      out.length = 0;
      for (let tries = 0; out.length < cfg.topK && tries < 32 * cfg.topK; tries++) {
        const i = Math.floor(rng() * n);
        const e = rng() < prob[i] ? i : alias[i];
        if (!out.includes(e)) out.push(e);
      }
      // Extremely skewed rows: fill from the most popular experts not yet chosen.
      for (const e of byPopularity[window][layer]) {
        if (out.length >= cfg.topK) break;
        if (!out.includes(e)) out.push(e);
      }
    },
  };
}

function normalised(p: number[]): number[] {
  const sum = p.reduce((a, b) => a + b, 0);
  return p.map((x) => x / sum);
}

/** Same instances for every (layer, expert)? */
function sameReplicaSets(a: Placement, b: Placement): boolean {
  if (a === b) return true;
  return a.replicas.every((layer, l) =>
    layer.every(
      (reps, e) =>
        reps.length === b.replicas[l][e].length &&
        reps.every((r) => b.replicas[l][e].some((o) => o.instance === r.instance)),
    ),
  );
}

/** Cumulative shares per (layer, expert) for picking a replica with one uniform draw. */
function replicaPicker(p: Placement): { inst: Int32Array[][]; cum: Float64Array[][] } {
  const inst = p.replicas.map((layer) => layer.map((reps) => Int32Array.from(reps.map((r) => r.instance))));
  const cum = p.replicas.map((layer) =>
    layer.map((reps) => {
      const c = new Float64Array(reps.length);
      let acc = 0;
      reps.forEach((r, k) => (c[k] = acc += r.share));
      return c;
    }),
  );
  return { inst, cum };
}

export function simulate(
  cfg: SimConfig,
  costs: Costs,
  simPolicy: SimPolicy,
  basis: LoadBasis,
  load: number,
  stepsPerSec: number,
  shape: ClusterShape,
): SimResult {
  const spec = SIM_SPECS[simPolicy];
  const policyName = spec.placement;
  const copyMs = spec.copies ? costs.expertLoadMs : 0;
  const rng = makeRng(cfg.seed * 7 + 3); // same token stream for every policy at one load
  const popularity = windowPopularity(cfg);
  const router = makeRouter(cfg, popularity, rng);
  const placeRng = makeRng(cfg.seed * 11 + 1);
  const observed: LoadTrace = {
    source: "simulation",
    nLayers: cfg.nLayers,
    nExperts: cfg.nExperts,
    windows: [],
    calls: [],
  };
  const policy = makePolicy(policyName, observed, shape, { ...cfg.replan, windowMs: cfg.windowMs });
  let placement = makePolicy("static", observed, shape, cfg.replan).step(0).placement;
  let previous = placement;
  let picker = replicaPicker(placement);

  const N = cfg.nInstances;
  const freeAt = new Float64Array(N + 64); // room for instances the planner may add
  const busy = Array.from({ length: cfg.windows }, () => new Float64Array(N + 64));
  let counts = Array.from({ length: cfg.nLayers }, () => new Array<number>(cfg.nExperts).fill(0));
  let calls = new Array<number>(cfg.nLayers).fill(0); // [layer] layer calls this window, as Workers report them
  const instTokens: number[][][] = []; // [window][layer][instance] routed tokens
  let windowInstTokens = Array.from({ length: cfg.nLayers }, () => new Array<number>(N + 64).fill(0));
  const latencies: number[] = [];
  const steps: Step[] = [];
  const q = new EventQueue<SimEvent>();
  const endMs = cfg.windows * cfg.windowMs;
  const warmMs = cfg.warmupWindows * cfg.windowMs;
  let completedTokens = 0;
  let copies = 0;
  let replans = 0;

  const bytesPerToken = D_MODEL * 4;
  const picked: number[] = [];
  // One call's work: rows per (instance, expert) pair and the instances it touches (flat, reused).
  const E = cfg.nExperts;
  const pairRows = new Float64Array((N + 64) * E); // [instance × nExperts + expert] rows
  const pairs: number[] = [];
  const callInstances: number[] = [];
  const instRows = new Float64Array(N + 64);
  const instKernel = new Float64Array(N + 64);
  const assign = (l: number, e: number, i: number, n: number): void => {
    windowInstTokens[l][i] += n;
    const p = i * E + e;
    if (pairRows[p] === 0) pairs.push(p);
    pairRows[p] += n;
  };

  // Worker isolates (least-loaded choice): per isolate, rows in flight and recently
  // sent rows per instance (all layers, as the Worker keeps them), decayed lazily.
  const W = N + 64;
  const isolates = Array.from({ length: cfg.isolates }, () => ({
    inflight: new Float64Array(W),
    recent: new Float64Array(W),
    at: 0,
  }));
  const view = new Float64Array(W); // [instance] recent + in flight, the dispatch's instanceLoad
  const tokens = new Float64Array(cfg.nExperts); // [expert] rows of the call
  const callExperts: number[] = [];
  const out: number[][] = [];
  let stepCount = 0;
  const isolateView = (iso: number, now: number): Float64Array => {
    const s = isolates[iso];
    if (now > s.at) {
      const keep = 0.5 ** ((now - s.at) / cfg.recentHalfLifeMs);
      for (let i = 0; i < W; i++) s.recent[i] *= keep;
      s.at = now;
    }
    for (let i = 0; i < W; i++) view[i] = s.recent[i] + s.inflight[i];
    return view;
  };

  const dispatch = (now: number, stepId: number): void => {
    const st = steps[stepId];
    const l = st.layer;
    calls[l]++;
    pairs.length = 0;
    if (spec.dispatch === "split") {
      for (const e of st.routed[l]) {
        counts[l][e]++;
        const cum = picker.cum[l][e];
        const u = placeRng() * cum[cum.length - 1];
        let k = 0;
        while (k < cum.length - 1 && cum[k] < u) k++;
        assign(l, e, picker.inst[l][e][k], 1);
      }
    } else {
      callExperts.length = 0;
      for (const e of st.routed[l]) {
        counts[l][e]++;
        if (tokens[e] === 0) callExperts.push(e);
        tokens[e]++;
      }
      const reps = placement.replicas[l];
      const loads = isolateView(st.isolate, now);
      while (out.length < reps.length) out.push([]);
      dispatchLeastLoaded(tokens, reps, loads, { random: placeRng, out, experts: callExperts });
      for (const e of callExperts) reps[e].forEach((r, k) => out[e][k] > 0 && assign(l, e, r.instance, out[e][k]));
      for (const e of callExperts) tokens[e] = 0;
    }
    callInstances.length = 0;
    for (const p of pairs) {
      const i = Math.floor(p / E);
      if (instRows[i] === 0) callInstances.push(i);
      instRows[i] += pairRows[p];
      instKernel[i] += costs.kernelMs(pairRows[p]);
      pairRows[p] = 0;
    }
    st.pending = callInstances.length;
    st.layerStart = now;
    const iso = isolates[st.isolate];
    for (const i of callInstances) {
      const rows = instRows[i];
      const kernel = instKernel[i];
      instRows[i] = 0;
      instKernel[i] = 0;
      iso.inflight[i] += rows;
      iso.recent[i] += rows;
      const rpc = costs.rpcMs(rows * bytesPerToken);
      q.push(now + rpc / 2, {
        kind: "arrive",
        instance: i,
        serviceMs: rpc / 2 + kernel,
        transitMs: rpc / 2,
        step: stepId,
        rows,
      });
    }
  };

  // Poisson arrivals, generated lazily; window boundaries.
  const arrivalRng = makeRng(cfg.seed * 13 + load * 1000);
  const nextArrival = (now: number): number => now - Math.log(1 - arrivalRng()) * (1000 / stepsPerSec);
  q.push(nextArrival(0), { kind: "step" });
  for (let k = 1; k < cfg.windows; k++) q.push(k * cfg.windowMs, { kind: "window", index: k });

  while (q.size > 0) {
    const [now, ev] = q.pop();
    if (ev.kind === "step") {
      if (now >= endMs) continue;
      const w = Math.min(cfg.windows - 1, Math.floor(now / cfg.windowMs));
      const routed: number[][] = [];
      const slot = router.request();
      for (let l = 0; l < cfg.nLayers; l++) {
        const r: number[] = [];
        for (let t = 0; t < cfg.tokensPerStep; t++) {
          router.pick(w, l, slot, picked);
          r.push(...picked);
        }
        routed.push(r);
      }
      steps.push({ layer: 0, pending: 0, layerStart: now, isolate: stepCount++ % cfg.isolates, routed });
      dispatch(now, steps.length - 1);
      q.push(nextArrival(now), { kind: "step" });
    } else if (ev.kind === "arrive") {
      const start = Math.max(now, freeAt[ev.instance]);
      freeAt[ev.instance] = start + ev.serviceMs;
      const w = Math.min(cfg.windows - 1, Math.floor(start / cfg.windowMs));
      busy[w][ev.instance] += ev.serviceMs;
      q.push(freeAt[ev.instance] + ev.transitMs, {
        kind: "return",
        step: ev.step,
        instance: ev.instance,
        rows: ev.rows,
      });
    } else if (ev.kind === "return") {
      const st = steps[ev.step];
      isolates[st.isolate].inflight[ev.instance] -= ev.rows;
      if (--st.pending > 0) continue;
      if (st.layerStart >= warmMs && st.layerStart < endMs) latencies.push(now - st.layerStart);
      if (st.layer + 1 < cfg.nLayers) {
        st.layer++;
        dispatch(now, ev.step);
      } else {
        st.routed = []; // done: let its routing go
        if (now >= warmMs && now < endMs) completedTokens += cfg.tokensPerStep;
      }
    } else {
      // Window boundary: the counts of the window that just ended drive the next placement.
      observed.windows.push(counts);
      observed.calls?.push(calls);
      calls = new Array<number>(cfg.nLayers).fill(0);
      instTokens.push(windowInstTokens);
      counts = Array.from({ length: cfg.nLayers }, () => new Array<number>(cfg.nExperts).fill(0));
      windowInstTokens = Array.from({ length: cfg.nLayers }, () => new Array<number>(N + 64).fill(0));
      const step = policy.step(ev.index - 1);
      // Rows sent under other replica sets say little about the new ones: isolates clear their
      // recent rows when the published sets change (rows in flight stay: they are real).
      if (!sameReplicaSets(placement, step.placement)) for (const iso of isolates) iso.recent.fill(0);
      placement = step.placement;
      picker = replicaPicker(placement);
      if (ev.index >= cfg.warmupWindows) {
        copies += step.copies;
        replans++;
      }
      // Each new replica is loaded by its destination, queued behind the calls it already has.
      placement.replicas.forEach((layer, l) =>
        layer.forEach((reps, e) => {
          for (const r of reps) {
            if (copyMs === 0 || previous.replicas[l][e].some((o) => o.instance === r.instance)) continue;
            const start = Math.max(now, freeAt[r.instance]);
            freeAt[r.instance] = start + copyMs;
            busy[Math.min(cfg.windows - 1, Math.floor(start / cfg.windowMs))][r.instance] += copyMs;
          }
        }),
      );
      previous = placement;
    }
  }

  const sortedLatencies = Float64Array.from(latencies).sort();
  const measured = busy.slice(cfg.warmupWindows);
  const utilMean =
    measured.reduce((a, row) => a + row.slice(0, N).reduce((x, y) => x + y, 0), 0) /
    (measured.length * N * cfg.windowMs);
  const utilMaxWindow = Math.max(...measured.map((row) => Math.max(...row) / cfg.windowMs));
  const balance = instTokens
    .slice(cfg.warmupWindows)
    .flatMap((layers) => layers.map((row) => ratioOf(row.slice(0, N))));
  const seconds = (endMs - warmMs) / 1000;
  const backlogMs = Math.max(0, ...Array.from(freeAt).map((t) => t - endMs));
  return {
    policy: simPolicy,
    basis,
    load,
    offeredStepsPerSec: stepsPerSec,
    latencyP50Ms: sortedQuantile(sortedLatencies, 0.5),
    latencyP99Ms: sortedQuantile(sortedLatencies, 0.99),
    latencyMeanMs: latencies.reduce((a, b) => a + b, 0) / latencies.length,
    throughputTokensPerSec: completedTokens / seconds,
    saturationTokensPerSec: (stepsPerSec * cfg.tokensPerStep) / utilMaxWindow,
    utilMean,
    utilMaxWindow,
    balanceP50: quantile(balance, 0.5),
    copiesPerReplan: copies / Math.max(1, replans),
    backlogMs,
    saturated: backlogMs > cfg.windowMs,
  };
}

function sortedQuantile(a: Float64Array, q: number): number {
  if (a.length === 0) return NaN;
  const pos = q * (a.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return a[lo] + (a[hi] - a[lo]) * (pos - lo);
}

function ratioOf(row: number[]): number {
  const total = row.reduce((a, b) => a + b, 0);
  return total > 0 ? Math.max(...row) / (total / row.length) : 1;
}

/**
 * Expected busy ms per step under the static placement (Monte Carlo over every window's
 * popularity): summed over instances, and on the busiest instance of the worst window.
 */
export function staticWork(cfg: SimConfig, costs: Costs, shape: ClusterShape): { totalMs: number; busiestMs: number } {
  const rng = makeRng(cfg.seed * 17 + 9);
  const popularity = windowPopularity(cfg);
  const router = makeRouter(cfg, popularity, rng);
  const observed: LoadTrace = { source: "", nLayers: cfg.nLayers, nExperts: cfg.nExperts, windows: [] };
  const placement = makePolicy("static", observed, shape, cfg.replan).step(0).placement;
  const perWindow = 200;
  const picked: number[] = [];
  let total = 0;
  let busiest = 0;
  for (let w = 0; w < cfg.windows; w++) {
    const inst = new Float64Array(cfg.nInstances);
    for (let k = 0; k < perWindow; k++) {
      const slot = router.request();
      for (let l = 0; l < cfg.nLayers; l++) {
        const perInstance = new Map<number, Map<number, number>>();
        for (let t = 0; t < cfg.tokensPerStep; t++) {
          router.pick(w, l, slot, picked);
          for (const e of picked) {
            const i = placement.replicas[l][e][0].instance;
            let m = perInstance.get(i);
            if (!m) perInstance.set(i, (m = new Map()));
            m.set(e, (m.get(e) ?? 0) + 1);
          }
        }
        for (const [i, experts] of perInstance) {
          let tokens = 0;
          for (const n of experts.values()) {
            tokens += n;
            inst[i] += costs.kernelMs(n);
          }
          inst[i] += costs.rpcMs(tokens * D_MODEL * 4) / 2;
        }
      }
    }
    total += inst.reduce((a, b) => a + b, 0) / perWindow;
    busiest = Math.max(busiest, Math.max(...inst) / perWindow);
  }
  return { totalMs: total / cfg.windows, busiestMs: busiest };
}

// ── CLI ───────────────────────────────────────────────────────────────────────────────────────

/** The cached calibration, or a fresh one (measured and cached) when absent or `fresh` is set. */
async function loadCalibration(path: string, fresh: boolean, log: (m: string) => void): Promise<Calibration> {
  if (!fresh && existsSync(path)) {
    const cal = JSON.parse(readFileSync(path, "utf8")) as Calibration;
    if (!cal.kernel?.points?.length || !cal.rpc?.points?.length || !(cal.expertLoad?.ms >= 0)) {
      throw new Error(
        `${path} is not a calibration file (expected kernel.points, rpc.points, expertLoad.ms); ` +
          "delete it or pass --recalibrate",
      );
    }
    log(`using calibration from ${path} (measured ${cal.date} on ${cal.machine.cpu} × ${cal.machine.cores})`);
    return cal;
  }
  log(fresh ? "re-measuring the calibration" : `no calibration at ${path}: measuring now (about half a minute)`);
  const cal = await calibrate(log);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify(cal, null, 2)}\n`);
  log(`wrote ${path}`);
  return cal;
}

function parseArgs(argv: string[]): {
  calibration: string;
  out: string;
  recalibrate: boolean;
  cfg: SimConfig;
  policies: SimPolicy[];
  costsFromFlags: boolean;
} {
  const out = {
    calibration: "bench-results/calibration.json",
    out: "bench-results/simulate.json",
    recalibrate: false,
    costsFromFlags: false,
    cfg: { ...DEFAULT_SIM },
    policies: SIM_POLICIES,
  };
  const replanOverrides: Partial<ReplanConfig> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const pos = (name: string, v: string, integer = true): number => {
      const n = Number(v);
      if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n)))
        throw new Error(`${name} must be a positive ${integer ? "integer" : "number"}, got "${v}"`);
      return n;
    };
    if (a === "--calibration") out.calibration = next();
    else if (a === "--out") out.out = next();
    else if (a === "--recalibrate") out.recalibrate = true;
    else if (a === "--instances") out.cfg.nInstances = pos(a, next());
    else if (a === "--experts") out.cfg.nExperts = pos(a, next());
    else if (a === "--top-k") out.cfg.topK = pos(a, next());
    else if (a === "--layers") out.cfg.nLayers = pos(a, next());
    else if (a === "--windows") out.cfg.windows = pos(a, next());
    else if (a === "--window-ms") out.cfg.windowMs = pos(a, next(), false);
    else if (a === "--tokens-per-step") out.cfg.tokensPerStep = pos(a, next());
    else if (a === "--zipf") out.cfg.s = pos(a, next(), false);
    else if (a === "--loads")
      out.cfg.loads = next()
        .split(",")
        .map((v) => pos("--loads", v, false));
    else if (a === "--seed") out.cfg.seed = pos(a, next());
    else if (a === "--isolates") out.cfg.isolates = pos(a, next());
    else if (a === "--recent-half-life-ms") out.cfg.recentHalfLifeMs = pos(a, next(), false);
    else if (a === "--no-requests") out.cfg.requests = null;
    else if (applyReplanFlag(replanOverrides, a, next)) continue;
    else if (a === "--policies") {
      const names = next().split(",");
      for (const n of names)
        if (!(SIM_POLICIES as string[]).includes(n))
          throw new Error(`--policies: unknown policy "${n}" (one of ${SIM_POLICIES.join(", ")})`);
      out.policies = names as SimPolicy[];
    } else if (a === "--basis") {
      const v = next();
      if (v !== "cluster" && v !== "static" && v !== "both")
        throw new Error(`--basis must be cluster, static or both, got "${v}"`);
      out.cfg.bases = v === "both" ? ["cluster", "static"] : [v];
    } else if (a === "--help" || a === "-h") {
      console.log(
        "usage: npm run simulate [-- --calibration FILE] [--recalibrate] [--out FILE] [--loads 0.5,0.8] " +
          "[--basis both|cluster|static]\n" +
          "       [--instances 16] [--experts 64] [--top-k 4] [--layers 2] [--windows 40] [--window-ms " +
          DEFAULT_SIM.windowMs +
          "] [--tokens-per-step 1] [--zipf 1.0] [--seed 7]\n" +
          "       [--isolates 8] [--recent-half-life-ms 1000] [--no-requests] [--policies " +
          SIM_POLICIES.join(",") +
          "]\n" +
          `       ${REPLAN_FLAGS_HELP}; --window-ms sets the window (default REPLAN_INTERVAL_MS)`,
      );
      process.exit(0);
    } else throw new Error(`unknown option ${a} (try --help)`);
  }
  out.cfg.replan = { ...out.cfg.replan, ...replanOverrides };
  out.costsFromFlags = "latency" in replanOverrides;
  if (out.cfg.topK > out.cfg.nExperts)
    throw new Error(`--top-k (${out.cfg.topK}) must be ≤ --experts (${out.cfg.nExperts})`);
  if (out.cfg.windows <= out.cfg.warmupWindows + 1) throw new Error(`--windows must be > ${out.cfg.warmupWindows + 1}`);
  return out;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const log = (m: string): void => console.log(m);
  const cal = await loadCalibration(args.calibration, args.recalibrate, log);
  const costs = costsFrom(cal);
  const cfg = args.cfg;
  // The latency model plans with this machine's measured costs (what the simulated instances
  // charge), unless --rpc-ms / --row-ms-per-mib / --pass-ms-per-mib set them: a pass's fixed part
  // and a row's share from the kernel at 1 and 16 tokens, one 1-token RPC.
  if (!args.costsFromFlags && cfg.replan.latency) {
    const mib = cal.expertLoad.bytes / 2 ** 20;
    const row = Math.max(0, (costs.kernelMs(16) - costs.kernelMs(1)) / 15);
    cfg.replan = {
      ...cfg.replan,
      latency: {
        rpcMs: costs.rpcMs(D_MODEL * 4),
        passMsPerMiB: Math.max(0, costs.kernelMs(1) - row) / mib,
        rowMsPerMiB: row / mib,
        loadMsPerMiB: costs.expertLoadMs / mib,
      },
    };
  }
  const shape = shapeFor(cfg.nExperts, cfg.nInstances, cfg.spare, cfg.nLayers);
  const work = staticWork(cfg, costs, shape);
  // Two bases for offered load: the cluster (all instances busy ρ of the time on average) and
  // the static placement (its busiest instance busy ρ of the time in the worst window).
  const bases = {
    cluster: (cfg.nInstances * 1000) / work.totalMs,
    static: 1000 / work.busiestMs,
  };

  const started = performance.now();
  const results: SimResult[] = [];
  // One step per simulated (basis, load, policy), on stderr and only on a terminal.
  const bar = progressBar("simulate", cfg.bases.length * cfg.loads.length * args.policies.length, {
    format: "simulate [{bar}] {value}/{total} {eta_formatted} left · {basis} ρ={load} · {policy}",
    payload: { basis: cfg.bases[0] ?? "", load: cfg.loads[0] ?? "", policy: args.policies[0] ?? "" },
  });
  for (const basis of cfg.bases) {
    for (const load of cfg.loads) {
      for (const p of args.policies) {
        bar.update(results.length, { basis, load, policy: p });
        results.push(simulate(cfg, costs, p, basis, load, load * bases[basis], shape));
      }
    }
  }
  bar.update(results.length);
  bar.stop();
  const seconds = (performance.now() - started) / 1000;

  const f = (x: number, d = 2): string => (Number.isFinite(x) ? x.toFixed(d) : "–");
  console.log(
    `\ncluster simulator — ${cfg.nInstances} instances, ${cfg.nExperts} experts top-${cfg.topK}, ` +
      `${cfg.nLayers} layers, zipf s=${cfg.s}, drift ${JSON.stringify(cfg.drift)}, burstiness ${cfg.burstiness}`,
  );
  const stream = cfg.requests
    ? `${cfg.requests.active} requests in flight ` +
      `(affinity σ=${cfg.requests.affinity}, ~${cfg.requests.meanWindows} windows each)`
    : "independent tokens";
  console.log(
    `token stream: ${stream}; ` +
      `replica choice: split = by shares; least-loaded = per call in ${cfg.isolates} Worker isolates ` +
      `(own rows in flight + recent rows, half-life ${cfg.recentHalfLifeMs} ms)`,
  );
  const costNote = args.costsFromFlags
    ? ""
    : " (rpcMs, passMsPerMiB, rowMsPerMiB, loadMsPerMiB: this calibration, not the [vars])";
  console.log(
    `edge-moe: replanStep with the ${describeReplanConfig({ ...cfg.replan, windowMs: cfg.windowMs })}${costNote}`,
  );
  console.log(
    `costs (measured ${cal.date}): kernel ${f(costs.kernelMs(1), 3)} ms @1 token, ` +
      `${f(costs.kernelMs(16), 3)} ms @16; RPC ${f(costs.rpcMs(D_MODEL * 4), 3)} ms @1 token; ` +
      `expert load ${f(costs.expertLoadMs)} ms`,
  );
  console.log(
    `offered load ρ is relative to a capacity in tokens/s:\n` +
      `  cluster: ${f(bases.cluster * cfg.tokensPerStep, 0)} = ${cfg.nInstances} instances ÷ ` +
      `${f(work.totalMs, 3)} busy-ms per token (static placement's work, spread evenly)\n` +
      `  static:  ${f(bases.static * cfg.tokensPerStep, 0)} = 1 ÷ ${f(work.busiestMs, 3)} busy-ms per token ` +
      "on the static placement's busiest instance (worst window)\n" +
      `${cfg.windows} windows of ${cfg.windowMs} ms, first ${cfg.warmupWindows} not measured\n`,
  );
  console.log(
    "basis    load  policy                per-layer p50 ms      p99 ms   tokens/s   " +
      "saturates at tok/s   util mean/max   balance p50   copies/replan            backlog",
  );
  for (const r of results) {
    const backlog = r.saturated ? `${f(r.backlogMs / 1000, 1)} s SATURATED` : `${f(r.backlogMs, 1)} ms`;
    const cells = [
      r.basis.padEnd(9),
      f(r.load, 2).padEnd(6),
      r.policy.padEnd(21),
      f(r.latencyP50Ms, 3).padStart(17),
      f(r.latencyP99Ms, 3).padStart(12),
      f(r.throughputTokensPerSec, 0).padStart(11),
      f(r.saturationTokensPerSec, 0).padStart(21),
      `${f(r.utilMean)}/${f(r.utilMaxWindow)}`.padStart(16),
      f(r.balanceP50, 3).padStart(14),
      f(r.copiesPerReplan, 1).padStart(16),
      backlog.padStart(19),
    ];
    console.log(cells.join(""));
  }
  const summary: Record<string, string> = {};
  for (const basis of cfg.bases)
    for (const load of cfg.loads) {
      const at = (p: SimPolicy) => results.find((r) => r.basis === basis && r.load === load && r.policy === p);
      const edge = at("edge-moe");
      if (!edge) continue;
      for (const other of [
        "edge-moe-today",
        "static",
        "eplb",
        "eplb-free-copies",
        "eplb-ll",
        "eplb-ll-free-copies",
        "edge-moe-split",
      ] as const) {
        const o = at(other);
        if (!o) continue;
        summary[`p99 per-layer latency, ${basis} load ${load}: edge-moe vs ${other}`] =
          `${f(edge.latencyP99Ms, 2)} vs ${f(o.latencyP99Ms, 2)} ms: ` +
          `${f(100 * (1 - edge.latencyP99Ms / o.latencyP99Ms), 1)}% lower${o.saturated ? ` (${other} saturated)` : ""}`;
      }
      // The issue's targets at 80% offered load: p99 ≥ 30% below static, ≥ 10% below EPLB every window.
      if (load === 0.8) {
        for (const [other, want] of [
          ["static", 30],
          ["eplb", 10],
          ["eplb-free-copies", 10],
          ["eplb-ll-free-copies", 10],
        ] as const) {
          const o = at(other);
          if (!o) continue;
          const lower = 100 * (1 - edge.latencyP99Ms / o.latencyP99Ms);
          // The issue's targets are against static and EPLB as deployed; the free-copies rows are stricter checks.
          const kind = other === "static" || other === "eplb" ? "target" : "check (not the issue's target)";
          summary[`${kind}, ${basis} load 0.8: p99 ≥ ${want}% below ${other}`] =
            `${lower >= want ? "met" : "MISSED"} (${f(lower, 1)}%)`;
        }
      }
    }
  console.log(`\nsummary (${seconds.toFixed(1)} s)`);
  for (const [k, v] of Object.entries(summary)) console.log(`  ${k}: ${v}`);

  mkdirSync(dirname(args.out), { recursive: true });
  writeFileSync(
    args.out,
    `${JSON.stringify(
      {
        benchmark: "simulate",
        machine: machineInfo(),
        calibration: { file: args.calibration, date: cal.date, machine: cal.machine },
        config: cfg,
        offeredLoad: {
          cluster:
            "ρ × instances ÷ (expected busy ms per token under the static placement): " +
            "all instances busy ρ of the time if the work were spread evenly",
          static:
            "ρ ÷ (expected busy ms per token on the static placement's busiest instance, worst window): " +
            "that instance busy ρ of the time",
        },
        capacityTokensPerSec: { cluster: bases.cluster * cfg.tokensPerStep, static: bases.static * cfg.tokensPerStep },
        results,
        summary,
        seconds,
      },
      null,
      2,
    )}\n`,
  );
  console.log(`\nwrote ${args.out}`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  main().catch((err: unknown) => {
    console.error(`simulate: ${(err as Error).message}`);
    process.exit(1);
  });
}
