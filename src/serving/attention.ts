/**
 * @module Attention kinds as step functions over the Wasm kernels: GQA (optionally with q/k bias
 * and per-head or full-projection q/k RMSNorm) and MLA (DeepSeek-V2/V3, naive — non-absorbed —
 * KV cache). Each step reads the normed hidden states h [n, dModel], appends this call's keys and
 * values to the layer's cache at positions start.., and writes the projected output [n, dModel].
 * Pure math on a `Kernels` instance, so Node tests run it with `loadKernels` from kernels/node.ts.
 */
import type { Kernels } from "../kernels/index";
import type { DenseMatrix } from "../kernels/dense";
import type { AttentionSpec, MlaAttentionSpec, ModelSpec, RopeSpec } from "../model/config";
import { ropeFrequencies } from "../model/rope";
import type { GqaWeights, MlaWeights } from "../model/architectures";
import type { Held } from "../model/dense-layers";

/** A weight tree with a Wasm pointer where each array is. */
type PtrOf<V> = V extends Float32Array ? number : V extends null ? null : V extends object ? Ptrs<V> : V;
export type Ptrs<T> = { [K in keyof T]: PtrOf<T[K]> };

/** Per-call scratch in Wasm memory, freed together. Allocate everything before taking views
 * (an allocation may grow the memory, which detaches every view). */
export class Arena {
  readonly #ptrs: number[] = [];
  constructor(readonly k: Kernels) {}

  /** A buffer of `floats` f32 values (contents unspecified). */
  f32(floats: number): number {
    const p = this.k.alloc(Math.max(16, floats * 4));
    this.#ptrs.push(p);
    return p;
  }

