/**
 * @module reference — plain TypeScript versions of every Wasm kernel: the test oracle.
 *
 * Written to be obviously right, llama2.c style: one loop nest per op, same parameter order as the
 * Kernels methods, Float32Arrays instead of pointers. Sums run in f64 (JS numbers), so these are at
 * least as accurate as the kernels they check. Never optimise them.
 */

/** out[n, dOut] = x[n, dIn] · w[dOut, dIn]ᵀ */
export function matmulRef(
  out: Float32Array,
  x: Float32Array,
  w: Float32Array,
  n: number,
  dIn: number,
  dOut: number,
): void {
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < dOut; j++) {
      let sum = 0;
      for (let k = 0; k < dIn; k++) sum += x[t * dIn + k] * w[j * dIn + k];
      out[t * dOut + j] = sum;
    }
  }
}

/** out[n, d] = x · rsqrt(mean(x²) + eps) · w, per row. out may be x. */
export function rmsnormRef(
  out: Float32Array,
  x: Float32Array,
  w: Float32Array,
  n: number,
  d: number,
  eps: number,
): void {
  for (let t = 0; t < n; t++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += x[t * d + i] * x[t * d + i];
    const s = 1 / Math.sqrt(ss / d + eps);
    for (let i = 0; i < d; i++) out[t * d + i] = x[t * d + i] * s * w[i];
  }
}

/** In-place RoPE on x [n, nHeads, headStride] with cos/sin [n, rotDim/2]. */
export function ropeRef(
  x: Float32Array,
  cos: Float32Array,
  sin: Float32Array,
  n: number,
  nHeads: number,
  headStride: number,
  rotOffset: number,
  rotDim: number,
  interleaved: boolean,
): void {
  const half = rotDim / 2;
  for (let t = 0; t < n; t++) {
    for (let h = 0; h < nHeads; h++) {
      const base = (t * nHeads + h) * headStride + rotOffset;
      for (let i = 0; i < half; i++) {
        const ia = interleaved ? base + 2 * i : base + i;
        const ib = interleaved ? base + 2 * i + 1 : base + i + half;
        const a = x[ia];
        const b = x[ib];
        const c = cos[t * half + i];
        const s = sin[t * half + i];
        x[ia] = a * c - b * s;
        x[ib] = b * c + a * s;
      }
    }
  }
}

/** In-place softmax over each of `rows` rows of length `cols`. */
export function softmaxRef(x: Float32Array, rows: number, cols: number): void {
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let max = -Infinity;
    for (let i = 0; i < cols; i++) max = Math.max(max, x[o + i]);
    let sum = 0;
    for (let i = 0; i < cols; i++) {
      x[o + i] = Math.exp(x[o + i] - max);
      sum += x[o + i];
    }
    for (let i = 0; i < cols; i++) x[o + i] /= sum;
  }
}

/** out[i] = silu(gate[i]) · up[i] */
export function siluMulRef(out: Float32Array, gate: Float32Array, up: Float32Array, len: number): void {
  for (let i = 0; i < len; i++) {
    const g = gate[i];
    out[i] = (g / (1 + Math.exp(-g))) * up[i];
  }
}

/** out[n, dModel] = (silu(x·w1ᵀ) ⊙ (x·w3ᵀ)) · w2ᵀ; scratch ≥ 2·n·dFf. */
export function expertFfnRef(
  out: Float32Array,
  x: Float32Array,
  w1: Float32Array,
  w3: Float32Array,
  w2: Float32Array,
  n: number,
  dModel: number,
  dFf: number,
  scratch: Float32Array,
): void {
  const gate = scratch.subarray(0, n * dFf); // [n, dFf]
  const up = scratch.subarray(n * dFf, 2 * n * dFf); // [n, dFf]
  matmulRef(gate, x, w1, n, dModel, dFf);
  matmulRef(up, x, w3, n, dModel, dFf);
  siluMulRef(gate, gate, up, n * dFf);
  matmulRef(out, gate, w2, n, dFf, dModel);
}

