/**
 * @module Rotary-embedding frequencies, plain and YaRN (DeepSeek-V2/V3 semantics), as pure float64
 * math. YaRN (Peng et al. 2023, arXiv:2309.00071) interpolates low-frequency pairs by `factor`,
 * keeps high-frequency pairs, and ramps linearly between, over a correction range that comes from
 * `beta_fast` / `beta_slow` rotations within `original_max_position_embeddings` positions. It also
 * rescales magnitudes: DeepSeek's code multiplies cos/sin by get_mscale(f, mscale) /
 * get_mscale(f, mscale_all_dim) and the softmax scale by get_mscale(f, mscale_all_dim)² — for V2 as
 * for V3 (DeepSeek's hub modeling code and inference/model.py; some transformers releases drop the
 * squared factor for V2, which changes the logits).
 *
 * The functions here are the only place this math lives: the config parser folds
 * `softmaxScaleMul` into `spec.attention.scale`, and the attention tables read `invFreq` and
 * `cosSinScale` from `ropeFrequencies`.
 */

/** YaRN parameters as DeepSeek's configs write them (`rope_scaling` with type "yarn"). */
export interface YarnSpec {
  /** Context extension factor (`factor`). */
  readonly factor: number;
  /** `original_max_position_embeddings`: the context the model was pre-trained with. */
  readonly originalMaxPositions: number;
  /** Rotations at which a pair is still extrapolated (kept as is); default 32. */
  readonly betaFast: number;
  /** Rotations below which a pair is fully interpolated (divided by factor); default 1. */
  readonly betaSlow: number;
  /** `mscale`: magnitude factor of cos/sin (numerator); default 1. */
  readonly mscale: number;
  /** `mscale_all_dim`: applies to all dimensions; default 0 (= no softmax scale change). */
  readonly mscaleAllDim: number;
}

/** What `ropeFrequencies` needs of a RopeSpec (src/model/config.ts). */
export interface RopeParams {
  readonly theta: number;
  readonly rotDim: number;
  readonly yarn: YarnSpec | null;
}

export interface RopeFrequencies {
  /** [rotDim / 2] angle per position of pair i, in float64. */
  readonly invFreq: Float64Array;
  /** Multiplier on cos and sin (1 without YaRN). */
  readonly cosSinScale: number;
  /** Multiplier on the softmax scale (1 without YaRN); already folded into `attention.scale`. */
  readonly softmaxScaleMul: number;
}

/** Plain RoPE: inv_freq[i] = θ^(−2i/rotDim). */
export function plainInvFreq(theta: number, rotDim: number): Float64Array {
  const out = new Float64Array(rotDim / 2);
  for (let i = 0; i < out.length; i++) out[i] = 1 / theta ** ((2 * i) / rotDim);
  return out;
}

/** YaRN's magnitude correction 0.1·m·ln(factor) + 1 (1 when factor ≤ 1). */
export function yarnGetMscale(factor: number, m: number): number {
  return factor <= 1 ? 1 : 0.1 * m * Math.log(factor) + 1;
}

/**
 * The pair index whose wavelength makes `rotations` turns over `maxPositions` positions:
 * rotDim · ln(maxPositions / (2π · rotations)) / (2 ln θ).
 */
function correctionDim(rotations: number, rotDim: number, theta: number, maxPositions: number): number {
  return (rotDim * Math.log(maxPositions / (rotations * 2 * Math.PI))) / (2 * Math.log(theta));
}

/** [low, high] pair indices of the ramp, floored / ceiled and clamped to [0, rotDim − 1]. */
export function yarnCorrectionRange(yarn: YarnSpec, theta: number, rotDim: number): [number, number] {
  const low = Math.floor(correctionDim(yarn.betaFast, rotDim, theta, yarn.originalMaxPositions));
  const high = Math.ceil(correctionDim(yarn.betaSlow, rotDim, theta, yarn.originalMaxPositions));
  return [Math.max(low, 0), Math.min(high, rotDim - 1)];
}

/** YaRN inv_freq: pair i blends θ-frequency (extrapolated) and θ-frequency / factor (interpolated). */
export function yarnInvFreq(theta: number, rotDim: number, yarn: YarnSpec): Float64Array {
  const [low, lowHigh] = yarnCorrectionRange(yarn, theta, rotDim);
  // A zero-width range would divide by zero; DeepSeek widens it by 0.001 as well.
  const high = low === lowHigh ? lowHigh + 0.001 : lowHigh;
  const base = plainInvFreq(theta, rotDim);
  const out = new Float64Array(base.length);
  for (let i = 0; i < base.length; i++) {
    const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
    // ramp 0 → keep the original frequency (high-frequency pairs); ramp 1 → divide by factor.
    const keep = 1 - ramp;
    out[i] = (base[i] / yarn.factor) * (1 - keep) + base[i] * keep;
  }
  return out;
}

/** Softmax-scale multiplier: get_mscale(factor, mscale_all_dim)². */
export function yarnAttentionScale(yarn: YarnSpec): number {
  const m = yarnGetMscale(yarn.factor, yarn.mscaleAllDim);
  return m * m;
}

/** cos/sin magnitude: get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim). */
export function yarnCosSinScale(yarn: YarnSpec): number {
  return yarnGetMscale(yarn.factor, yarn.mscale) / yarnGetMscale(yarn.factor, yarn.mscaleAllDim);
}

/** Everything the attention path needs for a RoPE spec, with or without YaRN. */
export function ropeFrequencies(rope: RopeParams): RopeFrequencies {
  if (rope.yarn === null) return { invFreq: plainInvFreq(rope.theta, rope.rotDim), cosSinScale: 1, softmaxScaleMul: 1 };
  return {
    invFreq: yarnInvFreq(rope.theta, rope.rotDim, rope.yarn),
    cosSinScale: yarnCosSinScale(rope.yarn),
    softmaxScaleMul: yarnAttentionScale(rope.yarn),
  };
}
