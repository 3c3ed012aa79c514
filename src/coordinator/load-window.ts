/**
 * @module Smoothed load statistics for the planner: an exponential moving average (EMA) of token
 * counts per (layer, expert) and per instance, folded in once per re-plan window. Pure: every
 * function returns a new state. States serialise to sparse rows for the Coordinator's SQLite.
 *
 * Values are per-window rates (tokens per window), so a late alarm that folds two windows' counts
 * at once (`windows: 2`) neither inflates the rates nor decays too little. Idle experts decay
 * geometrically and are dropped from the rows once below `dropBelow`.
 *
 * The planner's input is `forecastLoads`: the rate plus a smoothed trend (Holt's linear method),
 * with rises taken faster than falls (`riseAlpha`), because under-provisioning a warming expert
 * costs a hot instance next window while over-provisioning a cooling one costs nothing visible.
 */

export interface LoadWindowConfig {
  /** EMA weight of the newest window, in (0, 1]. Default: from `halfLifeWindows`. */
  alpha?: number;
  /** Windows after which an old window's weight has halved. Default 1 (α = 0.5), as benchmarked. */
  halfLifeWindows?: number;
  /** Rates below this are stored as 0 and omitted from rows. Default 1e-3 tokens/window. */
  dropBelow?: number;
  /** EMA weight of the newest squared forecast error in `variance`. Default 0.2. */
  varianceAlpha?: number;
  /**
   * EMA weight used when a window's count is ABOVE the current rate ("fast attack, slow release").
   * An under-estimated hot expert overloads its instances next window, an over-estimated one only
   * leaves some room unused, so rises are followed faster than falls. Default 1: a rise is taken
   * at once. Set it to `alpha` for a symmetric EMA.
   */
  riseAlpha?: number;
  /**
   * EMA weight of the per-window change of the rate (Holt's linear trend); the forecast is
   * rate + trend. 0 disables it. Default 0.3.
   */
  trendAlpha?: number;
}

export interface LoadWindowState {
  nLayers: number;
  nExperts: number;
  alpha: number;
  riseAlpha: number;
  trendAlpha: number;
  varianceAlpha: number;
  dropBelow: number;
  /** Windows folded so far (fractional when folds spanned several windows). */
  windows: number;
  /** [layer][expert] smoothed tokens per window. */
  expert: number[][];
  /**
   * [layer][expert] EMA of the squared error of the smoothed rate as a forecast of the next
   * window (tokens²): how far next window may land from `expert`. The planner spreads uncertain
   * experts over more replicas. Starts at the first count (Poisson: variance = mean).
   */
  variance: number[][];
  /** [layer][expert] smoothed change of the rate per window (tokens per window per window). */
  trend: number[][];
  /** [instance] smoothed tokens per window (all layers); grows as instances appear. */
  instance: number[];
  /**
   * [layer] smoothed layer calls per window (the latency model's call rate); empty until a
   * report carried call counts.
   */
  calls: number[];
}

/** α such that a window's weight halves every `halfLife` windows: 1 − 2^(−1/halfLife). */
export function alphaFromHalfLife(halfLifeWindows: number): number {
  if (!(halfLifeWindows > 0) || !Number.isFinite(halfLifeWindows)) {
    throw new RangeError(`halfLifeWindows must be a positive number, got ${halfLifeWindows}`);
  }
  return 1 - 2 ** (-1 / halfLifeWindows);
}

export function createLoadWindow(nLayers: number, nExperts: number, config: LoadWindowConfig = {}): LoadWindowState {
  if (!Number.isInteger(nLayers) || nLayers < 1) throw new RangeError(`nLayers must be an integer ≥ 1, got ${nLayers}`);
  if (!Number.isInteger(nExperts) || nExperts < 1)
    throw new RangeError(`nExperts must be an integer ≥ 1, got ${nExperts}`);
  const alpha = config.alpha ?? alphaFromHalfLife(config.halfLifeWindows ?? 1);
  if (!(alpha > 0 && alpha <= 1)) throw new RangeError(`alpha must be in (0, 1], got ${alpha}`);
  const dropBelow = config.dropBelow ?? 1e-3;
  if (!(dropBelow >= 0)) throw new RangeError(`dropBelow must be ≥ 0, got ${dropBelow}`);
  const varianceAlpha = config.varianceAlpha ?? 0.2;
  const riseAlpha = config.riseAlpha ?? 1;
  if (!(riseAlpha > 0 && riseAlpha <= 1)) throw new RangeError(`riseAlpha must be in (0, 1], got ${riseAlpha}`);
  const trendAlpha = config.trendAlpha ?? 0.3;
  if (!(trendAlpha >= 0 && trendAlpha <= 1)) throw new RangeError(`trendAlpha must be in [0, 1], got ${trendAlpha}`);
  if (!(varianceAlpha > 0 && varianceAlpha <= 1))
    throw new RangeError(`varianceAlpha must be in (0, 1], got ${varianceAlpha}`);
  return {
    nLayers,
    nExperts,
    alpha,
    riseAlpha,
    trendAlpha,
    varianceAlpha,
    dropBelow,
    windows: 0,
    expert: Array.from({ length: nLayers }, () => new Array<number>(nExperts).fill(0)),
    variance: Array.from({ length: nLayers }, () => new Array<number>(nExperts).fill(0)),
    trend: Array.from({ length: nLayers }, () => new Array<number>(nExperts).fill(0)),
    instance: [],
    calls: [],
  };
}

