/**
 * @module accuracy-formats — expert weight formats written out in plain TS (dequantized copies, no
 * Wasm kernel), controlled Gaussian noise, the statistics that say whether a model's expert weights
 * are i.i.d. Gaussian, and binomial intervals for greedy agreement: the material of
 * `npm run bench:accuracy` (scripts/bench-accuracy.ts).
 *
 * Formats (relative weight error is what they are compared by; scales are kept in f32 here unless
 * the format is the product's own, which slightly flatters the others):
 *  - the product's: int8 per row and int8 groups of 32 (absmax, or searched scales as loaded now),
 *    int8 groups of 16 and 8 (not served: what smaller groups would buy), int4 groups of 32 with
 *    searched integer sub-scales (src/kernels/q4g-format.ts);
 *  - llama.cpp-style Q4_0 (absmax, d = signed max / −8) and Q4_1 (scale + min, asymmetric);
 *  - NF4 (QLoRA's normal-float codebook, absmax per group), and NF4 with a searched group scale.
 */
import { dequantizeQ8g, quantizeQ8g } from "../../src/kernels/dense-format";
import { dequantizeQ8, quantizeRowsQ8 } from "../../src/kernels/packing";
import { dequantizeQ4g, quantizeQ4g } from "../../src/kernels/q4g-format";
import { Q8_DIVISORS } from "../../src/kernels/q8-scale";
import type { WeightTransform } from "./bench-accuracy";

/** QLoRA's NF4 codebook: quantiles of N(0, 1) scaled to [-1, 1], with an exact zero. */
const NF4 = [
  -1, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1,
];

/** Group-wise 4-bit formats by one function per group: writes ŵ for w[k0..k1) into out. */
type GroupQuant = (w: Float32Array, k0: number, k1: number, out: Float32Array) => void;

function perGroup(group: number, q: GroupQuant): WeightTransform {
  return (w, rows, cols) => {
    const out = new Float32Array(w.length);
    for (let j = 0; j < rows; j++) {
      for (let k0 = 0; k0 < cols; k0 += group) q(w, j * cols + k0, j * cols + Math.min(cols, k0 + group), out);
    }
    return out;
  };
}

/** llama.cpp Q4_0: d = (the group's value of largest magnitude, signed) / −8, q = clamp(round(w / d), −8, 7). */
const q4_0: GroupQuant = (w, k0, k1, out) => {
  let m = 0;
  for (let k = k0; k < k1; k++) if (Math.abs(w[k]) > Math.abs(m)) m = w[k];
  const d = m / -8;
  for (let k = k0; k < k1; k++) out[k] = d === 0 ? 0 : d * Math.max(-8, Math.min(7, Math.round(w[k] / d)));
};

/** llama.cpp Q4_1: min and d = (max − min) / 15, q = round((w − min) / d) ∈ [0, 15], ŵ = min + d · q. */
const q4_1: GroupQuant = (w, k0, k1, out) => {
  let [lo, hi] = [Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY];
  for (let k = k0; k < k1; k++) [lo, hi] = [Math.min(lo, w[k]), Math.max(hi, w[k])];
  const d = (hi - lo) / 15;
  for (let k = k0; k < k1; k++) out[k] = d === 0 ? lo : lo + d * Math.max(0, Math.min(15, Math.round((w[k] - lo) / d)));
};

function nearestNf4(v: number): number {
  let best = NF4[0];
  for (const c of NF4) if (Math.abs(c - v) < Math.abs(best - v)) best = c;
  return best;
}

/** NF4 with group scale s = absmax · c, c searched over `factors` (QLoRA: c = 1 only). */
function nf4(factors: readonly number[]): GroupQuant {
  return (w, k0, k1, out) => {
    let amax = 0;
    for (let k = k0; k < k1; k++) amax = Math.max(amax, Math.abs(w[k]));
    let [bestS, bestE] = [amax, Number.POSITIVE_INFINITY];
    for (const c of amax > 0 ? factors : []) {
      const s = amax * c;
      let e = 0;
      for (let k = k0; k < k1; k++) e += (w[k] - s * nearestNf4(w[k] / s)) ** 2;
      if (e < bestE) [bestS, bestE] = [s, e];
    }
    for (let k = k0; k < k1; k++) out[k] = bestS > 0 ? bestS * nearestNf4(w[k] / bestS) : 0;
  };
}

export interface WeightFormat {
  name: string;
  /** Bits per weight including scales (per-row f32 units of int4 not counted: negligible at real widths). */
  bits: number;
  transform: WeightTransform;
}

const ABSMAX = [127];
const NF4_FACTORS = Array.from({ length: 13 }, (_, i) => 0.76 + 0.02 * i);