/** Causal GQA attention over a KV cache; see Kernels.attention for the shapes. */
export function attentionRef(
  out: Float32Array,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  nQ: number,
  startPos: number,
  nHeads: number,
  nKvHeads: number,
  headDim: number,
  vHeadDim: number,
  scale: number,
  scratch: Float32Array,
): void {
  const group = nHeads / nKvHeads;
  for (let i = 0; i < nQ; i++) {
    const len = startPos + i + 1;
    for (let h = 0; h < nHeads; h++) {
      const kvh = Math.floor(h / group);
      const qo = (i * nHeads + h) * headDim;
      const att = scratch.subarray(0, len);
      for (let t = 0; t < len; t++) {
        const ko = (t * nKvHeads + kvh) * headDim;
        let score = 0;
        for (let d = 0; d < headDim; d++) score += q[qo + d] * k[ko + d];
        att[t] = score * scale;
      }
      softmaxRef(att, 1, len);
      const oo = (i * nHeads + h) * vHeadDim;
      for (let d = 0; d < vHeadDim; d++) {
        let acc = 0;
        for (let t = 0; t < len; t++) acc += att[t] * v[(t * nKvHeads + kvh) * vHeadDim + d];
        out[oo + d] = acc;
      }
    }
  }
}

/**
 * Per-token symmetric activation quantization as the int8 kernels do it (assembly/q8.ts) with
 * `bits` (q8ActivationBits: 12 on dot_i16x8, 14 or 7 on the relaxed dots): qmax = 2^(bits−1) − 1,
 * scale = max|x| / qmax, q = nearest-even(x · (qmax / max|x|)) in f32.
 */
export function quantizeActivationsRef(
  x: Float32Array,
  n: number,
  d: number,
  bits: number,
): { q: Int32Array; scales: Float32Array } {
  const qmax = 2 ** (bits - 1) - 1;
  const q = new Int32Array(n * d);
  const scales = new Float32Array(n);
  for (let t = 0; t < n; t++) {
    let amax = 0;
    for (let i = 0; i < d; i++) amax = Math.max(amax, Math.abs(x[t * d + i]));
    const inv = amax > 0 ? Math.fround(qmax / amax) : 0;
    scales[t] = Math.fround(amax / qmax);
    for (let i = 0; i < d; i++) q[t * d + i] = roundHalfEven(Math.fround(x[t * d + i] * inv));
  }
  return { q, scales };
}

function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Symmetric int8 rows as the q8 kernels take them: w[j, k] ≈ scales[j] · q[j, k]. */
export interface Q8RowsRef {
  q: Int8Array; // [rows, cols]
  scales: Float32Array; // [rows]
}

/** out[n, dOut] = x · wᵀ the int8 way: activations quantized per token (bits), exact integer dot,
 * one rescale f32(sum) · (scale[j] · sx[t]) — the kernels' order, so results match bit for bit. */
export function matmulQ8Ref(
  out: Float32Array,
  x: Float32Array,
  w: Q8RowsRef,
  n: number,
  dIn: number,
  dOut: number,
  bits: number,
): void {
  const { q, scales } = quantizeActivationsRef(x, n, dIn, bits);
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < dOut; j++) {
      let sum = 0;
      for (let k = 0; k < dIn; k++) sum += w.q[j * dIn + k] * q[t * dIn + k];
      out[t * dOut + j] = Math.fround(Math.fround(sum) * Math.fround(w.scales[j] * scales[t]));
    }
  }
}

/** SwiGLU expert with int8 weights and per-token int8 activations (both matmuls of the kernel). */
export function expertFfnQ8Ref(
  out: Float32Array,
  x: Float32Array,
  w1: Q8RowsRef,
  w3: Q8RowsRef,
  w2: Q8RowsRef,
  n: number,
  dModel: number,
  dFf: number,
  bits: number,
): void {
  const { q, scales } = quantizeActivationsRef(x, n, dModel, bits);
  const h = new Float32Array(n * dFf);
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < dFf; j++) {
      let g = 0;
      let u = 0;
      for (let k = 0; k < dModel; k++) {
        g += w1.q[j * dModel + k] * q[t * dModel + k];
        u += w3.q[j * dModel + k] * q[t * dModel + k];
      }
      const gf = Math.fround(Math.fround(g) * Math.fround(w1.scales[j] * scales[t]));
      const uf = Math.fround(Math.fround(u) * Math.fround(w3.scales[j] * scales[t]));
      h[t * dFf + j] = (gf / (1 + Math.exp(-gf))) * uf;
    }
  }
  matmulQ8Ref(out, h, w2, n, dFf, dModel, bits);
}