export interface FoldInput {
  /** [layer][expert] tokens counted during the elapsed window(s). */
  expertCounts: readonly (readonly number[])[];
  /** [instance] tokens served during the elapsed window(s); optional. */
  instanceCounts?: readonly number[];
  /** How many windows the counts span (a late alarm spans more than one). Default 1. */
  windows?: number;
  /** [layer] layer calls counted during the elapsed window(s); optional. */
  calls?: readonly number[];
}

/**
 * Folds one window's counts in: rate ← (1−α)^w · rate + (1 − (1−α)^w) · counts / w. The first fold
 * takes the counts as they are, so early plans are not biased towards zero.
 */
export function foldWindow(state: LoadWindowState, input: FoldInput): LoadWindowState {
  const w = input.windows ?? 1;
  if (!(w > 0) || !Number.isFinite(w)) throw new RangeError(`windows must be a positive number, got ${w}`);
  const counts = input.expertCounts;
  if (counts.length !== state.nLayers) {
    throw new RangeError(`expertCounts has ${counts.length} layers, expected ${state.nLayers}`);
  }
  const keepFall = state.windows === 0 ? 0 : (1 - state.alpha) ** w;
  const keepRise = state.windows === 0 ? 0 : (1 - state.riseAlpha) ** w;
  const mix = (old: number, count: number): number => {
    if (!(count >= 0) || !Number.isFinite(count))
      throw new RangeError(`token counts must be finite and ≥ 0, got ${count}`);
    const keep = count / w > old ? keepRise : keepFall;
    const v = keep * old + (1 - keep) * (count / w);
    return v < state.dropBelow ? 0 : v;
  };
  const first = state.windows === 0;
  const vKeep = first ? 0 : (1 - state.varianceAlpha) ** w;
  const variance: number[][] = [];
  const expert = state.expert.map((row, l) => {
    if (counts[l].length !== state.nExperts) {
      throw new RangeError(`expertCounts[${l}] has ${counts[l].length} experts, expected ${state.nExperts}`);
    }
    variance.push(
      row.map((old, e) => {
        const forecast = Math.max(0, old + state.trend[l][e] * w);
        const err = first ? counts[l][e] / w : (counts[l][e] / w - forecast) ** 2;
        const v = vKeep * state.variance[l][e] + (1 - vKeep) * err;
        return v < state.dropBelow ? 0 : v;
      }),
    );
    // Holt: the prior for this window is last rate + trend, so a steady ramp is tracked without lag.
    return row.map((old, e) => mix(Math.max(0, old + state.trend[l][e] * w), counts[l][e]));
  });
  const b = first ? 0 : 1 - (1 - state.trendAlpha) ** w;
  const trend = state.trend.map((row, l) =>
    row.map((old, e) => b * ((expert[l][e] - state.expert[l][e]) / w) + (1 - b) * old),
  );
  const ic = input.instanceCounts ?? [];
  const nInst = Math.max(state.instance.length, ic.length);
  const instance = Array.from({ length: nInst }, (_, i) => mix(state.instance[i] ?? 0, ic[i] ?? 0));
  const cc = input.calls;
  const calls =
    cc && cc.length === state.nLayers
      ? cc.map((c, l) => mix(state.calls[l] ?? 0, c))
      : state.calls.map((c) => mix(c, 0));
  return { ...state, windows: state.windows + w, expert, variance, trend, instance, calls };
}

/**
 * Decays every rate as if `windows` windows passed with no traffic (e.g. the Coordinator was idle
 * and no reports came in).
 */
