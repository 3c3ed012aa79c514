/**
 * @module The dense half of the forward pass — embeddings, attention, norms, routers, dense MLPs,
 * shared experts, output head — readable top to bottom (llama2.c style), for every family the
 * spec describes. One implementation for every placement: a process holds a part (a layer range,
 * with or without the ends) and runs `embed`, `layers` and `head` on it; `forward` is the three
 * in one process when it holds everything; `step` (the whole model) and `stepLayers` (a part's
 * layers) run several sessions' rows in one pass (continuous batching; their types and row
 * bookkeeping: forward-batch.ts). Routed experts are handed to an `ExpertRunner`: the
 * ExpertHost fan-out in the Worker (model-runtime.ts), or local kernels in Node tests.
 * Platform-agnostic: give it a `Kernels`.
 *
 * Per layer:  x += residual · attn(rmsnorm(x));  x += residual · ffn(rmsnorm(x))
 * ffn = dense MLP, or Σ_k w_k · expert_k(h) + [sigmoid(h·g)] · shared(h).
 *
 * A little over the ~400-line guideline on purpose: the whole forward pass reads top to bottom in
 * one file (llama2.c's habit), which is what makes it reviewable against the reference.
 */
import type { Kernels } from "../kernels/index";
import { denseScratchBytes, type DenseMatrix } from "../kernels/dense";
import type { DenseEnds, DenseLayerWeights, DenseWeights, MlpWeights, SharedWeights } from "../model/architectures";
import { freeHeld, holdLayer, type Held, type HeldLayer } from "../model/dense-layers";
import type { ModelSpec } from "../model/config";
import { flattenRouting, route, ROUTING_OFF, type Routing, type RoutingOptions } from "../gating/router";
import { expertEvents } from "../platform/events";
import { Arena, attentionStep, gqaRows, kvLayout, ropeTables, type Ptrs } from "./attention";
import { kvBytesPerPosition } from "./stage-budgets";
import {
  checkRoom,
  mergeRoutings,
  offsetOf,
  type LayerOutcome,
  type LayerSegment,
  type OwnedExpertRunner,
  type StepOutcome,
  type StepPart,
  type StepSegment,
} from "./forward-batch";

export type { LayerOutcome, LayerSegment, OwnedExpertRunner, StepOutcome, StepSegment } from "./forward-batch";

/**
 * Runs one layer's routed experts: h [n, dModel] → Σ_k weight_k · expert_k(h) [n, dModel].
 * May be asynchronous (RPC); it must not touch the Kernels' memory.
 */
export type ExpertRunner = (layer: number, routing: Routing, h: Float32Array) => Promise<Float32Array>;

/** Routed experts with each row's segment of a batched step (`owner`, null for one session's rows). */
type RowRunner = (layer: number, routing: Routing, h: Float32Array, owner: Int32Array | null) => Promise<Float32Array>;

/** Tokens per dense-MLP kernel call: bounds the [chunk, dFf] × 2 scratch whatever the prompt length. */
const MLP_TOKEN_CHUNK = 64;

/**
 * One request's KV cache for the layers this process holds: for held layer l (index l − first)
 * K [maxLen, nKvHeads, kHeadDim] and V [maxLen, nKvHeads, vHeadDim]. `length` = positions done.
 */
export class Session {
  length = 0;
  constructor(
    readonly maxLen: number,
    readonly k: number[],
    readonly v: number[],
  ) {}
}

export interface ForwardOptions {
  /** Logits for every token (else only the last). */
  allLogits?: boolean;
  /** Receives the routing of every MoE layer. */
  onRouting?: (layer: number, routing: Routing) => void;
}

/**
 * Which part of the dense model one process holds: layers [first, first + layers.length), and
 * the ends (embeddings, final norm, head) or not. The Worker of a small model holds everything;
 * with pipeline stages the Worker holds the ends and each StageHost a layer range — the same
 * class, the same methods, called by different processes.
 */
export interface DensePartWeights {
  ends: DenseEnds | null;
  /** The final norm alone, when the head and embeddings live on HeadHosts (`ends` null). */
  finalNorm?: Float32Array | null;
  first: number;
  layers: DenseLayerWeights[];
}

