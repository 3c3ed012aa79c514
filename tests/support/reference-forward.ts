/**
 * @module A naive float64 forward pass with Hugging Face semantics for every family, reading the
 * HF-named tensors directly (llm.c's "naive reference beside the fast one"): whole-sequence causal
 * attention (no KV cache), rotate_half RoPE — for MLA after HF's de-interleave of q_pe / k_pe —,
 * routing from sorted scores. It shares no code with src/serving/ and src/gating/; it reads the
 * sizes and flags from parseConfig, whose output is tested separately.
 */
import { parseConfig, type ModelSpec } from "../../src/model/config";
import type { Config } from "./family-configs";
import type { Tensors } from "./family-checkpoints";

type Vec = Float64Array;

export interface ReferenceResult {
  /** [n][vocab] */
  logits: number[][];
  /** MoE layer → per token the chosen expert ids (descending selection score). */
  routing: Record<number, number[][]>;
  /** MoE layer → per token the weights matching `routing`. */
  weights: Record<number, number[][]>;
  /** MoE layer → [n][dModel] block input (post-attention norm) and output (before the residual). */
  moeIn: Record<number, number[][]>;
  moeOut: Record<number, number[][]>;
}

export function referenceForward(cfg: Config, t: Tensors, tokens: number[]): ReferenceResult {
  const spec = parseConfig(cfg);
  const W = (name: string) => {
    const x = t.get(name);
    if (!x) throw new Error(`reference: no tensor ${name}`);
    return x.data;
  };
  const has = (name: string) => t.has(name);
  const { dModel: H, rmsEps: eps } = spec;
  const _n = tokens.length;
  const mult = spec.multipliers;
  let x: Vec[] = tokens.map((id) =>
    Float64Array.from(W("model.embed_tokens.weight").subarray(id * H, (id + 1) * H), (v) => v * mult.embedding),
  );
  const out: ReferenceResult = { logits: [], routing: {}, weights: {}, moeIn: {}, moeOut: {} };

  for (let L = 0; L < spec.nLayers; L++) {
    const p = `model.layers.${L}.`;
    const h = x.map((v) => rmsnorm(v, W(`${p}input_layernorm.weight`), eps));
    const attn = spec.attention.kind === "gqa" ? gqa(spec, W, has, p, h) : mla(spec, W, p, h);
    x = x.map((v, i) => v.map((a, d) => a + mult.residual * attn[i][d]));
    const h2 = x.map((v) => rmsnorm(v, W(`${p}post_attention_layernorm.weight`), eps));
    const layer = spec.layers[L];
    let ffn: Vec[];
    if (layer.kind === "dense") {
      ffn = h2.map((v) =>
        swiglu(
          v,
          W(`${p}mlp.gate_proj.weight`),
          W(`${p}mlp.up_proj.weight`),
          W(`${p}mlp.down_proj.weight`),
          H,
          layer.dFf,
        ),
      );
    } else {
      const r = moe(spec, W, has, p, h2);
      ffn = r.out;
      out.routing[L] = r.ids;
      out.weights[L] = r.weights;
      out.moeIn[L] = h2.map((v) => Array.from(v));
      out.moeOut[L] = r.out.map((v) => Array.from(v));
    }
    x = x.map((v, i) => v.map((a, d) => a + mult.residual * ffn[i][d]));
  }
  const head = spec.tieEmbeddings ? W("model.embed_tokens.weight") : W("lm_head.weight");
  for (const v of x) {
    const hn = rmsnorm(v, W("model.norm.weight"), eps);
    out.logits.push(Array.from(matvec(head, hn, spec.vocabSize, H), (l) => l / mult.logitsScale));
  }
  return out;
}

function matvec(w: ArrayLike<number>, x: ArrayLike<number>, rows: number, cols: number, rowOffset = 0): Vec {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += w[(rowOffset + r) * cols + c] * x[c];
    y[r] = s;
  }
  return y;
}

function rmsnorm(x: ArrayLike<number>, w: ArrayLike<number>, eps: number): Vec {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const s = 1 / Math.sqrt(ss / x.length + eps);
  return Float64Array.from({ length: x.length }, (_, i) => x[i] * s * w[i]);
}