export function decayIdle(state: LoadWindowState, windows: number): LoadWindowState {
  if (!(windows >= 0) || !Number.isFinite(windows))
    throw new RangeError(`windows must be a finite number ≥ 0, got ${windows}`);
  const keep = (1 - state.alpha) ** windows;
  const decay = (v: number): number => (v * keep < state.dropBelow ? 0 : v * keep);
  return {
    ...state,
    windows: state.windows + windows,
    expert: state.expert.map((row) => row.map(decay)),
    variance: state.variance.map((row) => row.map(decay)),
    trend: state.trend.map((row) => row.map((v) => v * keep)),
    instance: state.instance.map(decay),
    calls: state.calls.map(decay),
  };
}

/** Smoothed tokens per window, [layer][expert] (a copy). */
export function smoothedLoads(state: LoadWindowState): number[][] {
  return state.expert.map((row) => row.slice());
}

/** The planner's `loads`: next window's forecast, max(0, rate + trend), [layer][expert]. */
export function forecastLoads(state: LoadWindowState): number[][] {
  return state.expert.map((row, l) => row.map((rate, e) => Math.max(0, rate + state.trend[l][e])));
}

/** The planner's `loadVariance`: [layer][expert] tokens² (a copy). */
export function loadVariance(state: LoadWindowState): number[][] {
  return state.variance.map((row) => row.slice());
}

// ── rows for SQLite ───────────────────────────────────────────────────────────────────────────

export interface LoadWindowMeta {
  nLayers: number;
  nExperts: number;
  alpha: number;
  riseAlpha: number;
  trendAlpha: number;
  varianceAlpha: number;
  dropBelow: number;
  windows: number;
  /** [layer] smoothed layer calls per window (absent in rows written before the latency model). */
  calls?: number[];
}
export interface ExpertLoadRow {
  layer: number;
  expert: number;
  rate: number;
  variance: number;
  trend: number;
}
export interface InstanceLoadRow {
  instance: number;
  rate: number;
}
export interface LoadWindowRows {
  meta: LoadWindowMeta;
  /** Only non-zero rates: idle experts cost no rows. */
  experts: ExpertLoadRow[];
  instances: InstanceLoadRow[];
}

export function toRows(state: LoadWindowState): LoadWindowRows {
  const experts: ExpertLoadRow[] = [];
  state.expert.forEach((row, layer) =>
    row.forEach((rate, expert) => {
      const variance = state.variance[layer][expert];
      const trend = state.trend[layer][expert];
      if (rate > 0 || variance > 0 || trend !== 0) experts.push({ layer, expert, rate, variance, trend });
    }),
  );
  const instances: InstanceLoadRow[] = [];
  state.instance.forEach((rate, instance) => {
    if (rate > 0) instances.push({ instance, rate });
  });
  const { nLayers, nExperts, alpha, riseAlpha, trendAlpha, varianceAlpha, dropBelow, windows } = state;
  return {
    meta: { nLayers, nExperts, alpha, riseAlpha, trendAlpha, varianceAlpha, dropBelow, windows, calls: state.calls },
    experts,
    instances,
  };
}

export function fromRows(rows: LoadWindowRows): LoadWindowState {
  const { meta } = rows;
  const state = createLoadWindow(meta.nLayers, meta.nExperts, {
    alpha: meta.alpha,
    riseAlpha: meta.riseAlpha,
    trendAlpha: meta.trendAlpha,
    varianceAlpha: meta.varianceAlpha,
    dropBelow: meta.dropBelow,
  });
  for (const r of rows.experts) {
    if (r.layer < 0 || r.layer >= meta.nLayers || r.expert < 0 || r.expert >= meta.nExperts) {
      throw new RangeError(
        `load row (layer ${r.layer}, expert ${r.expert}) is outside ${meta.nLayers} layers × ${meta.nExperts} experts`,
      );
    }
    if (!(r.rate >= 0) || !(r.variance >= 0) || !Number.isFinite(r.trend)) {
      throw new RangeError(
        `load row (layer ${r.layer}, expert ${r.expert}) needs rate ≥ 0, variance ≥ 0 and a finite trend`,
      );
    }
    state.expert[r.layer][r.expert] = r.rate;
    state.variance[r.layer][r.expert] = r.variance;
    state.trend[r.layer][r.expert] = r.trend;
  }
  for (const r of rows.instances) {
    if (!Number.isInteger(r.instance) || r.instance < 0)
      throw new RangeError(`instance load row has a bad instance id ${r.instance}`);
    while (state.instance.length <= r.instance) state.instance.push(0);
    state.instance[r.instance] = r.rate;
  }
  const calls = Array.isArray(meta.calls) && meta.calls.length === meta.nLayers ? meta.calls.map(Number) : [];
  if (calls.some((c) => !(c >= 0) || !Number.isFinite(c)))
    throw new RangeError("load window calls must be finite and ≥ 0");
  return { ...state, windows: meta.windows, calls };
}