/** Uploads a weight tree into Wasm memory, keeping its shape. */
function upload<T>(k: Kernels, tree: T): Ptrs<T> {
  const walk = (v: unknown): unknown => {
    if (v instanceof Float32Array) return k.allocF32(v);
    if (Array.isArray(v)) return v.map(walk);
    if (typeof v === "object" && v !== null)
      return Object.fromEntries(Object.entries(v).map(([key, x]) => [key, walk(x)]));
    return v;
  };
  return walk(tree) as Ptrs<T>;
}

export class ModelForward {
  /** First layer held. */
  readonly first: number;
  /** One past the last layer held. */
  readonly end: number;

  private constructor(
    readonly spec: ModelSpec,
    readonly kernels: Kernels,
    private readonly ends: Ptrs<DenseEnds> | null,
    private readonly normW: number | null,
    private readonly layerW: HeldLayer[],
    first: number,
    readonly routing: RoutingOptions,
  ) {
    this.first = first;
    this.end = first + layerW.length;
    const ms: DenseMatrix[] = [];
    collectMatrices(layerW, ms);
    this.heldBytes = ms.reduce((b, m) => b + m.bytes, 0);
    // The int8 matrix with the widest padded rows sizes the per-call activation scratch.
    const q8 = ms.filter((m) => m.format === "int8");
    this.#q8Widest =
      q8.length === 0 ? null : q8.reduce((a, b) => (denseScratchBytes(b, 1) > denseScratchBytes(a, 1) ? b : a));
  }

  /** Bytes of the layers' weights in Wasm memory (as held: f32, bf16 or int8 matrices). */
  readonly heldBytes: number;
  readonly #q8Widest: DenseMatrix | null;

  /** Copies the whole dense model into the kernels' memory (a model that fits one isolate). */
  static create(k: Kernels, spec: ModelSpec, dense: DenseWeights, routing: RoutingOptions = ROUTING_OFF): ModelForward {
    const { layers, embed, finalNorm, lmHead } = dense;
    return ModelForward.createPart(k, spec, { ends: { embed, finalNorm, lmHead }, first: 0, layers }, routing);
  }

  /** Copies one part of the dense model into the kernels' memory. */
  static createPart(
    k: Kernels,
    spec: ModelSpec,
    part: DensePartWeights,
    routing: RoutingOptions = ROUTING_OFF,
  ): ModelForward {
    const ends = part.ends ? upload(k, part.ends) : null;
    const norm = ends ? ends.finalNorm : part.finalNorm ? k.allocF32(part.finalNorm) : null;
    const layers = part.layers.map((w, i) => holdLayer(k, spec, part.first + i, w));
    return new ModelForward(spec, k, ends, norm, layers, part.first, routing);
  }

  /**
   * Builds a part of layers [first, end) one layer at a time, each loaded straight into these
   * kernels' memory by `loadLayer` (src/model/dense-layers.ts `loadLayer` streams it from the
   * checkpoint: the load peaks at the weights in Wasm plus one read chunk in JS). `finalNorm`: the
   * part also applies the final norm (a part whose head runs on HeadHosts). A failed load frees
   * what was loaded.
   */
  static async loadLayers(
    k: Kernels,
    spec: ModelSpec,
    first: number,
    end: number,
    loadLayer: (l: number) => Promise<HeldLayer>,
    routing: RoutingOptions = ROUTING_OFF,
    ends: { ends: DenseEnds | null; finalNorm?: Float32Array | null } = { ends: null },
  ): Promise<ModelForward> {
    const layers: HeldLayer[] = [];
    try {
      for (let l = first; l < end; l++) layers.push(await loadLayer(l));
    } catch (err) {
      freeHeld(k, layers);
      throw err;
    }
    const e = ends.ends ? upload(k, ends.ends) : null;
    const norm = e ? e.finalNorm : ends.finalNorm ? k.allocF32(ends.finalNorm) : null;
    return new ModelForward(spec, k, e, norm, layers, first, routing);
  }

  /** Whether this part holds every layer and the ends (nothing runs elsewhere). */
  get whole(): boolean {
    return this.ends !== null && this.first === 0 && this.end === this.spec.nLayers;
  }

  /** KV-cache bytes one session of maxLen positions takes in the layers held here. */
  kvBytes(maxLen: number): number {
    return maxLen * kvBytesPerPosition(this.spec, this.first, this.end);
  }

