/**
 * @module Expert-load traces for the placement benchmark and the cluster simulator: deterministic
 * Zipf loads, drifting workloads whose hot set moves over time (per layer: gradual rotation,
 * ramped or sudden swaps, or both), request-correlated counts (each request prefers its own
 * experts for as long as it lasts), and a loader for user load files.
 *
 * A trace is `[window][layer][expert]` token counts: how many (token, expert) assignments one MoE
 * layer routed to each expert during one re-plan window.
 */
import { createRng } from "../../src/serving/sampling";

/** `[window][layer][expert]` token counts. */
export type LoadWindows = number[][][];

export interface LoadTrace {
  /** Where the trace came from (a scenario name or a file path), for reports. */
  source: string;
  nLayers: number;
  nExperts: number;
  windows: LoadWindows;
  /** [window][layer] layer calls, when known (the simulator counts them; the latency model reads them). */
  calls?: number[][];
}

// ── deterministic randomness ──────────────────────────────────────────────────────────────────

/** The project's seeded PRNG (mulberry32, src/serving/sampling.ts); plenty for workloads. */
export const makeRng = createRng;

export function gaussian(rng: () => number): number {
  // Box–Muller; 1 - u keeps log's argument in (0, 1].
  const u = 1 - rng();
  const v = rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** Poisson(mean): Knuth's product method for small means, a rounded normal beyond 64. */
export function poisson(mean: number, rng: () => number): number {
  if (mean <= 0) return 0;
  if (mean > 64) return Math.max(0, Math.round(mean + Math.sqrt(mean) * gaussian(rng)));
  const limit = Math.exp(-mean);
  let k = 0;
  let p = rng();
  while (p > limit) {
    k++;
    p *= rng();
  }
  return k;
}

export function shuffled(n: number, rng: () => number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

// ── Zipf popularity ───────────────────────────────────────────────────────────────────────────

/** Zipf weight of a (possibly fractional) 0-based rank: (1 + rank)^-s. */
export function zipfWeight(rank: number, s: number): number {
  return (1 + rank) ** -s;
}

/** Probabilities over experts: expert `order[r]` has rank r. Sums to 1. */
export function zipfProbabilities(nExperts: number, s: number, order: number[]): number[] {
  const p = new Array<number>(nExperts).fill(0);
  let sum = 0;
  for (let r = 0; r < nExperts; r++) {
    const w = zipfWeight(r, s);
    p[order[r]] = w;
    sum += w;
  }
  return p.map((w) => w / sum);
}

// ── synthetic traces ──────────────────────────────────────────────────────────────────────────

/**
 * How the hot set moves.
 * - `none`: fixed popularity (only sampling noise).
 * - `rotate`: experts sit on a ring in random order; popularity is Zipf in the ring distance to a
 *   hot spot that moves `speed` experts per window, so experts ahead of it warm up and those behind
 *   cool down, smoothly. A new expert becomes the hottest every 1/speed windows.
 * - `swap`: every window, with probability `rate`, one of the top `hotSet` experts trades its
 *   popularity with a random other expert, linearly over `rampWindows` windows (a topic shift).
 * - `mixed`: `rotate` plus sudden swaps: every window, with probability `rate`, one of the
 *   `hotSet` currently hottest experts trades places on the ring with a random other expert, at
 *   once (a cold expert becomes hot between two windows: no forecast can see it coming).
 * Every layer has its own order, hot spot and swaps.
 */
export type Drift =
  | { kind: "none" }
  | { kind: "rotate"; speed: number }
  | { kind: "swap"; rate: number; hotSet: number; rampWindows: number }
  | { kind: "mixed"; speed: number; rate: number; hotSet: number };

/**
 * Requests behind the counts. Real windows are not independent draws from one popularity: each
 * request (a conversation, a document, a code file) prefers its own experts for as long as it
 * runs, so a window's counts are a mixture over the requests in flight, and consecutive windows
 * share most of them.
 */
export interface RequestMix {
  /** Requests in flight at any time; each routes an equal part of a window's assignments. */
  active: number;
  /** Mean windows a request lasts (geometric); one that ends is replaced by a new one. */
  meanWindows: number;
  /**
   * σ of each request's log-normal tilt of every expert's popularity (per layer): 0 routes like
   * the population; 1 makes a request's favourite experts several times likelier than average.
   */
  affinity: number;
}

export interface WorkloadOptions {
  nExperts: number;
  nLayers?: number;
  /** Zipf exponent. */
  s: number;
  nWindows: number;
  /** (token, expert) assignments per layer per window: tokens × top-k. */
  assignmentsPerWindow: number;
  drift: Drift;
  /**
   * σ of a per-window, per-expert log-normal factor on top of Poisson sampling: real windows are
   * burstier than independent draws (one long request heats its experts for a while).
   */
  burstiness?: number;
  /** Request-correlated counts (see `RequestMix`); absent: independent Poisson draws. */
  requests?: RequestMix;
  seed: number;
}

/** Popularity of every expert at every window, `[window][layer][expert]`, each row summing to 1. */
export function popularityTrace(opts: WorkloadOptions): number[][][] {
  const { nExperts, s, nWindows, drift, seed } = opts;
  const nLayers = opts.nLayers ?? 1;
  const out: number[][][] = Array.from({ length: nWindows }, () => []);
  for (let layer = 0; layer < nLayers; layer++) {
    const rng = makeRng(seed * 7919 + layer * 104729 + 1);
    const order = shuffled(nExperts, rng); // order[rank] = expert
    if (drift.kind === "none") {
      const p = zipfProbabilities(nExperts, s, order);
      for (let w = 0; w < nWindows; w++) out[w].push(p.slice());
    } else if (drift.kind === "rotate" || drift.kind === "mixed") {
      // Ring position of each expert; the hot spot starts on a random expert.
      const ringPos = new Array<number>(nExperts);
      order.forEach((e, r) => (ringPos[e] = r));
      const start = rng() * nExperts;
      for (let w = 0; w < nWindows; w++) {
        const centre = start + drift.speed * w;
        const p = new Array<number>(nExperts);
        let sum = 0;
        for (let e = 0; e < nExperts; e++) {
          // Signed ring offset in [-n/2, n/2); rank interleaves both sides: 0, 1, 2, … ≈ 2·|d|.
          let d = (((ringPos[e] - centre) % nExperts) + nExperts) % nExperts;
          if (d >= nExperts / 2) d -= nExperts;
          const rank = d >= 0 ? 2 * d : -2 * d - 1;
          p[e] = zipfWeight(Math.max(0, rank), s);
          sum += p[e];
        }
        out[w].push(p.map((x) => x / sum));
        if (drift.kind === "mixed" && rng() < drift.rate) {
          // Sudden swap for the next window: a hot expert and a random one trade ring places.
          const hot = p.map((_, e) => e).sort((a, b) => p[b] - p[a] || a - b);
          const a = hot[Math.floor(rng() * Math.min(drift.hotSet, nExperts))];
          const b = Math.floor(rng() * nExperts);
          [ringPos[a], ringPos[b]] = [ringPos[b], ringPos[a]];
        }
      }
    } else {
      const rankOf = new Array<number>(nExperts);
      order.forEach((e, r) => (rankOf[e] = r));
      // Active ramps: expert a moves from rank ra to rb (and b the other way) over rampWindows.
      const ramps: { a: number; b: number; ra: number; rb: number; start: number }[] = [];
      for (let w = 0; w < nWindows; w++) {
        if (rng() < drift.rate) {
          const a = order[Math.floor(rng() * Math.min(drift.hotSet, nExperts))];
          const b = Math.floor(rng() * nExperts);
          const busy = ramps.some((r) => r.a === a || r.b === a || r.a === b || r.b === b);
          if (a !== b && !busy) ramps.push({ a, b, ra: rankOf[a], rb: rankOf[b], start: w });
        }
        const weight = new Array<number>(nExperts);
        for (let e = 0; e < nExperts; e++) weight[e] = zipfWeight(rankOf[e], s);
        for (let i = ramps.length - 1; i >= 0; i--) {
          const r = ramps[i];
          const f = Math.min(1, (w - r.start + 1) / Math.max(1, drift.rampWindows));
          // Interpolate the weights (not ranks) so both experts' loads change linearly.
          const wa = zipfWeight(r.ra, s);
          const wb = zipfWeight(r.rb, s);
          weight[r.a] = wa + (wb - wa) * f;
          weight[r.b] = wb + (wa - wb) * f;
          if (f >= 1) {
            rankOf[r.a] = r.rb;
            rankOf[r.b] = r.ra;
            order[r.rb] = r.a;
            order[r.ra] = r.b;
            ramps.splice(i, 1);
          }
        }
        const sum = weight.reduce((x, y) => x + y, 0);
        out[w].push(weight.map((x) => x / sum));
      }
    }
  }
  return out;
}

/**
 * Token counts per window: Poisson draws around each expert's (bursty) expected load or, with
 * `requests`, a sum over the requests in flight of Poisson draws around each request's own
 * (tilted) popularity.
 */
export function syntheticTrace(opts: WorkloadOptions, source?: string): LoadTrace {
  const popularity = popularityTrace(opts);
  const rng = makeRng(opts.seed * 31 + 17);
  const burst = opts.burstiness ?? 0;
  const factor = (): number => (burst > 0 ? Math.exp(burst * gaussian(rng) - (burst * burst) / 2) : 1);
  const windows = opts.requests
    ? requestCounts(opts, popularity, opts.requests, rng, factor)
    : popularity.map((layers) =>
        layers.map((p) => p.map((pe) => poisson(pe * opts.assignmentsPerWindow * factor(), rng))),
      );
  return {
    source: source ?? describeWorkload(opts),
    nLayers: opts.nLayers ?? 1,
    nExperts: opts.nExperts,
    windows,
  };
}

function requestCounts(
  opts: WorkloadOptions,
  popularity: number[][][],
  mix: RequestMix,
  rng: () => number,
  factor: () => number,
): LoadWindows {
  const { nExperts } = opts;
  const nLayers = opts.nLayers ?? 1;
  if (!(mix.active >= 1) || !Number.isInteger(mix.active))
    throw new RangeError(`requests.active must be an integer ≥ 1, got ${mix.active}`);
  if (!(mix.meanWindows >= 1)) throw new RangeError(`requests.meanWindows must be ≥ 1, got ${mix.meanWindows}`);
  // tilt[request][layer][expert]: exp(σ·g) per request; a request that ends gets fresh ones.
  const tilt = (): Float64Array[] =>
    Array.from({ length: nLayers }, () =>
      Float64Array.from({ length: nExperts }, () => Math.exp(mix.affinity * gaussian(rng))),
    );
  const requests = Array.from({ length: mix.active }, tilt);
  const perRequest = opts.assignmentsPerWindow / mix.active;
  const q = new Float64Array(nExperts);
  return popularity.map((layers) => {
    for (let r = 0; r < requests.length; r++) if (rng() < 1 / mix.meanWindows) requests[r] = tilt();
    return layers.map((p, l) => {
      const counts = new Array<number>(nExperts).fill(0);
      const f = Float64Array.from(p, () => factor());
      for (const req of requests) {
        let z = 0;
        for (let e = 0; e < nExperts; e++) z += q[e] = p[e] * f[e] * req[l][e];
        for (let e = 0; e < nExperts; e++) counts[e] += poisson((perRequest * q[e]) / z, rng);
      }
      return counts;
    });
  });
}

export function describeWorkload(opts: WorkloadOptions): string {
  const d = opts.drift;
  const drift =
    d.kind === "none"
      ? "static"
      : d.kind === "rotate"
        ? `rotate(${d.speed}/window)`
        : d.kind === "swap"
          ? `swap(p=${d.rate}, ramp=${d.rampWindows})`
          : `rotate(${d.speed}/window) + sudden swaps(p=${d.rate})`;
  const req = opts.requests
    ? `, ${opts.requests.active} requests (σ=${opts.requests.affinity}, ~${opts.requests.meanWindows} windows each)`
    : "";
  return `zipf(s=${opts.s}) ${opts.nExperts} experts, ${drift}${req}`;
}

// ── user load files ───────────────────────────────────────────────────────────────────────────

export class LoadFileError extends Error {
  override name = "LoadFileError";
}

/**
 * Parses a load file: a JSON array of windows, each either an array of per-expert token counts
 * (`[window][expert]`, one layer) or an array of layers (`[window][layer][expert]`). Every window
 * must have the same shape; counts must be finite numbers ≥ 0. At least two windows are needed,
 * since plans are scored on the window after the one they were made from.
 */
export function parseLoadFile(text: string, source = "load file"): LoadTrace {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new LoadFileError(`${source}: not valid JSON (${(err as Error).message})`);
  }
  return validateLoadWindows(data, source);
}

export function validateLoadWindows(data: unknown, source = "loads"): LoadTrace {
  const fail = (msg: string): never => {
    throw new LoadFileError(`${source}: ${msg}`);
  };
  if (!Array.isArray(data)) {
    fail(`expected a JSON array of windows ([window][expert] or [window][layer][expert]), got ${typeName(data)}`);
  }
  const arr = data as unknown[];
  if (arr.length < 2) fail(`need at least 2 windows (plans are scored on the next window), got ${arr.length}`);
  if (!Array.isArray(arr[0])) fail(`loads[0] must be an array, got ${typeName(arr[0])}`);
  const first = arr[0] as unknown[];
  if (first.length === 0) fail(`loads[0] is empty; each window needs one count per expert`);
  const threeD = Array.isArray(first[0]);
  const windows: LoadWindows = [];
  let nLayers = -1;
  let nExperts = -1;
  arr.forEach((win, w) => {
    if (!Array.isArray(win)) fail(`loads[${w}] must be an array, got ${typeName(win)}`);
    const layers = (threeD ? win : [win]) as unknown[];
    if (threeD && layers.length === 0) fail(`loads[${w}] has no layers`);
    layers.forEach((row, l) => {
      if (!Array.isArray(row)) {
        const at = threeD ? `loads[${w}][${l}]` : `loads[${w}]`;
        fail(
          `${at} must be an array of per-expert counts, got ${typeName(row)} ` +
            "(mixing [window][expert] and [window][layer][expert]?)",
        );
      }
    });
    if (nLayers < 0) nLayers = layers.length;
    else if (layers.length !== nLayers) {
      fail(
        `loads[${w}] has ${layers.length} layers, but loads[0] has ${nLayers}; every window must have the same shape`,
      );
    }
    const parsed: number[][] = [];
    layers.forEach((row, l) => {
      const at = threeD ? `loads[${w}][${l}]` : `loads[${w}]`;
      const counts = row as unknown[];
      if (nExperts < 0) nExperts = counts.length;
      if (counts.length === 0) fail(`${at} is empty; each window needs one count per expert`);
      if (counts.length !== nExperts) {
        fail(
          `${at} has ${counts.length} experts, but the first window has ${nExperts}; ` +
            "every window must have the same shape",
        );
      }
      parsed.push(
        counts.map((c, e) => {
          if (typeof c !== "number" || !Number.isFinite(c) || c < 0) {
            fail(`${at}[${e}] must be a finite number ≥ 0, got ${JSON.stringify(c)}`);
          }
          return c as number;
        }),
      );
    });
    windows.push(parsed);
  });
  return { source, nLayers, nExperts, windows };
}

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}