const silu = (v: number) => v / (1 + Math.exp(-v));

/** down · (silu(gate · x) ⊙ (up · x)); gate/up may be row ranges of one fused tensor. */
function swiglu(
  x: Vec,
  gate: ArrayLike<number>,
  up: ArrayLike<number>,
  down: ArrayLike<number>,
  H: number,
  I: number,
  gateRow = 0,
  upRow = 0,
): Vec {
  const g = matvec(gate, x, I, H, gateRow);
  const u = matvec(up, x, I, H, upRow);
  const a = g.map((v, i) => silu(v) * u[i]);
  return matvec(down, a, H, I);
}

/** HF rotate_half RoPE on v (length d) at position pos: pairs (i, i + d/2). */
function ropeHalf(v: Vec, pos: number, theta: number): Vec {
  const d = v.length;
  const half = d / 2;
  const o = new Float64Array(d);
  for (let i = 0; i < half; i++) {
    const ang = pos * theta ** ((-2 * i) / d);
    const c = Math.cos(ang);
    const s = Math.sin(ang);
    o[i] = v[i] * c - v[i + half] * s;
    o[i + half] = v[i + half] * c + v[i] * s;
  }
  return o;
}

/** HF apply_rotary_pos_emb_interleave: de-interleave [x0, x1, x2, …] → [x0, x2, …, x1, x3, …], then rotate_half. */
function ropeInterleavedHf(v: Vec, pos: number, theta: number): Vec {
  const half = v.length / 2;
  const de = Float64Array.from({ length: v.length }, (_, i) => (i < half ? v[2 * i] : v[2 * (i - half) + 1]));
  return ropeHalf(de, pos, theta);
}

function softmaxAttend(q: Vec[], k: Vec[], v: Vec[], scale: number): Vec[] {
  // q[i], k[j], v[j] for one head; causal.
  return q.map((qi, i) => {
    const s = Array.from({ length: i + 1 }, (_, j) => qi.reduce((a, x, d) => a + x * k[j][d], 0) * scale);
    const m = Math.max(...s);
    const e = s.map((z) => Math.exp(z - m));
    const z = e.reduce((a, b) => a + b, 0);
    const o = new Float64Array(v[0].length);
    e.forEach((p, j) => v[j].forEach((val, d) => (o[d] += (p / z) * val)));
    return o;
  });
}

function gqa(spec: ModelSpec, W: (n: string) => Float32Array, has: (n: string) => boolean, p: string, h: Vec[]): Vec[] {
  const a = spec.attention;
  if (a.kind !== "gqa") throw new Error("gqa");
  const { nHeads, nKvHeads, headDim: hd } = a;
  const H = spec.dModel;
  const proj = (name: string, rows: number) =>
    h.map((v) => {
      const y = matvec(W(`${p}self_attn.${name}_proj.weight`), v, rows, H);
      if (has(`${p}self_attn.${name}_proj.bias`)) W(`${p}self_attn.${name}_proj.bias`).forEach((b, i) => (y[i] += b));
      return y;
    });
  let q = proj("q", nHeads * hd);
  let k = proj("k", nKvHeads * hd);
  const v = proj("v", nKvHeads * hd);
  if (a.qkNorm === "full") {
    q = q.map((x) => rmsnorm(x, W(`${p}self_attn.q_norm.weight`), spec.rmsEps));
    k = k.map((x) => rmsnorm(x, W(`${p}self_attn.k_norm.weight`), spec.rmsEps));
  }
  const head = (xs: Vec[], hh: number, norm: string | null) =>
    xs.map((x, pos) => {
      let y: Vec = x.slice(hh * hd, (hh + 1) * hd);
      if (norm) y = rmsnorm(y, W(`${p}self_attn.${norm}.weight`), spec.rmsEps);
      return ropeHalf(y, pos, spec.rope.theta);
    });
  const perHead = a.qkNorm === "per-head";
  const att = h.map(() => new Float64Array(nHeads * hd));
  for (let hh = 0; hh < nHeads; hh++) {
    const kvh = Math.floor(hh / (nHeads / nKvHeads));
    const o = softmaxAttend(
      head(q, hh, perHead ? "q_norm" : null),
      head(k, kvh, perHead ? "k_norm" : null),
      v.map((x) => x.slice(kvh * hd, (kvh + 1) * hd)),
      a.scale,
    );
    o.forEach((oi, i) => att[i].set(oi, hh * hd));
  }
  return att.map((x) => {
    const y = matvec(W(`${p}self_attn.o_proj.weight`), x, H, nHeads * hd);
    if (has(`${p}self_attn.o_proj.bias`)) W(`${p}self_attn.o_proj.bias`).forEach((b, i) => (y[i] += b));
    return y;
  });
}