  /** A KV cache for up to maxLen positions of the layers held; free it with `endSession`. */
  startSession(maxLen: number): Session {
    const { nKvHeads, kHeadDim, vHeadDim } = kvLayout(this.spec.attention);
    const k: number[] = [];
    const v: number[] = [];
    try {
      for (let l = this.first; l < this.end; l++) {
        k.push(this.kernels.alloc(maxLen * nKvHeads * kHeadDim * 4));
        v.push(this.kernels.alloc(maxLen * nKvHeads * vHeadDim * 4));
      }
    } catch (err) {
      for (const p of [...k, ...v]) this.kernels.free(p);
      throw err;
    }
    return new Session(maxLen, k, v);
  }

  endSession(s: Session): void {
    for (const p of [...s.k, ...s.v]) this.kernels.free(p);
    s.k.length = 0;
    s.v.length = 0;
  }

  /**
   * Runs `tokens` at positions session.length… through the whole model, appending to the KV cache.
   * Returns logits [nOut, vocab] for the last token (nOut = 1) or every token (`allLogits`).
   */
  async forward(
    s: Session,
    tokens: number[],
    experts: ExpertRunner,
    rng: () => number,
    opts: ForwardOptions = {},
  ): Promise<Float32Array> {
    if (!this.whole) throw new Error(`internal: this part holds layers [${this.first}, ${this.end}) only`);
    const { dModel } = this.spec;
    const n = tokens.length;
    const nOut = opts.allLogits ? n : 1;
    const arena = new Arena(this.kernels);
    try {
      const x = arena.f32(n * dModel); // [n, dModel] residual stream
      this.#embedInto(x, tokens);
      await this.#layers(s, x, n, experts, rng, opts.onRouting);
      return this.#head(x + (n - nOut) * dModel * 4, nOut);
    } finally {
      arena.free();
    }
  }

  /**
   * Whether `step` gives every segment, bit for bit, what `forward` gives it alone: `layersExact`,
   * and the whole model here (embeddings and head; the f32 head matmul's rows are batch-independent
   * for any vocabulary, tests/unit/kernels/batch-rows-contract.ts).
   */
  get stepExact(): boolean {
    return this.whole && this.layersExact;
  }

  /**
   * Whether `stepLayers` gives every segment, bit for bit, what `layers` gives it alone. Every dense
   * kernel a layer runs computes each row the same whatever rows share the call — f32, bf16 and
   * int8-group matmuls (ragged output counts included), the fused f32 MLP, the scalar SiLU, the
   * per-row norms and RoPE (batch-rows contract) — and attention runs per session over its own
   * KV cache; what remains is the attention kind: GQA has a batched path (`gqaRows`), MLA not yet.
   */
  get layersExact(): boolean {
    return this.spec.attention.kind === "gqa";
  }

  /**
   * Wasm scratch of a batched step of `rows` rows of which `outRows` want logits, for sessions of up
   * to `maxLen` positions: per row the residual, normed and attention-output rows, the rope tables,
   * q/attention/k/v rows, router logits and the int8 activations; per row wanting logits (only where
   * the part holds the head) a head row; fixed, the dense-MLP chunk and the attention scores.
   */
  stepScratchBytes(rows: number, outRows: number, maxLen: number): number {
    // Called per step member while a step is picked: the model's part is computed once.
    const c = (this.#scratchCosts ??= this.#computeScratchCosts());
    return c.fixed + 4 * maxLen + rows * c.perRow + outRows * c.perOut;
  }

  #scratchCosts: { fixed: number; perRow: number; perOut: number } | undefined;

  #computeScratchCosts(): { fixed: number; perRow: number; perOut: number } {
    const { dModel, vocabSize, nExperts, rope, attention: a } = this.spec;
    const qDim = a.kind === "gqa" ? a.nHeads * a.headDim : 0;
    const kvDim = a.kind === "gqa" ? a.nKvHeads * a.headDim : 0;
    // The int8 matrices' quantized activations: per row, what one token of the widest needs.
    const q8 = this.#q8Widest === null ? 0 : denseScratchBytes(this.#q8Widest, 1);
    const perRow = 4 * (5 * dModel + rope.rotDim + 2 * qDim + 2 * kvDim + nExperts) + q8 + 64;
    let dFf = this.spec.sharedExperts?.dFf ?? 0;
    for (const l of this.spec.layers) if (l.kind === "dense") dFf = Math.max(dFf, l.dFf);
    const fixed = 4 * MLP_TOKEN_CHUNK * (dModel + 2 * dFf + 1) + 1024;
    return { fixed, perRow, perOut: this.ends ? 4 * (2 * dModel + vocabSize) : 0 };
  }