/** Every format the bench knows, by name. */
export const WEIGHT_FORMATS: readonly WeightFormat[] = [
  { name: "f32", bits: 32, transform: (w) => w },
  { name: "int8-row-absmax", bits: 8, transform: (w, r, c) => dequantizeQ8(quantizeRowsQ8(w, r, c, ABSMAX), r, c) },
  { name: "int8-row", bits: 8, transform: (w, r, c) => dequantizeQ8(quantizeRowsQ8(w, r, c), r, c) },
  {
    name: "int8-g32-absmax",
    bits: 9,
    transform: (w, r, c) => dequantizeQ8g(quantizeQ8g(w, r, c, 32, ABSMAX)),
  },
  { name: "int8-g32", bits: 9, transform: (w, r, c) => dequantizeQ8g(quantizeQ8g(w, r, c, 32, Q8_DIVISORS)) },
  // Smaller int8 groups (f32 scales, as the product's int8 groups store them): 8 + 32/group bits.
  ...[16, 8].flatMap((g): WeightFormat[] => [
    {
      name: `int8-g${g}-absmax`,
      bits: 8 + 32 / g,
      transform: (w, r, c) => dequantizeQ8g(quantizeQ8g(w, r, c, g, ABSMAX)),
    },
    {
      name: `int8-g${g}`,
      bits: 8 + 32 / g,
      transform: (w, r, c) => dequantizeQ8g(quantizeQ8g(w, r, c, g, Q8_DIVISORS)),
    },
  ]),
  { name: "int4-g32", bits: 4.5, transform: (w, r, c) => dequantizeQ4g(quantizeQ4g(w, r, c, 32)) },
  { name: "q4_0-g32", bits: 4.5, transform: perGroup(32, q4_0) },
  { name: "q4_1-g32", bits: 5, transform: perGroup(32, q4_1) },
  { name: "nf4-g64", bits: 4.25, transform: perGroup(64, nf4([1])) },
  { name: "nf4-g32", bits: 4.5, transform: perGroup(32, nf4([1])) },
  { name: "nf4s-g32", bits: 4.5, transform: perGroup(32, nf4(NF4_FACTORS)) },
];

/** Seeded standard normal source (Box–Muller on a 32-bit mixer). */
export function gaussianSource(seed: number): () => number {
  let a = seed >>> 0;
  const next = () => {
    a = (Math.imul(a ^ (a >>> 15), 0x2c1b3c6d) + 0x6b43a9b5) >>> 0;
    return (a + 0.5) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
}

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** w + ε with ε i.i.d. N(0, (rel · rms(w))²), seeded by the matrix's key: relative RMS error `rel`. */
export function gaussianNoise(rel: number, seed = 1): WeightTransform {
  return (w, _rows, _cols, key) => {
    let ss = 0;
    for (const v of w) ss += v * v;
    const sigma = rel * Math.sqrt(ss / w.length);
    const g = gaussianSource(hash(key) ^ seed);
    return Float32Array.from(w, (v) => v + sigma * g());
  };
}

/** Σ (ŵ − w)² and Σ w² of one matrix. */
export function sqError(w: Float32Array, back: Float32Array): [number, number] {
  let [e, s] = [0, 0];
  for (let i = 0; i < w.length; i++) [e, s] = [e + (back[i] - w[i]) ** 2, s + w[i] * w[i]];
  return [e, s];
}

/** Running sums over expert matrices for the i.i.d.-Gaussian check (each matrix standardised by its
 * own mean and RMS, so a per-matrix init scale does not read as heavy tails). */
export class GaussianCheck {
  #n = 0;
  #m4 = 0;
  #tail3 = 0;
  #maxZ = 0;
  #lag = 0;
  #lagN = 0;
  #rowCorr = 0;
  #rowN = 0;
  #rowVarDev = 0;
  #rowVarN = 0;

  add(w: Float32Array, rows: number, cols: number): void {
    let [mean, ss] = [0, 0];
    for (const v of w) mean += v / w.length;
    for (const v of w) ss += (v - mean) ** 2;
    const sd = Math.sqrt(ss / w.length);
    const z = Float64Array.from(w, (v) => (v - mean) / sd);
    for (let j = 0; j < rows; j++) {
      let rv = 0;
      for (let k = 0; k < cols; k++) {
        const x = z[j * cols + k];
        this.#m4 += x ** 4;
        if (Math.abs(x) > 3) this.#tail3++;
        this.#maxZ = Math.max(this.#maxZ, Math.abs(x));
        rv += x * x;
        if (k + 1 < cols) this.#lag += x * z[j * cols + k + 1];
        if (j + 1 < rows) this.#rowCorr += x * z[(j + 1) * cols + k];
      }
      this.#lagN += cols - 1;
      if (j + 1 < rows) this.#rowN += cols;
      // Row variance vs 1: for i.i.d. N(0, 1) its variance is 2 / cols (χ² over cols).
      this.#rowVarDev += ((rv / cols - 1) ** 2 * cols) / 2;
      this.#rowVarN++;
    }
    this.#n += w.length;
  }

  /** Excess kurtosis (0 for a Gaussian), share beyond 3σ (0.27%), largest |z|, lag-1 correlation
   * along rows and between neighbouring rows (0 ± 1/√n when independent), and the spread of row
   * variances relative to i.i.d. sampling (1 when every row has the same variance). */
  result() {
    return {
      weights: this.#n,
      excessKurtosis: this.#m4 / this.#n - 3,
      beyond3Sigma: this.#tail3 / this.#n,
      maxAbsZ: this.#maxZ,
      lag1Corr: this.#lag / this.#lagN,
      rowCorr: this.#rowCorr / this.#rowN,
      corrNoise: 1 / Math.sqrt(this.#lagN),
      rowVarianceRatio: this.#rowVarDev / this.#rowVarN,
    };
  }
}

/** Wilson score interval (95%) for k successes in n trials. */
export function wilson(k: number, n: number, z = 1.96): [number, number] {
  if (n === 0) return [0, 1];
  const p = k / n;
  const d = 1 + (z * z) / n;
  const c = (p + (z * z) / (2 * n)) / d;
  const h = (z * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n))) / d;
  return [Math.max(0, c - h), Math.min(1, c + h)];
}
