/**
 * @module StageHost: a Durable Object holding one contiguous range of a model's layers — their
 * dense weights (attention, norms, router, shared experts, dense MLPs) in Wasm memory under
 * STAGE_HOST_BUDGET_MB — and the KV caches of the sessions passing through, under
 * STAGE_KV_BUDGET_MB. An instance holding no layers is a session driver (`decode`): it runs a
 * request's decode loop in the region and streams the tokens back. It runs its layers with the
 * same `ModelForward` the Worker uses, sends its MoE layers' routed experts through the same
 * `runExperts` fan-out, and passes the residual stream on to the next stage itself (see
 * serving/stage-protocol.ts).
 */
import { pipelineRpcTimeoutMs, RpcDeadlineError, withDeadline } from "../platform/deadline";
import { DurableObject } from "cloudflare:workers";
import { createKernels } from "../kernels/workers";
import { emptyLoadStats, layerHeldBytes, loadLayer, type LoadStats } from "../model/dense-layers";
import { isModelChanged, modelVersion, openModelFromR2 } from "../platform/model-store";
import { formatMiB } from "../platform/format";
import { Flight, shareWork } from "../platform/shared-work";
import { flushExpertEventsSoon } from "../platform/events";
import { hostKeepAliveMs, KeepAlive } from "../platform/keep-alive";
import { MemoryPeak, type MemoryPeakStats } from "../platform/memory-peak";
import { currentPlacement, flushLoad, flushLoadSoon, runExperts } from "../experts/expert-client";
import { QueueFullError } from "../platform/coalescer";
import { StageCallError, type StageBatcher } from "./stage-batcher";
import { stageBatcherFor } from "./stage-pass";
import { parseRoutingOptions } from "../gating/options";
import { ModelForward, type ExpertRunner, type Session } from "../serving/forward";
import { placementInitFor, type ModelPlacementInit } from "../serving/placement-init";
import type { ModelRuntime } from "../serving/model-runtime";
import { getRuntimeOf } from "../serving/runtime-cache";
import { encodeFailure, encodeToken, sampledTokens, type DecodeRequest } from "../serving/decode-loop";
import { createRng } from "../serving/sampling";
import type { Routing } from "../gating/router";
import {
  KV_RETRY_AFTER_MS,
  readStageBudgets,
  STAGE_OVERLOAD_RETRY_MS,
  SESSION_IDLE_MS,
  STAGE_LOAD_CHUNK_BYTES,
  STAGE_SCRATCH_BYTES,
} from "../serving/stage-budgets";
import { KvLedger } from "../serving/kv-ledger";
import type {
  StageDecodeResult,
  StageFailure,
  StageFailureCode,
  StageHop,
  StageHostStats,
  StageLayerTrace,
  StageMoeResult,
  StageRunRequest,
  StageRunOk,
  StageRunResult,
} from "../serving/stage-protocol";

/** What one instance holds once opened. */
export interface StagePart {
  model: string;
  first: number;
  end: number;
  forward: ModelForward;
  bytes: number;
  init: ModelPlacementInit;
  load: LoadStats & { ms: number };
  /** The upload its layers were read from. */
  version: string;
  /**
   * Runs calls one pass at a time, merging concurrent ones into one pass over the layers when BATCHING
   * is on and that is exact here (`merges`); null only while the part is being built.
   */
  batcher: StageBatcher | null;
}