  /**
   * Rows a batched pass over this part may carry so that its scratch fits `scratchBytes` for sessions
   * of up to `maxLen` positions, every row counted as wanting logits where the part holds the head.
   * At least 1 (a single decode row always runs).
   */
  stepRowsFitting(scratchBytes: number, maxLen: number): number {
    const fixed = this.stepScratchBytes(0, 0, maxLen);
    const perRow = this.stepScratchBytes(1, 1, maxLen) - fixed;
    return Math.max(1, Math.floor((scratchBytes - fixed) / perRow));
  }

  /**
   * One step of several sessions at once (continuous batching): every segment's tokens go through
   * the layers together (`stepLayers`), and one head pass gives the logits of the segments that
   * want them. Appends to each session's KV cache. A segment whose expert rows were lost fails
   * alone. Only when `stepExact`.
   */
  async step(segs: StepSegment[], experts: OwnedExpertRunner): Promise<StepOutcome[]> {
    const { dModel } = this.spec;
    const k = this.kernels;
    const parts = segs.map((g) => ({ session: g.session, n: g.tokens.length, rng: g.rng }));
    checkRoom(parts);
    const n = parts.reduce((t, p) => t + p.n, 0);
    const arena = new Arena(k);
    try {
      const x = arena.f32(n * dModel);
      this.#embedInto(
        x,
        segs.flatMap((g) => g.tokens),
      );
      const failed = await this.#stepLayers(parts, x, n, experts);
      // The head over the last row of every segment that wants logits.
      const want = segs.flatMap((g, i) => (g.nOut === 1 && !failed.has(i) ? [i] : []));
      const logits = new Map<number, Float32Array>();
      if (want.length > 0) {
        const xs = arena.f32(want.length * dModel);
        const all = k.f32(x, n * dModel);
        const rows = k.f32(xs, want.length * dModel);
        want.forEach((i, j) => {
          const last = offsetOf(parts, i) + parts[i].n - 1;
          rows.set(all.subarray(last * dModel, (last + 1) * dModel), j * dModel);
        });
        const out = this.#head(xs, want.length);
        const v = this.spec.vocabSize;
        want.forEach((i, j) => logits.set(i, out.slice(j * v, (j + 1) * v)));
      }
      return segs.map((_, i) =>
        failed.has(i)
          ? { ok: false, error: failed.get(i) }
          : { ok: true, logits: logits.get(i) ?? new Float32Array(0) },
      );
    } finally {
      arena.free();
    }
  }

  /**
   * The layers held here over several sessions' residual rows at once (continuous batching in a
   * pipeline stage): norms, projections and dense MLPs over all rows, attention per session over its
   * own KV cache, one expert call per MoE layer for all rows (`owner` names each row's segment).
   * Each segment gets its own rows back [n, dModel] — bit for bit what `layers` gives it alone when
   * `layersExact` — or its own failure (its expert rows were lost; its session does not advance).
   */
  async stepLayers(segs: LayerSegment[], experts: OwnedExpertRunner): Promise<LayerOutcome[]> {
    const { dModel } = this.spec;
    const k = this.kernels;
    const parts = segs.map((g) => {
      const rows = g.x.length / dModel;
      if (!Number.isInteger(rows) || rows < 1)
        throw new RangeError(`x must hold n·${dModel} values, got ${g.x.length}`);
      return { session: g.session, n: rows, rng: g.rng };
    });
    checkRoom(parts);
    const n = parts.reduce((t, p) => t + p.n, 0);
    const arena = new Arena(k);
    try {
      const x = arena.f32(n * dModel);
      const xs = k.f32(x, n * dModel);
      segs.forEach((g, i) => xs.set(g.x, offsetOf(parts, i) * dModel));
      const failed = await this.#stepLayers(parts, x, n, experts);
      const all = k.f32(x, n * dModel);
      return parts.map((p, i) => {
        if (failed.has(i)) return { ok: false, error: failed.get(i) };
        const at = offsetOf(parts, i) * dModel;
        return { ok: true, y: all.slice(at, at + p.n * dModel) };
      });
    } finally {
      arena.free();
    }
  }

  /**
   * The layers held, over the rows x [n, dModel] (in Wasm memory, updated in place) of consecutive
   * segments; advances every session that did not fail. Answers the failed segments' errors.
   */
  async #stepLayers(
    parts: StepPart[],
    x: number,
    n: number,
    experts: OwnedExpertRunner,
  ): Promise<Map<number, unknown>> {
    const { dModel, rmsEps, multipliers, rope } = this.spec;
    const k = this.kernels;
    const segRows = parts.map((g, i) => ({ start: g.session.length, n: g.n, at: offsetOf(parts, i) }));
    const owner = new Int32Array(n);
    segRows.forEach((r, i) => owner.fill(i, r.at, r.at + r.n));
    const failed = new Map<number, unknown>();
    // `owner` is handed to #ffn, which gives the runner each row's segment — of the flattened slot
    // rows too when capacity dropped slots (runRouted): never guessed from the row count.
    const lostOf: RowRunner = (layer, routing, h, rowOwner) =>
      experts(layer, routing, h, rowOwner).then((r) => {
        for (const [i, e] of r.lost) if (!failed.has(i)) failed.set(i, e);
        return r.out;
      });
    const half = rope.rotDim / 2;
    const arena = new Arena(k);
    try {
      const h = arena.f32(n * dModel);
      const o = arena.f32(n * dModel);
      const cos = arena.f32(n * half);
      const sin = arena.f32(n * half);
      const ws = this.#weightScratch(arena, n);
      const scores = arena.f32(Math.max(...segRows.map((r) => r.start + r.n)));
      for (const r of segRows) {
        const c = k.f32(cos, n * half).subarray(r.at * half, (r.at + r.n) * half);
        ropeTables(c, k.f32(sin, n * half).subarray(r.at * half, (r.at + r.n) * half), rope, r.start, r.n);
      }
      for (let l = this.first; l < this.end; l++) {
        const L = this.layerW[l - this.first];
        const caches = parts.map((g, i) => ({
          ...segRows[i],
          kCache: g.session.k[l - this.first],
          vCache: g.session.v[l - this.first],
        }));
        k.rmsnorm(h, x, L.attnNorm.ptr, n, dModel, rmsEps);
        if (L.attention.kind !== "gqa") throw new Error("internal: a batched step needs GQA attention");
        // q/att (and k/v rows of several sessions) live for one layer only: freed before the next,
        // so a step's scratch holds them once (as stepScratchBytes counts), not once per layer.
        const layerArena = new Arena(k);
        try {
          gqaRows({ k, arena: layerArena, spec: this.spec, h, out: o, n, cos, sin, ws, scores }, L.attention, caches);
        } finally {
          layerArena.free();
        }
        addScaled(k.f32(x, n * dModel), k.f32(o, n * dModel), multipliers.residual);
        k.rmsnorm(h, x, L.mlpNorm.ptr, n, dModel, rmsEps);
        const ffn = await this.#ffn(l, h, n, ws, lostOf, () => 0, undefined, parts, owner);
        addScaled(k.f32(x, n * dModel), ffn, multipliers.residual);
      }
      // A failed segment's rows are meaningless: its session stays where it was (a retry rewrites them).
      parts.forEach((g, i) => {
        if (!failed.has(i)) g.session.length += g.n;
      });
      return failed;
    } finally {
      arena.free();
    }
  }

  /** Embeddings of `tokens` (× Granite's embedding_multiplier): [n, dModel]. */
  embed(tokens: number[]): Float32Array {
    const arena = new Arena(this.kernels);
    try {
      const x = arena.f32(tokens.length * this.spec.dModel);
      this.#embedInto(x, tokens);
      return this.kernels.f32(x, tokens.length * this.spec.dModel).slice();
    } finally {
      arena.free();
    }
  }

  /**
   * Runs the layers held here on the residual stream x [n, dModel] at positions
   * session.length…, appending to the KV cache; returns the new residual stream [n, dModel].
   */
  async layers(
    s: Session,
    xIn: Float32Array,
    experts: ExpertRunner,
    rng: () => number,
    onRouting?: ForwardOptions["onRouting"],
  ): Promise<Float32Array> {
    const n = xIn.length / this.spec.dModel;
    const arena = new Arena(this.kernels);
    try {
      const x = arena.f32(xIn.length);
      this.kernels.f32(x, xIn.length).set(xIn);
      await this.#layers(s, x, n, experts, rng, onRouting);
      return this.kernels.f32(x, xIn.length).slice();
    } finally {
      arena.free();
    }
  }

  /** Whether this part holds the embedding table and output head. */
  get holdsEnds(): boolean {
    return this.ends !== null;
  }

  /** Embedding rows read elsewhere [n, dModel] → the residual stream (× embedding_multiplier), in place. */
  scaleEmbeddings(rows: Float32Array): Float32Array {
    const m = this.spec.multipliers.embedding;
    if (m !== 1) for (let i = 0; i < rows.length; i++) rows[i] *= m;
    return rows;
  }

  /** The final norm on residual rows x [nOut, dModel] (what a HeadHost shard multiplies). */
  normed(xIn: Float32Array): Float32Array {
    if (this.normW === null) throw new Error("internal: this part holds no final norm");
    const { dModel, rmsEps } = this.spec;
    const arena = new Arena(this.kernels);
    try {
      const x = arena.f32(xIn.length);
      const h = arena.f32(xIn.length);
      this.kernels.f32(x, xIn.length).set(xIn);
      this.kernels.rmsnorm(h, x, this.normW, xIn.length / dModel, dModel, rmsEps);
      return this.kernels.f32(h, xIn.length).slice();
    } finally {
      arena.free();
    }
  }

  /** Final norm and output head on residual rows x [nOut, dModel]: logits [nOut, vocab]. */
  head(xIn: Float32Array): Float32Array {
    const arena = new Arena(this.kernels);
    try {
      const x = arena.f32(xIn.length);
      this.kernels.f32(x, xIn.length).set(xIn);
      return this.#head(x, xIn.length / this.spec.dModel);
    } finally {
      arena.free();
    }
  }

  #embedInto(x: number, tokens: number[]): void {
    const { dModel, multipliers } = this.spec;
    const w = this.#ends();
    const k = this.kernels;
    const xs = k.f32(x, tokens.length * dModel);
    for (let t = 0; t < tokens.length; t++) xs.set(k.f32(w.embed + tokens[t] * dModel * 4, dModel), t * dModel);
    if (multipliers.embedding !== 1) this.scaleEmbeddings(xs);
  }

  /** Output head on x [nOut, dModel] in Wasm memory, ÷ Granite's logits_scaling. */
  #head(x: number, nOut: number): Float32Array {
    const { dModel, vocabSize, rmsEps, multipliers } = this.spec;
    const w = this.#ends();
    const k = this.kernels;
    const arena = new Arena(k);
    try {
      const h = arena.f32(nOut * dModel); // [nOut, dModel] normed
      const logits = arena.f32(nOut * vocabSize); // [nOut, vocab]
      k.rmsnorm(h, x, w.finalNorm, nOut, dModel, rmsEps);
      k.matmul(logits, h, w.lmHead ?? w.embed, nOut, dModel, vocabSize);
      const out = k.f32(logits, nOut * vocabSize).slice();
      if (multipliers.logitsScale !== 1) for (let i = 0; i < out.length; i++) out[i] /= multipliers.logitsScale;
      return out;
    } finally {
      arena.free();
    }
  }

  #ends(): Ptrs<DenseEnds> {
    if (!this.ends) throw new Error("internal: this part holds no embeddings or output head");
    return this.ends;
  }

  /** The layers held, on x [n, dModel] in Wasm memory (updated in place); advances the session. */
  async #layers(
    s: Session,
    x: number,
    n: number,
    experts: ExpertRunner,
    rng: () => number,
    onRouting?: ForwardOptions["onRouting"],
  ): Promise<void> {
    const { dModel, rmsEps, multipliers, rope } = this.spec;
    const start = s.length;
    if (start + n > s.maxLen) throw new Error(`session holds ${s.maxLen} positions, asked for ${start + n}`);
    const k = this.kernels;
    const arena = new Arena(k);
    try {
      const h = arena.f32(n * dModel); // [n, dModel] normed
      const o = arena.f32(n * dModel); // [n, dModel] attention output
      const cos = arena.f32(n * (rope.rotDim / 2)); // [n, rotDim/2]
      const sin = arena.f32(n * (rope.rotDim / 2)); // [n, rotDim/2]
      const ws = this.#weightScratch(arena, n);
      ropeTables(k.f32(cos, n * (rope.rotDim / 2)), k.f32(sin, n * (rope.rotDim / 2)), rope, start, n);

      for (let l = this.first; l < this.end; l++) {
        const L = this.layerW[l - this.first];
        const kv = { kCache: s.k[l - this.first], vCache: s.v[l - this.first] };
        // Attention block.
        k.rmsnorm(h, x, L.attnNorm.ptr, n, dModel, rmsEps);
        attentionStep({ k, arena, spec: this.spec, h, out: o, ...kv, start, n, cos, sin, ws }, L.attention);
        addScaled(k.f32(x, n * dModel), k.f32(o, n * dModel), multipliers.residual);

        // Feed-forward block: dense MLP or MoE.
        k.rmsnorm(h, x, L.mlpNorm.ptr, n, dModel, rmsEps);
        const ffn = await this.#ffn(l, h, n, ws, experts, rng, onRouting);
        addScaled(k.f32(x, n * dModel), ffn, multipliers.residual);
      }
      s.length = start + n;
    } finally {
      arena.free();
    }
  }

  /**
   * One MoE block on given inputs [n, dModel] (the post-attention-norm activations): routed experts
   * plus shared experts, before the residual add (what golden fixtures record as moe_layer.output).
   */
  async moeBlock(
    layer: number,
    input: Float32Array,
    experts: ExpertRunner,
    rng: () => number,
  ): Promise<{ out: Float32Array; routing: Routing }> {
    if (this.spec.layers[layer]?.kind !== "moe")
      throw new RangeError(`layer ${layer} is not an MoE layer (MoE layers: ${this.spec.moeLayers.join(", ")})`);
    if (layer < this.first || layer >= this.end)
      throw new RangeError(`layer ${layer} is not held here (layers [${this.first}, ${this.end}))`);
    const n = input.length / this.spec.dModel;
    const arena = new Arena(this.kernels);
    try {
      const h = arena.f32(input.length);
      const ws = this.#weightScratch(arena, n);
      this.kernels.f32(h, input.length).set(input);
      let routing: Routing | null = null;
      const out = await this.#ffn(layer, h, n, ws, experts, rng, (_, r) => (routing = r));
      return { out, routing: routing! };
    } finally {
      arena.free();
    }
  }

  /** Activation scratch of the int8 matrices for n tokens (0: no int8 matrix held, none needed). */
  #weightScratch(arena: Arena, n: number): number {
    return this.#q8Widest === null ? 0 : arena.f32(Math.ceil(denseScratchBytes(this.#q8Widest, n) / 4));
  }

  /**
   * The feed-forward half of layer l on h [n, dModel] (in Wasm memory); returns [n, dModel] in JS
   * memory. ws: the int8 activation scratch for n tokens.
   */
  async #ffn(
    l: number,
    h: number,
    n: number,
    ws: number,
    experts: RowRunner,
    rng: () => number,
    onRouting?: (layer: number, r: Routing) => void,
    parts?: { n: number; rng: () => number }[],
    /** A batched step's segment of each token row (null: one session's rows). */
    owner: Int32Array | null = null,
  ): Promise<Float32Array> {
    const { dModel, nExperts, topK } = this.spec;
    const k = this.kernels;
    const w = this.layerW[l - this.first].ffn;
    switch (w.kind) {
      case "dense": {
        const kind = this.spec.layers[l];
        return this.#mlp(w.mlp, h, n, kind.kind === "dense" ? kind.dFf : 0, null, ws);
      }
      case "moe": {
        const arena = new Arena(k);
        let routing: Routing;
        let shared: Float32Array | null = null;
        let hCopy: Float32Array;
        try {
          const gate = arena.f32(n * nExperts); // [n, nExperts] router logits
          k.matmulDense(w.router, gate, h, n, 0); // routers are held f32: no scratch
          const bias = w.routerBias === null ? null : k.f32(w.routerBias.ptr, nExperts).slice();
          const logits = k.f32(gate, n * nExperts).slice();
          const routeRows = (from: number, m: number, r: () => number) =>
            route(this.spec.router, logits.subarray(from * nExperts, (from + m) * nExperts), m, nExperts, topK, {
              bias,
              options: this.routing,
              rng: r,
            });
          // A batched step routes each session's rows on their own (capacity, noise: as alone).
          routing = parts
            ? mergeRoutings(parts.map((p, i) => routeRows(offsetOf(parts, i), p.n, p.rng)))
            : routeRows(0, n, rng);
          // Shared experts run here, in the Worker: every token uses them, an RPC would buy nothing.
          if (w.shared !== null && this.spec.sharedExperts !== null)
            shared = this.#mlp(w.shared, h, n, this.spec.sharedExperts.dFf, w.shared.gate, ws);
          hCopy = k.f32(h, n * dModel).slice(); // leaves Wasm memory before the await
        } finally {
          arena.free();
        }
        onRouting?.(l, routing);
        const out = await runRouted(experts, l, routing, hCopy, dModel, owner);
        if (shared) for (let i = 0; i < out.length; i++) out[i] += shared[i];
        return out;
      }
    }
  }

  /**
   * SwiGLU MLP on h [n, dModel] in token chunks; with `gate`, each row × sigmoid(h·gate). f32
   * weights run the fused `expertFfn` kernel (the f32 model's own arithmetic); bf16 / int8 weights
   * run gate, up and down as dense matmuls with `siluMul` between (ws: int8 activation scratch).
   */
  #mlp(
    w: Held<MlpWeights> | Held<SharedWeights>,
    h: number,
    n: number,
    dFf: number,
    gate: DenseMatrix | null,
    ws: number,
  ): Float32Array {
    const { dModel } = this.spec;
    const k = this.kernels;
    const arena = new Arena(k);
    try {
      const chunk = Math.min(n, MLP_TOKEN_CHUNK);
      const y = arena.f32(chunk * dModel); // [chunk, dModel]
      const scratch = arena.f32(2 * chunk * dFf); // [2, chunk, dFf]
      const g = arena.f32(chunk); // [chunk, 1] shared-expert gate logits
      const out = new Float32Array(n * dModel);
      const fused = w.w1.format === "f32" && w.w3.format === "f32" && w.w2.format === "f32";
      for (let done = 0; done < n; done += chunk) {
        const m = Math.min(chunk, n - done);
        const hAt = h + done * dModel * 4;
        if (fused) k.expertFfn(y, hAt, w.w1.ptr, w.w3.ptr, w.w2.ptr, m, dModel, dFf, scratch);
        else {
          const up = scratch + m * dFf * 4;
          k.matmulDense(w.w1, scratch, hAt, m, ws);
          k.matmulDense(w.w3, up, hAt, m, ws);
          k.siluMul(scratch, scratch, up, m * dFf);
          k.matmulDense(w.w2, y, scratch, m, ws);
        }
        const ys = k.f32(y, m * dModel);
        if (gate !== null) {
          k.matmulDense(gate, g, hAt, m, 0); // the gate is held f32
          const gs = k.f32(g, m);
          for (let t = 0; t < m; t++) {
            const s = 1 / (1 + Math.exp(-gs[t]));
            for (let d = 0; d < dModel; d++) ys[t * dModel + d] *= s;
          }
        }
        out.set(ys, done * dModel);
      }
      return out;
    } finally {
      arena.free();
    }
  }
}