function mla(spec: ModelSpec, W: (n: string) => Float32Array, p: string, h: Vec[]): Vec[] {
  const a = spec.attention;
  if (a.kind !== "mla") throw new Error("mla");
  const H = spec.dModel;
  const { nHeads, qkNopeHeadDim: nope, qkRopeHeadDim: rope, vHeadDim: vd, kvLoraRank: kvr } = a;
  const qh = nope + rope;
  const rot = spec.rope.interleaved ? ropeInterleavedHf : ropeHalf;
  const q = h.map((x) =>
    a.qLoraRank === null
      ? matvec(W(`${p}self_attn.q_proj.weight`), x, nHeads * qh, H)
      : matvec(
          W(`${p}self_attn.q_b_proj.weight`),
          rmsnorm(
            matvec(W(`${p}self_attn.q_a_proj.weight`), x, a.qLoraRank, H),
            W(`${p}self_attn.q_a_layernorm.weight`),
            spec.rmsEps,
          ),
          nHeads * qh,
          a.qLoraRank,
        ),
  );
  const c = h.map((x) => matvec(W(`${p}self_attn.kv_a_proj_with_mqa.weight`), x, kvr + rope, H));
  const kv = c.map((ci) =>
    matvec(
      W(`${p}self_attn.kv_b_proj.weight`),
      rmsnorm(ci.slice(0, kvr), W(`${p}self_attn.kv_a_layernorm.weight`), spec.rmsEps),
      nHeads * (nope + vd),
      kvr,
    ),
  );
  const kPe = c.map((ci, pos) => rot(ci.slice(kvr), pos, spec.rope.theta));
  const att = h.map(() => new Float64Array(nHeads * vd));
  for (let hh = 0; hh < nHeads; hh++) {
    const qs = q.map((qi, pos) => {
      const x = qi.slice(hh * qh, (hh + 1) * qh);
      const o = new Float64Array(qh);
      o.set(x.slice(0, nope));
      o.set(rot(x.slice(nope), pos, spec.rope.theta), nope);
      return o;
    });
    const ks = kv.map((kvi, pos) => {
      const o = new Float64Array(qh);
      o.set(kvi.slice(hh * (nope + vd), hh * (nope + vd) + nope));
      o.set(kPe[pos], nope);
      return o;
    });
    const vs = kv.map((kvi) => kvi.slice(hh * (nope + vd) + nope, (hh + 1) * (nope + vd)));
    softmaxAttend(qs, ks, vs, a.scale).forEach((oi, i) => att[i].set(oi, hh * vd));
  }
  return att.map((x) => matvec(W(`${p}self_attn.o_proj.weight`), x, H, nHeads * vd));
}

/** Routed experts' (w1, w3, w2) for expert e, under whichever names the checkpoint uses. */
function expert(
  W: (n: string) => Float32Array,
  has: (n: string) => boolean,
  p: string,
  e: number,
  H: number,
  I: number,
) {
  for (const [base, n1, n3, n2] of [
    [`${p}block_sparse_moe.experts.${e}.`, "w1", "w3", "w2"],
    [`${p}mlp.experts.${e}.`, "gate_proj", "up_proj", "down_proj"],
  ]) {
    if (has(`${base}${n1}.weight`))
      return (x: Vec) => swiglu(x, W(`${base}${n1}.weight`), W(`${base}${n3}.weight`), W(`${base}${n2}.weight`), H, I);
  }
  for (const [gu, dn] of [
    [`${p}mlp.experts.gate_up_proj`, `${p}mlp.experts.down_proj`],
    [`${p}block_sparse_moe.input_linear.weight`, `${p}block_sparse_moe.output_linear.weight`],
  ]) {
    if (has(gu))
      return (x: Vec) =>
        swiglu(x, W(gu), W(gu), W(dn).subarray(e * H * I, (e + 1) * H * I), H, I, e * 2 * I, e * 2 * I + I);
  }
  throw new Error(`reference: no expert ${e} in ${p}`);
}