class StageError extends Error {
  constructor(
    readonly code: StageFailureCode,
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

export class StageHost extends DurableObject<Env> {
  #part: StagePart | null = null;
  /** The load under way, shared by calls arriving meanwhile (src/platform/shared-work.ts). */
  #opening: Flight<StagePart> | null = null;
  #kv: KvLedger<Session> | null = null;
  #name = "";
  /** Injected reset (chaos testing): the first run at a position ≥ this finds the instance evicted. */
  #resetAt: number | null = null;
  /** In memory while it served a call within HOST_KEEPALIVE_MS or holds sessions (their KV caches). */
  readonly #keepAlive = new KeepAlive(
    this.ctx,
    () => hostKeepAliveMs(this.env),
    () => (this.#kv?.size ?? 0) > 0,
  );
  /** High-water marks of weights + KV held and of Wasm memory (noted on admission, after runs, on stats). */
  readonly #peak = new MemoryPeak();
  /** As a session driver: the runtime it last drove (its memory is in stats). */
  #driven: ModelRuntime | null = null;

  /** Reserves a session's KV cache before its first chunk (admission: a full stage says "busy"). */
  async open(
    model: string,
    hop: StageHop,
    session: string,
    maxLen: number,
    version?: string,
  ): Promise<{ ok: true } | StageFailure> {
    try {
      this.#keepAlive.touch();
      const part = await this.#open(model, hop, version);
      const now = Date.now();
      if (!this.#kv!.get(session, now)) this.#admit(part, session, maxLen, now);
      return { ok: true };
    } catch (err) {
      return failure(err);
    }
  }

  /** Runs one chunk of one session through this stage, then through the rest of the route. */
  async run(req: StageRunRequest): Promise<StageRunResult> {
    const [r] = await this.runMany([req]);
    return r;
  }

  /**
   * Runs one chunk of each of several sessions (a session driver's decode step) through this stage
   * — submitted together, so they share one pass over the layers — then hands them on to the next
   * stage as ONE call: a step crosses the chain in one RPC per hop, not one per session. Every
   * request must name the same route; each gets its own result (its failure fails it alone).
   */
  async runMany(reqs: StageRunRequest[]): Promise<StageRunResult[]> {
    // Checked before any call starts: a call that started holds its session until released below.
    const routeOf = (r: StageRunRequest) =>
      Array.isArray(r?.route) ? r.route.map((h) => String(h?.name)).join(" ") : null;
    const route = reqs.length > 0 ? routeOf(reqs[0]) : null;
    const here = await Promise.all(
      reqs.map((req) =>
        route !== null && routeOf(req) === route
          ? this.#runHere(req)
          : { result: failure(new StageError("bad_request", "the calls of one runMany name different routes")) },
      ),
    );
    try {
      const rest = reqs[0]?.route.slice(1) ?? [];
      const going = here.flatMap((h, i) => (h.result.ok && rest.length > 0 ? [i] : []));
      const out: StageRunResult[] = here.map((h) => h.result);
      if (going.length === 0) return out;
      const call = this.env.STAGE_HOST.getByName(rest[0].name).runMany(
        going.map((i) => ({ ...reqs[i], x: (here[i].result as StageRunOk).y, route: rest })),
      );
      let next: StageRunResult[];
      try {
        next = await withDeadline(Promise.resolve(call), pipelineRpcTimeoutMs(this.env), `StageHost ${rest[0].name}`);
      } catch (err) {
        next = going.map(() => failure(err));
      }
      going.forEach((i, j) => {
        const n = next[j];
        const mine = here[i].result as StageRunOk;
        // The hop's one RPC is charged to the first session handed on (sums over calls stay true).
        out[i] = n.ok
          ? { ok: true, y: n.y, trace: [...mine.trace, ...n.trace], rpcs: mine.rpcs + (j === 0 ? 1 : 0) + n.rpcs }
          : n;
      });
      return out;
    } finally {
      for (const h of here) if ("release" in h) h.release();
    }
  }

  /**
   * This stage's layers for one request: its rows out (all of them) or its failure, and what
   * releases its session once the rest of the route is done with it.
   */
  async #runHere(req: StageRunRequest): Promise<{ result: StageRunOk | StageFailure; release: () => void }> {
    let acquired: { kv: KvLedger<Session>; part: StagePart } | null = null;
    // The session ended while this call ran on it (`end`): its KV cache is freed then, not under the call.
    const release = () => {
      const ended = acquired?.kv.release(req.session, Date.now());
      if (ended) acquired?.part.forward.endSession(ended);
      this.#notePeak();
    };
    try {
      this.#keepAlive.touch();
      const hop = req.route[0];
      if (!hop) throw new StageError("bad_request", "empty route");
      if (this.#resetAt !== null && req.start >= this.#resetAt) {
        // Chaos testing: this call finds the instance as an eviction leaves it — no layers, no sessions.
        this.#resetAt = null;
        this.#part = null;
        this.#opening = null;
        this.#kv = null;
      }
      const part = await this.#open(req.model, hop, req.version);
      const kv = this.#kv;
      // Another call of the same runMany may have found the instance reset (or a new upload
      // replaced the part) while this one waited for #open: its sessions are gone with the old part.
      if (!kv || this.#part !== part)
        throw new StageError("session_lost", `${this.#label}: the instance was reset while the call waited`);
      const now = Date.now();
      let s = kv.acquire(req.session, now);
      if (!s) {
        if (req.start !== 0)
          throw new StageError(
            "session_lost",
            `${this.#label}: session ${req.session} is unknown here (the instance was reset or evicted, ` +
              `or the session idle for ${SESSION_IDLE_MS} ms)`,
          );
        this.#admit(part, req.session, req.maxLen, now);
        s = kv.acquire(req.session, now)!;
      }
      // In use until this call (and the later stages it calls) ends: the idle alarm must not free it meanwhile.
      acquired = { kv, part };
      if (s.length !== req.start)
        throw new StageError(
          "bad_request",
          `${this.#label}: session ${req.session} is at position ${s.length}, the call starts at ${req.start}`,
        );
      const trace: StageLayerTrace[] = [];
      let rpcs = 0;
      const experts: ExpertRunner = async (layer, routing, h) => {
        const placement = await currentPlacement(this.env, part.init);
        const dModel = part.forward.spec.dModel;
        const r = await runExperts(this.env, placement, layer, routing, h, dModel, { modelVersion: part.version });
        rpcs += r.dispatch.rpcs;
        if (req.trace) trace.push(layerTrace(layer, routing, r.dispatch.rpcs));
        return r.out;
      };
      const rng = createRng((req.start * 2654435761) >>> 0);
      let y: Float32Array;
      // A traced call runs alone: its trace is its own routing, layer by layer.
      if (part.batcher && !req.trace) {
        const gone = () => kv.get(req.session, Date.now()) !== s;
        const hold = () => holdFor(kv, req.session, s, part);
        const r = await part.batcher.run({ session: s, x: req.x, start: req.start, rng, gone, hold }).catch((err) => {
          // A queue is a moment's congestion, not a full KV cache: a short retry, not KV_RETRY_AFTER_MS.
          if (err instanceof QueueFullError) throw new StageError("overloaded", err.message, STAGE_OVERLOAD_RETRY_MS);
          if (err instanceof StageCallError) throw new StageError(err.code, `${this.#label}: ${err.message}`);
          throw err;
        });
        y = r.y;
        rpcs += r.rpcs;
      } else y = await part.forward.layers(s, req.x, experts, rng);
      const waitUntil = (p: Promise<unknown>) => this.ctx.waitUntil(p);
      flushLoad(this.env, part.model, waitUntil);
      // This isolate's fan-out metrics (it ran the layers' experts) go to the MetricsHub too.
      flushExpertEventsSoon(this.env, waitUntil);
      // The last stage answers the request's last nOut rows; another hands every row on.
      if (req.route.length === 1) y = y.subarray(y.length - req.nOut * part.forward.spec.dModel).slice();
      return { result: { ok: true, y, trace, rpcs }, release };
    } catch (err) {
      return { result: failure(err), release };
    }
  }

  /**
   * Session driver: runs the decode loop of a session the Worker opened — embeddings, the stage
   * chain, the head shards, sampling — here in the model's region, and streams the token ids
   * back. Stops when the Worker cancels the stream (stop string, client abort) and frees the
   * session on every stage when done.
   */
  async decode(req: DecodeRequest & { maxLen: number }): Promise<StageDecodeResult> {
    try {
      this.#keepAlive.touch();
      const rt = await getRuntimeOf(this.env, req.model, req.version);
      this.#driven = rt;
      const session = rt.adoptSession(req.session, req.maxLen);
      // A native byte stream: the RPC system pumps each write to the Worker as it happens (a JS
      // ReadableStream's chunks were delivered in one burst at the end).
      const { readable, writable } = new IdentityTransformStream();
      const writer = writable.getWriter();
      // The Worker cancelling the stream (client gone, stop string) errors the writer: stop the
      // loop then, not at the next token's write — the token's expert and stage calls stop too.
      const gone = new AbortController();
      writer.closed.catch((err: unknown) => gone.abort(err));
      const tokens = sampledTokens(this.env, rt, session, req, gone.signal);
      const run = async () => {
        let inWrite = false; // a write that rejects: the Worker cancelled (stop string, client abort)
        try {
          for await (const id of tokens) {
            inWrite = true;
            await writer.write(encodeToken(id));
            inWrite = false;
          }
          await writer.close();
        } catch (err) {
          // A failure of the loop goes to the Worker in band, with its code and message (an abort would
          // reach it as a bare "disconnected prematurely"); a cancelled stream just stops.
          if (!inWrite) {
            console.error(`session driver ${this.#label}: ${err instanceof Error ? err.message : String(err)}`);
            const sent = await writer
              .write(encodeFailure(failure(err)))
              .then(() => writer.close())
              .then(() => true)
              .catch(() => false);
            if (!sent) await writer.abort(err).catch(() => {});
          } else await writer.abort(err).catch(() => {});
        } finally {
          await rt.endSession(session, this.env);
          flushExpertEventsSoon(this.env, (p) => this.ctx.waitUntil(p));
        }
      };
      this.ctx.waitUntil(run());
      const stream = readable;
      return { ok: true, tokens: stream };
    } catch (err) {
      return failure(err);
    }
  }

  /**
   * Chaos testing (/admin/fault/stage): the first `run` at a position ≥ `at` finds this instance as
   * an eviction leaves it — layers and every session's KV cache gone.
   */
  async injectReset(at: number): Promise<void> {
    this.#resetAt = at;
  }

  /**
   * Frees a session's KV cache (completion or client abort) — or, while a `run` is on it, has that
   * run free it when it ends. Unknown ids are ignored.
   */
  async end(session: string): Promise<void> {
    const s = this.#kv?.remove(session);
    if (s && this.#part) this.#part.forward.endSession(s);
    if (this.#part) flushLoadSoon(this.env, this.#part.model, (p) => this.ctx.waitUntil(p));
  }

  /** One MoE block of a layer held here on given inputs (verify's moe_layer check). */
  async moeBlock(model: string, hop: StageHop, layer: number, input: Float32Array): Promise<StageMoeResult> {
    try {
      this.#keepAlive.touch();
      const part = await this.#open(model, hop);
      const rng = createRng(0);
      let rpcs = 0;
      const experts: ExpertRunner = async (l, routing, h) => {
        const r = await runExperts(
          this.env,
          await currentPlacement(this.env, part.init),
          l,
          routing,
          h,
          part.forward.spec.dModel,
          { modelVersion: part.version },
        );
        rpcs += r.dispatch.rpcs;
        return r.out;
      };
      const { out, routing } = await part.forward.moeBlock(layer, input, experts, rng);
      return { ok: true, out, trace: layerTrace(layer, routing, rpcs) };
    } catch (err) {
      return failure(err);
    }
  }

  /**
   * Frees sessions idle for longer than SESSION_IDLE_MS (a client that vanished mid-stream), then
   * the keep-alive wakes the instance again while it holds sessions or served a call recently, which
   * keeps it — its layers and the sessions' KV caches — from being evicted between a slow session's calls.
   */
  override async alarm(): Promise<void> {
    const kv = this.#kv;
    if (kv && this.#part) for (const id of kv.idle(Date.now(), SESSION_IDLE_MS)) await this.end(id);
    await this.#keepAlive.alarm();
  }

  stats(): StageHostStats {
    const p = this.#part;
    const k = p?.forward.kernels;
    const budgets = readStageBudgets(this.env);
    return {
      name: this.#label,
      model: p?.model ?? null,
      first: p?.first ?? null,
      end: p?.end ?? null,
      kernels: k?.flavor ?? null,
      bytesHeld: p?.bytes ?? 0,
      budgetBytes: budgets.stageBytes,
      denseFormat: p ? budgets.denseFormat : null,
      load: p
        ? {
            ms: p.load.ms,
            reads: p.load.reads,
            bytesRead: p.load.bytesRead,
            maxJsScratchBytes: p.load.maxJsScratchBytes,
          }
        : null,
      kvBytesUsed: this.#kv?.usedBytes ?? 0,
      kvBudgetBytes: budgets.stageKvBytes,
      kvBytesPeak: this.#kv?.peak ?? 0,
      sessions: this.#kv?.size ?? 0,
      refused: this.#kv?.refused ?? 0,
      wasmBytesInUse: k?.bytesInUse ?? 0,
      wasmMemoryBytes: k?.memoryBytes ?? 0,
      peak: this.#notePeak(),
      driver: this.#driven?.memory(this.env) ?? null,
      driverSteps: this.#driven && this.#driven.stepStats.steps > 0 ? this.#driven.stepStats : null,
      replays: this.#driven?.replays ?? 0,
      // Null with BATCHING off: its passes carry one call each (merged-pass stats would all read 0).
      batching: p?.batcher?.merges ? p.batcher.stats() : null,
    };
  }

  #notePeak(): MemoryPeakStats {
    const p = this.#part;
    const bytesHeld = p ? p.bytes + (this.#kv?.usedBytes ?? 0) : 0;
    return this.#peak.note({ bytesHeld, wasmMemoryBytes: p?.forward.kernels.memoryBytes ?? 0 });
  }

  #admit(part: StagePart, id: string, maxLen: number, now: number): Session {
    const kv = this.#kv!;
    const need = part.forward.kvBytes(maxLen);
    const a = kv.admit(need);
    if (!a.ok && a.reason === "too_long") {
      throw new StageError(
        "too_long",
        `${maxLen} positions need ${formatMiB(need)} of KV cache in stage ${this.#label}; ` +
          `STAGE_KV_BUDGET_MB allows ${formatMiB(kv.budgetBytes)}`,
      );
    }
    if (!a.ok)
      throw new StageError(
        "busy",
        `stage ${this.#label} holds ${kv.size} sessions and has ${formatMiB(a.freeBytes)} of KV cache free, ` +
          `${formatMiB(need)} needed`,
        KV_RETRY_AFTER_MS,
      );
    let s: Session;
    try {
      s = part.forward.startSession(maxLen);
    } catch (err) {
      if (err instanceof Error && err.name === "MemoryBudgetError")
        throw new StageError("busy", `stage ${this.#label}: ${err.message}`, KV_RETRY_AFTER_MS);
      throw err;
    }
    kv.add(id, need, s, now);
    this.#keepAlive.holdNow(now);
    this.#notePeak();
    return s;
  }

  get #label(): string {
    return this.#name || this.ctx.id.name || this.ctx.id.toString();
  }

  /** The stage's layers of `model` (of upload `version` when given: a newer upload replaces them). */
  async #open(model: string, hop: StageHop, version?: string): Promise<StagePart> {
    const held = this.#part;
    if (held && version !== undefined && held.version !== version) {
      const now = await modelVersion(this.env.MODELS, model);
      if (now !== version)
        throw new StageError("model_changed", `"${model}": the caller read upload ${version}, R2 holds ${now}`);
      // A newer upload: its layers replace these whole (sessions of the old one end with them).
      if (this.#part === held) {
        this.#part = null;
        this.#opening = null;
        this.#kv = null;
      }
    }
    const part = await this.#openPart(model, hop);
    if (version !== undefined && part.version !== version)
      throw new StageError(
        "model_changed",
        `"${model}": the caller read upload ${version}, this stage holds ${part.version}`,
      );
    return part;
  }

  async #openPart(model: string, hop: StageHop): Promise<StagePart> {
    const p = this.#part;
    if (p) {
      if (p.model !== model || p.first !== hop.first || p.end !== hop.end) {
        throw new StageError(
          "bad_request",
          `this StageHost holds layers [${p.first}, ${p.end}) of "${p.model}", ` +
            `not [${hop.first}, ${hop.end}) of "${model}"`,
        );
      }
      return p;
    }
    this.#name = hop.name;
    const start = () => {
      const f: Flight<StagePart> = new Flight(() => this.#loadPart(model, hop));
      f.promise.catch(() => {
        if (this.#opening === f) this.#opening = null; // recover from a failed init: the next call tries again
      });
      this.#opening = f;
      return f;
    };
    return shareWork(() => this.#opening, start);
  }

  async #loadPart(model: string, hop: StageHop): Promise<StagePart> {
    const opened = await openModelFromR2(this.env.MODELS, model);
    const budgets = readStageBudgets(this.env);
    const { spec, ckpt } = opened;
    const format = budgets.denseFormat;
    // Exact bytes the matrices will take (DENSE_QUANT's format), checked before anything is read.
    let bytes = 0;
    for (let l = hop.first; l < hop.end; l++) bytes += layerHeldBytes(spec, l, format);
    if (bytes > budgets.stageBytes) {
      throw new StageError(
        "budget_exceeded",
        `layers [${hop.first}, ${hop.end}) of "${model}" need ${formatMiB(bytes)} as ${format}, ` +
          `STAGE_HOST_BUDGET_MB allows ${formatMiB(budgets.stageBytes)}`,
      );
    }
    const k = createKernels("best", { maxBytes: bytes + budgets.stageKvBytes + STAGE_SCRATCH_BYTES });
    const t0 = Date.now();
    const stats = emptyLoadStats();
    // Each tensor streams from R2 in ranged reads straight into Wasm memory (one chunk in JS at a time).
    const forward = await ModelForward.loadLayers(
      k,
      spec,
      hop.first,
      hop.end,
      (l) => loadLayer(k, ckpt, spec, l, { format, chunkBytes: STAGE_LOAD_CHUNK_BYTES, stats }),
      parseRoutingOptions(this.env),
    );
    this.#kv = new KvLedger<Session>(budgets.stageKvBytes);
    const part: StagePart = {
      model,
      first: hop.first,
      end: hop.end,
      forward,
      bytes: forward.heldBytes,
      init: placementInitFor(this.env, opened),
      load: { ...stats, ms: Date.now() - t0 },
      version: opened.version,
      batcher: null,
    };
    part.batcher = stageBatcherFor(this.env, part, budgets.stageKvBytes, hop.name);
    this.#part = part;
    return part;
  }
}

/** A pass's own hold on session `id` (still `s`): its release frees the KV cache if `end` came meanwhile. */
function holdFor(kv: KvLedger<Session>, id: string, s: Session, part: StagePart): (() => void) | null {
  const held = kv.acquire(id, Date.now());
  if (held !== s) {
    if (held) kv.release(id, Date.now());
    return null;
  }
  return () => {
    const ended = kv.release(id, Date.now());
    if (ended) part.forward.endSession(ended);
  };
}

function layerTrace(layer: number, r: Routing, rpcs: number): StageLayerTrace {
  return { layer, n: r.n, topK: r.topK, ids: r.ids, weights: r.weights, rpcs };
}

function failure(err: unknown): StageFailure {
  if (err instanceof StageError)
    return { ok: false, code: err.code, message: err.message, retryAfterMs: err.retryAfterMs };
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof Error && err.name === "MemoryBudgetError")
    return { ok: false, code: "busy", message, retryAfterMs: KV_RETRY_AFTER_MS };
  if (err instanceof Error && (err as { code?: string }).code === "expert_unavailable")
    return { ok: false, code: "expert_unavailable", message };
  // The session driver's own chain call met a full stage (stageError's 429) or one too short for the
  // request (its 400): the same code travels on in band, so the Worker answers as the stage did.
  if (err instanceof Error && (err as { code?: string }).code === "kv_cache_full")
    return { ok: false, code: "busy", message, retryAfterMs: KV_RETRY_AFTER_MS };
  if (err instanceof Error && (err as { code?: string }).code === "context_length_exceeded")
    return { ok: false, code: "too_long", message };
  // The session driver's own chain call met an overloaded stage: the same code travels on in band.
  if (err instanceof Error && (err as { code?: string }).code === "stage_overloaded")
    return { ok: false, code: "overloaded", message, retryAfterMs: STAGE_OVERLOAD_RETRY_MS };
  if (isModelChanged(err) || (err instanceof Error && (err as { code?: string }).code === "model_changed"))
    return { ok: false, code: "model_changed", message };
  if (
    err instanceof RpcDeadlineError ||
    (err instanceof Error && (err as { code?: string }).code === "upstream_timeout")
  )
    return { ok: false, code: "upstream_timeout", message };
  return { ok: false, code: "model_error", message };
}