/** An int8 group-scaled matrix as plain arrays (src/kernels/dense-format.ts Q8gMatrix). */
export interface Q8gRef {
  group: number;
  q: Int8Array; // [rows, colsG], colsG = cols rounded up to group
  scales: Float32Array; // [rows, colsG / group]
}

/**
 * out[n, dOut] = x · Wᵀ the dense int8 way (assembly/dense.ts): activations quantized per token to
 * 16 bits, exact integer dot per group, Σ_g scale[j, g] · isum_g in f64, times the token scale.
 * Also returns, per output, A = s_x · Σ_g scale[j, g] · Σ_k |q·xq| (what f32 rounding scales with:
 * it bounds every partial sum the kernel rounds, whatever order it adds in).
 */
export function matmulQ8gRef(
  out: Float32Array,
  x: Float32Array,
  w: Q8gRef,
  n: number,
  dIn: number,
  dOut: number,
  bits = 16,
): Float64Array {
  const { q: xq, scales: sx } = quantizeActivationsRef(x, n, dIn, bits);
  const colsG = Math.ceil(dIn / w.group) * w.group;
  const groups = colsG / w.group;
  const mag = new Float64Array(n * dOut);
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < dOut; j++) {
      let acc = 0;
      let abs = 0;
      for (let g = 0; g < groups; g++) {
        let isum = 0;
        let iabs = 0;
        for (let k = g * w.group; k < Math.min(dIn, (g + 1) * w.group); k++) {
          isum += w.q[j * colsG + k] * xq[t * dIn + k];
          iabs += Math.abs(w.q[j * colsG + k] * xq[t * dIn + k]);
        }
        acc += w.scales[j * groups + g] * isum;
        abs += Math.abs(w.scales[j * groups + g]) * iabs;
      }
      out[t * dOut + j] = acc * sx[t];
      mag[t * dOut + j] = abs * sx[t];
    }
  }
  return mag;
}

/** out[n, dOut] = x · Wᵀ with W given as bf16 bits [dOut, dIn] (natural order), widened exactly. */
export function matmulBf16Ref(
  out: Float32Array,
  x: Float32Array,
  wBits: Uint16Array,
  n: number,
  dIn: number,
  dOut: number,
): void {
  const w = new Float32Array(new Uint32Array(Array.from(wBits, (b) => b << 16)).buffer);
  matmulRef(out, x, w, n, dIn, dOut);
}

/** SwiGLU expert on int8 group matrices the kernel's way (assembly/expert-q8g.ts): 16-bit tokens,
 * exact group sums, silu(gate)·up in f64, h quantized again for down. */
export function expertFfnQ8gRef(
  out: Float32Array,
  x: Float32Array,
  w1: Q8gRef,
  w3: Q8gRef,
  w2: Q8gRef,
  n: number,
  dModel: number,
  dFf: number,
  bits = 16,
): void {
  const g = new Float32Array(n * dFf);
  const u = new Float32Array(n * dFf);
  matmulQ8gRef(g, x, w1, n, dModel, dFf, bits);
  matmulQ8gRef(u, x, w3, n, dModel, dFf, bits);
  siluMulRef(g, g, u, n * dFf);
  matmulQ8gRef(out, g, w2, n, dFf, dModel, bits);
}

/** A 4-bit group matrix as plain arrays (src/kernels/q4g-format.ts Q4gMatrix). */
export interface Q4gRef {
  group: number;
  q: Int8Array; // [rows, colsG] in [-8, 7]
  scales: Uint16Array; // [rows, colsG / group] bf16 bits
}