/**
 * Routed experts, with capacity-dropped slots removed first (the runner sees a plain routing).
 * Reports the layer's tokens and drops here, the one place every MoE layer call passes through.
 */
async function runRouted(
  experts: RowRunner,
  layer: number,
  routing: Routing,
  h: Float32Array,
  dModel: number,
  owner: Int32Array | null,
): Promise<Float32Array> {
  expertEvents()?.routed(layer, routing.n, routing.dropped ?? 0);
  if (!routing.dropped) return experts(layer, routing, h, owner);
  const { routing: flat, tokenOf } = flattenRouting(routing);
  // The runner's rows are now kept slots, not tokens: each owned by its token's segment.
  const flatOwner = owner && Int32Array.from(tokenOf, (t) => owner[t]);
  const rows = new Float32Array(flat.n * dModel);
  for (let i = 0; i < flat.n; i++) rows.set(h.subarray(tokenOf[i] * dModel, (tokenOf[i] + 1) * dModel), i * dModel);
  const y = flat.n > 0 ? await experts(layer, flat, rows, flatOwner) : new Float32Array(0);
  const out = new Float32Array(routing.n * dModel);
  for (let i = 0; i < flat.n; i++) {
    const o = tokenOf[i] * dModel;
    for (let d = 0; d < dModel; d++) out[o + d] += y[i * dModel + d];
  }
  return out;
}

/** Every matrix of a held weight tree. */
function collectMatrices(tree: unknown, out: DenseMatrix[]): void {
  if (typeof tree !== "object" || tree === null) return;
  if ("ptr" in tree && "format" in tree) out.push(tree as DenseMatrix);
  else for (const v of Object.values(tree)) collectMatrices(v, out);
}

/** dst += f · src */
function addScaled(dst: Float32Array, src: Float32Array, f: number): void {
  if (f === 1) for (let i = 0; i < dst.length; i++) dst[i] += src[i];
  else for (let i = 0; i < dst.length; i++) dst[i] += f * src[i];
}