  free(): void {
    for (const p of this.#ptrs) this.k.free(p);
    this.#ptrs.length = 0;
  }
}

/** What one layer's KV cache holds per position: K [nKvHeads, kHeadDim], V [nKvHeads, vHeadDim]. */
export interface KvLayout {
  nKvHeads: number;
  kHeadDim: number;
  vHeadDim: number;
}

/** GQA caches its kv heads; naive MLA caches the decompressed per-head keys [nope | rope] and values. */
export function kvLayout(a: AttentionSpec): KvLayout {
  switch (a.kind) {
    case "gqa":
      return { nKvHeads: a.nKvHeads, kHeadDim: a.headDim, vHeadDim: a.headDim };
    case "mla":
      return { nKvHeads: a.nHeads, kHeadDim: a.qkNopeHeadDim + a.qkRopeHeadDim, vHeadDim: a.vHeadDim };
  }
}

/** Rotary tables for positions start..start+n-1: cos/sin [n, rotDim/2], f32 as HF and DeepSeek compute
 * them (inv_freq = θ^(−2i/rotDim) in f32, angle = position · inv_freq in f32). With YaRN
 * (`rope.yarn`), inv_freq and the cos/sin magnitude come from src/model/rope.ts; its softmax factor is
 * already in `attention.scale`. */
export function ropeTables(cos: Float32Array, sin: Float32Array, rope: RopeSpec, start: number, n: number): void {
  const half = rope.rotDim / 2;
  const yarn = rope.yarn === null ? null : ropeFrequencies(rope);
  const mag = yarn?.cosSinScale ?? 1;
  for (let i = 0; i < half; i++) {
    const invFreq =
      yarn === null
        ? Math.fround(1 / Math.fround(rope.theta ** ((2 * i) / rope.rotDim)))
        : Math.fround(yarn.invFreq[i]);
    for (let t = 0; t < n; t++) {
      const angle = Math.fround((start + t) * invFreq);
      cos[t * half + i] = Math.cos(angle) * mag;
      sin[t * half + i] = Math.sin(angle) * mag;
    }
  }
}

/** Inputs shared by every attention kind for one layer call. */
export interface AttentionCall {
  k: Kernels;
  arena: Arena;
  spec: ModelSpec;
  h: number; // [n, dModel] normed hidden states
  out: number; // [n, dModel]
  kCache: number; // [maxLen, nKvHeads, kHeadDim]
  vCache: number; // [maxLen, nKvHeads, vHeadDim]
  start: number;
  n: number;
  cos: number; // [n, rotDim/2]
  sin: number; // [n, rotDim/2]
  /** Activation scratch of int8 weight matrices for n tokens (0 when none is int8). */
  ws: number;
}

/** y[n, m.rows] = x · mᵀ on a held matrix (f32, bf16 or int8). */
function mm(c: AttentionCall, m: DenseMatrix, out: number, x: number): void {
  c.k.matmulDense(m, out, x, c.n, c.ws);
}

export function attentionStep(c: AttentionCall, w: Held<GqaWeights> | Held<MlaWeights>): void {
  const a = c.spec.attention;
  if (a.kind === "gqa" && w.kind === "gqa") gqaStep(c, w);
  else if (a.kind === "mla" && w.kind === "mla") mlaStep(c, a, w);
  else throw new Error(`internal: ${a.kind} attention given ${w.kind} weights`);
}

/** x[n, d] += b[d] per row. */
function addBias(k: Kernels, x: number, b: DenseMatrix | null, n: number, d: number): void {
  if (b === null) return;
  const xs = k.f32(x, n * d);
  const bs = k.f32(b.ptr, d);
  for (let t = 0; t < n; t++) for (let i = 0; i < d; i++) xs[t * d + i] += bs[i];
}

/**
 * HF Llama-family attention: q = Wq·h (+bq), k, v likewise; optional q/k RMSNorm (per head over
 * headDim, or over the whole projection) before RoPE; causal softmax(q·kᵀ·scale)·v; o = Wo·att (+bo).
 * One session's rows: `gqaRows` with a single segment.
 */
function gqaStep(c: AttentionCall, w: Held<GqaWeights>): void {
  const { n, start, kCache, vCache } = c;
  const scores = c.arena.f32(start + n); // attention scores
  gqaRows({ ...c, scores }, w, [{ at: 0, n, start, kCache, vCache }]);
}

/** One session's rows in a batched call: rows [at, at + n) of the call, at positions start…. */
export interface RowSegment {
  at: number;
  n: number;
  start: number;
  kCache: number; // [maxLen, nKvHeads, headDim]
  vCache: number;
}

/**
 * GQA over the rows of several sessions at once (a batched decode step): the projections,
 * norms and RoPE run over all rows (c.cos / c.sin hold each row's own position), then each session's
 * keys and values go to its own cache and its queries attend over it alone. Per row the same
 * arithmetic as one session alone (K and V are projected beside the caches and copied in, bit for
 * bit; with one segment covering every row they are projected into its cache directly).
 * `scores`: ≥ max(start + n) f32s.
 */
export function gqaRows(
  c: Omit<AttentionCall, "kCache" | "vCache" | "start"> & { scores: number },
  w: Held<GqaWeights>,
  segs: readonly RowSegment[],
): void {
  const a = c.spec.attention;
  if (a.kind !== "gqa") throw new Error(`internal: gqaRows on ${a.kind} attention`);
  const { k, spec, h, n } = c;
  const { dModel, rmsEps } = spec;
  const { nHeads, nKvHeads, headDim } = a;
  const qDim = nHeads * headDim;
  const kvDim = nKvHeads * headDim;
  const q = c.arena.f32(n * qDim); // [n, nHeads, headDim]
  const att = c.arena.f32(n * qDim); // [n, nHeads, headDim]
  // One segment: K and V are projected straight into its cache (no copy, no scratch for them).
  const only = segs.length === 1 && segs[0].at === 0 && segs[0].n === n ? segs[0] : null;
  const kT = only ? only.kCache + only.start * kvDim * 4 : c.arena.f32(n * kvDim);
  const vT = only ? only.vCache + only.start * kvDim * 4 : c.arena.f32(n * kvDim);
  const mmN = (m: DenseMatrix, out: number, x: number) => k.matmulDense(m, out, x, n, c.ws);
  mmN(w.wq, q, h);
  mmN(w.wk, kT, h);
  mmN(w.wv, vT, h);
  addBias(k, q, w.bq, n, qDim);
  addBias(k, kT, w.bk, n, kvDim);
  addBias(k, vT, w.bv, n, kvDim);
  const norm = {
    none: null,
    "per-head": { qRows: n * nHeads, qD: headDim, kRows: n * nKvHeads, kD: headDim },
    full: { qRows: n, qD: qDim, kRows: n, kD: kvDim },
  }[a.qkNorm];
  if (norm && w.qNorm !== null && w.kNorm !== null) {
    k.rmsnorm(q, q, w.qNorm.ptr, norm.qRows, norm.qD, rmsEps);
    k.rmsnorm(kT, kT, w.kNorm.ptr, norm.kRows, norm.kD, rmsEps);
  }
  const { rotDim, interleaved } = spec.rope;
  k.rope(q, c.cos, c.sin, n, nHeads, headDim, 0, rotDim, interleaved);
  k.rope(kT, c.cos, c.sin, n, nKvHeads, headDim, 0, rotDim, interleaved);
  for (const s of segs) {
    if (!only) {
      const rows = s.n * kvDim;
      k.f32(s.kCache + s.start * kvDim * 4, rows).set(k.f32(kT + s.at * kvDim * 4, rows));
      k.f32(s.vCache + s.start * kvDim * 4, rows).set(k.f32(vT + s.at * kvDim * 4, rows));
    }
    const qAt = s.at * qDim * 4;
    k.attention(
      att + qAt,
      q + qAt,
      s.kCache,
      s.vCache,
      s.n,
      s.start,
      nHeads,
      nKvHeads,
      headDim,
      headDim,
      a.scale,
      c.scores,
    );
  }
  k.matmulDense(w.wo, c.out, att, n, c.ws);
  addBias(k, c.out, w.bo, n, dModel);
}

/**
 * MLA with HF DeepseekV3Attention semantics, naive cache. q = q_proj(h), or
 * q_b_proj(rmsnorm(q_a_proj(h))); per head q = [q_nope | q_pe]. c = kv_a_proj_with_mqa(h) =
 * [c_kv | k_pe]; k_pe is one head shared by all heads. [k_nope | v] per head = kv_b_proj(rmsnorm(c_kv)).
 * RoPE (interleaved pairs for DeepSeek's stored layout) on q_pe and k_pe; key = [k_nope | k_pe].
 * HF de-interleaves q_pe and k_pe before rotate_half; rotating the interleaved pairs in place gives
 * the same q·k, since both sides share the permutation.
 */
function mlaStep(c: AttentionCall, a: MlaAttentionSpec, w: Held<MlaWeights>): void {
  const { k, spec, h, n, start } = c;
  const { rmsEps } = spec;
  const { nHeads, qkNopeHeadDim: nope, qkRopeHeadDim: rope, vHeadDim: vd, kvLoraRank: kvr } = a;
  const qHead = nope + rope;
  const kvA = kvr + rope;
  const q = c.arena.f32(n * nHeads * qHead); // [n, nHeads, nope + rope]
  const qa = a.qLoraRank === null ? 0 : c.arena.f32(n * a.qLoraRank); // [n, qLoraRank]
  const ckv = c.arena.f32(n * kvA); // [n, kvLoraRank + rope]
  const cn = c.arena.f32(n * kvr); // [n, kvLoraRank] normed c_kv
  const kv = c.arena.f32(n * nHeads * (nope + vd)); // [n, nHeads, nope + v]
  const att = c.arena.f32(n * nHeads * vd); // [n, nHeads, v]
  const scratch = c.arena.f32(start + n);

  if (a.qLoraRank === null) {
    mm(c, w.wq!, q, h);
  } else {
    mm(c, w.wqA!, qa, h);
    k.rmsnorm(qa, qa, w.qANorm!.ptr, n, a.qLoraRank, rmsEps);
    mm(c, w.wqB!, q, qa);
  }
  const { interleaved } = spec.rope;
  k.rope(q, c.cos, c.sin, n, nHeads, qHead, nope, rope, interleaved);
  mm(c, w.wkvA, ckv, h);
  k.rope(ckv, c.cos, c.sin, n, 1, kvA, kvr, rope, interleaved); // k_pe
  {
    const src = k.f32(ckv, n * kvA);
    const dst = k.f32(cn, n * kvr);
    for (let t = 0; t < n; t++) dst.set(src.subarray(t * kvA, t * kvA + kvr), t * kvr);
  }
  k.rmsnorm(cn, cn, w.kvANorm.ptr, n, kvr, rmsEps);
  mm(c, w.wkvB, kv, cn);
  // Cache K [pos, head, nope | rope] and V [pos, head, v].
  {
    const src = k.f32(kv, n * nHeads * (nope + vd));
    const pe = k.f32(ckv, n * kvA);
    const K = k.f32(c.kCache + start * nHeads * qHead * 4, n * nHeads * qHead);
    const V = k.f32(c.vCache + start * nHeads * vd * 4, n * nHeads * vd);
    for (let t = 0; t < n; t++) {
      const kPe = pe.subarray(t * kvA + kvr, (t + 1) * kvA);
      for (let hd = 0; hd < nHeads; hd++) {
        const row = (t * nHeads + hd) * (nope + vd);
        const kRow = (t * nHeads + hd) * qHead;
        K.set(src.subarray(row, row + nope), kRow);
        K.set(kPe, kRow + nope);
        V.set(src.subarray(row + nope, row + nope + vd), (t * nHeads + hd) * vd);
      }
    }
  }
  k.attention(att, q, c.kCache, c.vCache, n, start, nHeads, nHeads, qHead, vd, a.scale, scratch);
  mm(c, w.wo, c.out, att);
}