/** A row's bf16 scales as unit · sub (q4g-format.ts splitQ4Scales, written again here): unit =
 * 2^(largest exponent − 7), sub = round(scale / unit) clamped to ±255. */
function splitScalesRef(scales: Uint16Array, sub: Int16Array): number {
  let emax = 0;
  for (const b of scales) emax = Math.max(emax, (b >> 7) & 0xff);
  const unit = emax === 0 ? 0 : 2 ** Math.max(-126, emax - 134);
  const f = new Float32Array(new Uint32Array(Array.from(scales, (b) => b << 16)).buffer);
  for (let g = 0; g < scales.length; g++)
    sub[g] = unit === 0 ? 0 : Math.max(-255, Math.min(255, Math.round(f[g] / unit)));
  return unit;
}

/**
 * out[n, dOut] = x · Wᵀ the int4 kernel's way (assembly/expert-q4g.ts): activations quantized per
 * token to 8 bits, per row isum = Σ_g sub[g] · Σ_k q·xq exact per chunk of 8192 inputs (whole
 * groups), the chunks added in f32, then f32(f32(Σ · unit) · sx), with unit and subs the row's
 * scales split as q4g-format.ts splitQ4Scales does.
 */
export function matmulQ4gRef(
  out: Float32Array,
  x: Float32Array,
  w: Q4gRef,
  n: number,
  dIn: number,
  dOut: number,
): void {
  const { q: xq, scales: sx } = quantizeActivationsRef(x, n, dIn, 8);
  const colsG = Math.ceil(dIn / w.group) * w.group;
  const groups = colsG / w.group;
  const sub = new Int16Array(groups);
  const chunk = Math.max(1, Math.floor(8192 / w.group));
  for (let j = 0; j < dOut; j++) {
    const unit = splitScalesRef(w.scales.subarray(j * groups, (j + 1) * groups), sub);
    for (let t = 0; t < n; t++) {
      let f = 0;
      for (let g0 = 0; g0 < groups; g0 += chunk) {
        let isum = 0;
        for (let g = g0; g < Math.min(groups, g0 + chunk); g++) {
          let s = 0;
          for (let k = g * w.group; k < Math.min(dIn, (g + 1) * w.group); k++)
            s += w.q[j * colsG + k] * xq[t * dIn + k];
          isum += sub[g] * s;
        }
        f = Math.fround(f + Math.fround(isum));
      }
      out[t * dOut + j] = Math.fround(Math.fround(f * unit) * sx[t]);
    }
  }
}

/** SwiGLU expert on 4-bit group matrices the kernel's way (matmulQ4gRef; silu(gate)·up in f64). */
export function expertFfnQ4gRef(
  out: Float32Array,
  x: Float32Array,
  w1: Q4gRef,
  w3: Q4gRef,
  w2: Q4gRef,
  n: number,
  dModel: number,
  dFf: number,
): void {
  const g = new Float32Array(n * dFf);
  const u = new Float32Array(n * dFf);
  matmulQ4gRef(g, x, w1, n, dModel, dFf);
  matmulQ4gRef(u, x, w3, n, dModel, dFf);
  siluMulRef(g, g, u, n * dFf);
  matmulQ4gRef(out, g, w2, n, dFf, dModel);
}

/** Per token of y[n, rows]: the largest of (y ÷ scale, rounded to f32 as `Float32Array /=` does) and
 * its first index, by the in-order scan `v[j] > v[best]` (ties → lowest, a NaN wins only at 0). */
export function argmaxRowsRef(
  maxOut: Float32Array,
  idxOut: Int32Array,
  y: Float32Array,
  n: number,
  rows: number,
  scale = 1,
): void {
  for (let t = 0; t < n; t++) {
    const v = y.slice(t * rows, (t + 1) * rows);
    if (scale !== 1) for (let i = 0; i < rows; i++) v[i] /= scale;
    let best = 0;
    for (let j = 1; j < rows; j++) if (v[j] > v[best]) best = j;
    maxOut[t] = v[best];
    idxOut[t] = best;
  }
}