function moe(spec: ModelSpec, W: (n: string) => Float32Array, has: (n: string) => boolean, p: string, h: Vec[]) {
  const { dModel: H, dFf: I, nExperts: E, topK } = spec;
  const routerName = [
    `${p}mlp.gate.weight`,
    `${p}block_sparse_moe.gate.weight`,
    `${p}block_sparse_moe.router.layer.weight`,
  ].find(has)!;
  const r = spec.router;
  const ids: number[][] = [];
  const weights: number[][] = [];
  const outs: Vec[] = [];
  for (const x of h) {
    const logits = Array.from(matvec(W(routerName), x, E, H));
    let scores: number[];
    if (r.kind === "softmax-topk" || r.scoring === "softmax") {
      const m = Math.max(...logits);
      const e = logits.map((l) => Math.exp(l - m));
      const z = e.reduce((a, b) => a + b, 0);
      scores = e.map((v) => v / z);
    } else scores = logits.map((l) => 1 / (1 + Math.exp(-l)));
    let sel = scores.slice();
    if (r.kind === "group-limited-topk") {
      if (r.selectionBias) sel = sel.map((s, e) => s + W(`${p}mlp.gate.e_score_correction_bias`)[e]);
      const size = E / r.nGroup;
      const gs = Array.from({ length: r.nGroup }, (_, g) => {
        const m = sel.slice(g * size, (g + 1) * size).sort((a, b) => b - a);
        return r.groupScore === "max" ? m[0] : m[0] + (m[1] ?? 0);
      });
      const keep = [...gs.keys()].sort((a, b) => gs[b] - gs[a]).slice(0, r.topkGroup);
      sel = sel.map((s, e) => (keep.includes(Math.floor(e / size)) ? s : -Infinity));
    }
    const chosen = [...sel.keys()].sort((a, b) => sel[b] - sel[a]).slice(0, topK);
    let w = chosen.map((e) => scores[e]);
    const renorm = r.renormalize;
    const scale = r.kind === "group-limited-topk" ? r.routedScale : 1;
    if (renorm) {
      const s = w.reduce((a, b) => a + b, 0);
      w = w.map((v) => v / s);
    }
    w = w.map((v) => v * scale);
    ids.push(chosen);
    weights.push(w);
    const o = new Float64Array(H);
    chosen.forEach((e, j) => expert(W, has, p, e, H, I)(x).forEach((val, d) => (o[d] += w[j] * val)));
    const s = spec.sharedExperts;
    if (s) {
      let y: Vec;
      if (has(`${p}shared_mlp.input_linear.weight`)) {
        y = swiglu(
          x,
          W(`${p}shared_mlp.input_linear.weight`),
          W(`${p}shared_mlp.input_linear.weight`),
          W(`${p}shared_mlp.output_linear.weight`),
          H,
          s.dFf,
          0,
          s.dFf,
        );
      } else {
        const base = has(`${p}mlp.shared_expert.gate_proj.weight`)
          ? `${p}mlp.shared_expert.`
          : `${p}mlp.shared_experts.`;
        y = swiglu(x, W(`${base}gate_proj.weight`), W(`${base}up_proj.weight`), W(`${base}down_proj.weight`), H, s.dFf);
      }
      const g = s.gated ? 1 / (1 + Math.exp(-matvec(W(`${p}mlp.shared_expert_gate.weight`), x, 1, H)[0])) : 1;
      y.forEach((val, d) => (o[d] += g * val));
    }
    outs.push(o);
  }
  return { ids, weights, out: outs };
}
