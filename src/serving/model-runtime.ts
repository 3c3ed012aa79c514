/**
 * @module The Worker's half of the model: dense weights (embeddings, attention, norms, routers,
 * dense-layer MLPs, shared experts, lm_head) in Wasm memory, loaded from R2 once per isolate, and
 * the forward pass of src/serving/forward.ts with its routed experts sent to the ExpertHost
 * fan-out (one RPC per instance per MoE layer). When the dense part does not fit the Worker (or
 * a stage count is forced), the Worker keeps the embeddings and head and the layers run on
 * StageHost pipeline stages (src/stages) — the same ModelForward code, split by layer range.
 *
 * A little over the ~400-line guideline: the one place that decides, per model, where each part
 * runs (Worker fast path, stages, head shards, session driver); splitting it would scatter that.
 */
import { pipelineRpcTimeoutMs, withDeadline } from "../platform/deadline";
import { createKernels } from "../kernels/workers";
import { WASM_MAX_BYTES } from "../kernels/index";
import { denseEndsBytes, denseLayerBytes, loadDenseEnds, loadFinalNorm } from "../model/architectures";
import { CheckpointEmbeddings, type EmbeddingSource } from "../model/embeddings";
import { layerHeldBytes, loadLayer } from "../model/dense-layers";
import type { HeadPlacement } from "../coordinator/head-placement";
import { HeadError, headPlacementFor, loadHead, runHead } from "../head/head-client";
import { HeadEmbeddings } from "../head/head-embeddings";
import { headRowFormat } from "../head/head-store";
import type { ModelSpec } from "../model/config";
import { TextTokenizer } from "../model/tokenizer";
import { parseRoutingOptions } from "../gating/options";
import type { Routing, RoutingOptions } from "../gating/router";
import {
  batchMembers,
  currentPlacement,
  joinBatch,
  keepRequestAlive,
  runExperts,
  runExpertsOwned,
  type LayerDispatch,
} from "../experts/expert-client";
import type { Placement } from "../coordinator/placement";
import { planPipeline, PipelinePlanError, type PipelinePlacement } from "../coordinator/pipeline-placement";
import { openModelFromR2 } from "../platform/model-store";
import type { FileStore } from "../model/file-stores";
import { readBudgets, WORKER_SCRATCH_BYTES, workerKvBudget } from "../platform/budgets";
import { formatMiB } from "../platform/format";
import { MemoryPeak, type MemoryPeakStats } from "../platform/memory-peak";
import { ApiError, BudgetError } from "../errors";
import {
  EMBED_CACHE_BYTES,
  KV_RETRY_AFTER_MS,
  PREFILL_CHUNK,
  readStageBudgets,
  STAGE_LOAD_CHUNK_BYTES,
} from "./stage-budgets";
import { KvLedger } from "./kv-ledger";
import { SessionLostError, StageChain, stageError } from "./stage-client";
import { decodeTokenStream, type DecodeRequest } from "./decode-loop";
import type { StageLayerTrace } from "./stage-protocol";
import {
  ModelForward,
  type ExpertRunner,
  type OwnedExpertRunner,
  type Session,
  type StepOutcome,
  type StepSegment,
} from "./forward";
import { placementInitFor, type ModelPlacementInit } from "./placement-init";
import { HeadBatcher } from "./head-batcher";
import { batchingEnabled, prefixSharingEnabled, sessionDrivers, type Vars } from "../platform/env";
import { kvCopier, RETAIN_MIN_TOKENS, type CopyPositions } from "./prefix-share";
import { kvLayout } from "./attention";
import { StepBatcher, type StepLimits, type StepStreamSpec } from "./step-batcher";
import { PipelineSessions, runPipelineStep, type PipelineStepParts } from "./pipeline-steps";
import { expertEvents } from "../platform/events";

export type { ModelPlacementInit } from "./placement-init";

/**
 * Head rows' logits (or the driver's own head scratch) one pipeline step may hold: a session driver
 * serves all its share of the model's generations in one isolate (128 MB; every generation with
 * SESSION_DRIVERS = 1), so a step's logits are bounded —
 * 170 rows of granite's 49155-word vocabulary, 55 of a 151936-word one, at least one row a step.
 */
const PIPELINE_STEP_LOGITS_BYTES = 32 * 1024 * 1024;

/** Replays of a pipeline session's tokens after stages lost its KV cache, at most (each stage may lose it once). */
const MAX_REPLAYS = 4;

/** What a forward pass can record for inspection (verify, tests): per-layer routing. */
export interface ForwardTrace {
  routing: { layer: number; routing: Routing }[];
  dispatch: Pick<LayerDispatch, "layer" | "rpcs">[];
}

/**
 * One request's place in the model: its KV cache in the Worker (layers the Worker runs) and, with
 * pipeline stages, its id in every stage's KV cache.
 */
export class RuntimeSession {
  length = 0;
  /** Token ids run so far, kept for pipeline sessions: replayed when a stage lost its KV cache. */
  readonly fed: number[] = [];
  /** Replays done (bounded: a stage that keeps losing sessions fails the request). */
  replays = 0;
  /**
   * Stops counting this session at the expert batch barrier (src/experts/layer-batcher.ts): called
   * when its last forward pass is done, so the others do not wait for a request that will not come.
   */
  leaveBatch: () => void = () => {};
  constructor(
    readonly id: string,
    readonly maxLen: number,
    readonly local: Session | null,
  ) {}
}

/** RPCs the Worker made for the last forward call (bench:e2e, tests). */
export interface ForwardRpcs {
  stageCalls: number;
  /** Every RPC of the call, inside the region included (stage hops + expert fan-out). */
  total: number;
}

export class ModelRuntime {
  /** RPCs of the most recent forward call. */
  lastRpcs: ForwardRpcs = { stageCalls: 0, total: 0 };

  private constructor(
    readonly id: string,
    readonly spec: ModelSpec,
    readonly tokenizer: TextTokenizer | null,
    private readonly model: ModelForward,
    private readonly placementInit: ModelPlacementInit,
    /** Where the layers run: no stages = the Worker runs every layer. */
    readonly pipeline: PipelinePlacement,
    private readonly chain: StageChain | null,
    private readonly kv: KvLedger<Session>,
    /** The output head on HeadHost shards (null: the Worker holds it). */
    readonly head: HeadPlacement | null,
    /** Embedding rows when the Worker does not hold the table (tied: the HeadHosts; else R2). */
    private readonly embeddings: EmbeddingSource | null,
    /** The upload every weight here was read from; every host call names it (PinnedModel). */
    readonly version: string,
  ) {}

  /**
   * Loads model `id` from R2. `routing` = the deployer's routing knobs (default: from the vars
   * ROUTER_TEMPERATURE, CAPACITY_FACTOR, ROUTER_NOISE_STD; unset = off).
   */
  static async load(env: Env, id: string, routing: RoutingOptions = routingOptionsFromEnv(env)): Promise<ModelRuntime> {
    const opened = await openModelFromR2(env.MODELS, id);
    const { spec, ckpt } = opened;
    const budgets = readBudgets(env);
    const stageBudgets = readStageBudgets(env);
    // The head goes to HeadHost shards when forced (verify --head-shards) or when the embeddings
    // and head do not fit the Worker; the Worker then keeps the final norm (and, untied, a
    // bounded cache of embedding rows). Shards are sized in the format the HeadHosts hold the rows
    // (bf16 when stored bf16): sizing bf16 rows as f32 doubled the shards (Qwen3's 151936-row
    // head: 13 instead of 7 at 96 MiB).
    const head =
      stageBudgets.forcedHeadShards > 0 || denseEndsBytes(spec) > budgets.workerBytes
        ? {
            ...headPlacementFor(env, id, spec, {
              shards: stageBudgets.forcedHeadShards || undefined,
              format: headRowFormat(ckpt, spec),
            }),
            version: opened.version,
          }
        : null;
    let plan: PipelinePlacement;
    try {
      plan = planPipeline({
        model: id,
        layerBytes: spec.layers.map((_, l) => layerHeldBytes(spec, l, stageBudgets.denseFormat)),
        workerLayerBytes: spec.layers.map((_, l) => denseLayerBytes(spec, l)),
        endsBytes: workerHeldBytes(spec, head !== null, true),
        workerBytes: budgets.workerBytes,
        stageBytes: stageBudgets.stageBytes,
        forcedStages: stageBudgets.forcedStages,
      });
    } catch (err) {
      if (err instanceof PipelinePlanError)
        throw new BudgetError(`${err.message} (the dense part does not fit the Worker or the stages)`);
      throw err;
    }
    const tokenizer = await loadTokenizer(opened.store);
    const staged = plan.stages.length > 0;
    const held = workerHeldBytes(spec, head !== null, staged);
    if (held > budgets.workerBytes) {
      throw new BudgetError(
        `model "${id}" does not fit the Worker: its dense weights need ${formatMiB(held)}, ` +
          `WORKER_BUDGET_MB allows ${formatMiB(budgets.workerBytes)}`,
      );
    }
    const k = createKernels("best", {
      maxBytes: Math.min(WASM_MAX_BYTES, held + stageBudgets.workerKvBytes + WORKER_SCRATCH_BYTES),
    });
    // The layers the Worker runs itself stream into its Wasm memory with the StageHost's loader, as
    // f32 always (the fast path of small models keeps the f32 model's arithmetic and speed).
    const model = await ModelForward.loadLayers(
      k,
      spec,
      0,
      staged ? 0 : spec.nLayers,
      (l) => loadLayer(k, ckpt, spec, l, { format: "f32", chunkBytes: STAGE_LOAD_CHUNK_BYTES }),
      routing,
      head ? { ends: null, finalNorm: await loadFinalNorm(ckpt, spec) } : { ends: await loadDenseEnds(ckpt, spec) },
    );
    let embeddings: EmbeddingSource | null = null;
    if (head) {
      try {
        await loadHead(env, head);
      } catch (err) {
        if (err instanceof HeadError && err.code === "budget_exceeded") throw new BudgetError(err.message);
        throw err;
      }
      embeddings = spec.tieEmbeddings
        ? new HeadEmbeddings(env, head)
        : CheckpointEmbeddings.open(ckpt, spec, { cacheBytes: EMBED_CACHE_BYTES });
    }
    const ensure = () => env.COORDINATOR.getByName(id).ensurePipeline(plan);
    const pipeline = staged ? await withDeadline(ensure(), pipelineRpcTimeoutMs(env), "the Coordinator") : plan;
    const chain = staged ? new StageChain(id, pipeline, opened.version) : null;
    return new ModelRuntime(
      id,
      spec,
      tokenizer,
      model,
      placementInitFor(env, opened),
      pipeline,
      chain,
      new KvLedger(workerKvBudget(k.maxBytes, k.bytesInUse, stageBudgets.workerKvBytes)),
      head,
      embeddings,
      opened.version,
    );
  }

  get kernelFlavor(): string {
    return this.model.kernels.flavor;
  }

  /** Peaks since this runtime loaded in this isolate (admin /hosts: the Worker's own memory). */
  readonly #memoryPeak = new MemoryPeak();

  /** What this isolate holds for the model: dense weights, KV caches (ledger), Wasm memory. */
  memory(env: Vars): RuntimeMemoryStats {
    const k = this.model.kernels;
    const weightBytes = workerHeldBytes(this.spec, this.head !== null, this.drivenRemotely);
    // Weights are fixed and the ledger keeps its own KV peak, so weights + KV peak is the exact
    // high-water of the budgeted bytes; a linear memory only grows, so its size now is its peak.
    const peak = this.#memoryPeak.note({ bytesHeld: weightBytes + this.kv.peak, wasmMemoryBytes: k.memoryBytes });
    return {
      model: this.id,
      weightBytes,
      weightBudgetBytes: readBudgets(env).workerBytes,
      kvBytesUsed: this.kv.usedBytes,
      kvBytesPeak: this.kv.peak,
      kvBudgetBytes: this.kv.budgetBytes,
      wasmBytesInUse: k.bytesInUse,
      wasmMemoryBytes: k.memoryBytes,
      wasmLimitBytes: k.maxBytes,
      peak,
    };
  }

  /** The routing knobs in force (all off unless the deployer set them). */
  get routingOptions(): RoutingOptions {
    return this.model.routing;
  }

  /**
   * A session for up to maxLen positions: the KV cache of the layers the Worker runs is reserved
   * now (a full budget → 429 with Retry-After); stages reserve theirs on `openSession` or on the
   * first chunk. Free it with `endSession`.
   */
  startSession(maxLen: number): RuntimeSession {
    const id = crypto.randomUUID();
    if (this.model.end === this.model.first) return new RuntimeSession(id, maxLen, null);
    const need = this.model.kvBytes(maxLen);
    // Finished generations kept for prefix sharing give their bytes back first, oldest first —
    // only when that makes room (under overload a refusal must not empty them for nothing).
    const kept = this.#steps?.retained;
    const free = () => this.kv.budgetBytes - this.kv.usedBytes;
    if (kept && need > free() && need <= free() + kept.bytes) while (need > free() && kept.evictOldest());
    const a = this.kv.admit(need);
    if (!a.ok && a.reason === "too_long") {
      throw ApiError.invalid(
        "max_tokens",
        `${maxLen} positions need ${formatMiB(need)} of KV cache; ` +
          `WORKER_KV_BUDGET_MB allows ${formatMiB(this.kv.budgetBytes)} per Worker isolate`,
        "context_length_exceeded",
      );
    }
    if (!a.ok)
      throw busy(
        `the Worker's KV cache is full (${this.kv.size} sessions, ${formatMiB(a.freeBytes)} free, ` +
          `${formatMiB(need)} needed)`,
      );
    let local: Session | null = null;
    while (local === null) {
      try {
        local = this.model.startSession(maxLen);
      } catch (err) {
        if (!(err instanceof Error && err.name === "MemoryBudgetError")) throw err;
        // The ledger had room but the memory no block this size (fragmentation): kept donors go first.
        if (!kept?.evictOldest()) throw busy(`the Worker's memory is full: ${err.message}`);
      }
    }
    this.kv.add(id, need, local, Date.now());
    const session = new RuntimeSession(id, maxLen, local);
    // Its MoE layers run here: the batch barrier waits for it (left on its last step or its end).
    if (this.spec.moeLayers.length > 0) session.leaveBatch = joinBatch(this.id);
    return session;
  }

  /** `startSession` plus the KV reservation on every stage, so a full stage is refused up front. */
  async openSession(env: Env, maxLen: number): Promise<RuntimeSession> {
    const s = this.startSession(maxLen);
    try {
      await this.chain?.open(env, s.id, maxLen);
    } catch (err) {
      await this.endSession(s, env);
      throw err;
    }
    return s;
  }

  /** Frees the session's KV caches (the Worker's at once; the stages' over RPC when `env` is given). */
  endSession(s: RuntimeSession, env?: Env): Promise<void> {
    s.leaveBatch();
    const free = () => {
      const local = this.kv.get(s.id, Date.now());
      if (!local) return;
      // Kept while the session is still in the ledger, so the peak counts both for that moment.
      let kept = false;
      try {
        kept = this.#retain(s.id, local);
      } finally {
        if (!kept && this.kv.remove(s.id)) this.model.endSession(local);
      }
    };
    // A decode step given up as stuck may still return and write this KV cache: freed after it.
    const busy = s.local ? this.#steps?.settled(s.local) : null;
    if (busy) void busy.then(free);
    else free();
    return env && this.chain ? this.chain.end(env, s.id) : Promise.resolve();
  }

  /**
   * Releases every finished generation this runtime keeps for prefix sharing (`POST
   * /admin/prefix-cache/reset`), each through its donor's own release so the KV ledger gets its
   * bytes back; live generations keep their sessions. Returns how many and the ledger bytes freed.
   */
  resetPrefixCache(): { released: number; bytes: number } {
    const kept = this.#steps?.retained;
    if (!kept) return { released: 0, bytes: 0 };
    const used = this.kv.usedBytes;
    const released = kept.releaseAll();
    return { released, bytes: used - this.kv.usedBytes };
  }

  /** Whether requests' decode loops run in the model's region (pipeline stages) rather than here. */
  get drivenRemotely(): boolean {
    return this.chain !== null;
  }

  /**
   * Runs the decode loop of an opened session on a session driver in the model's region (a
   * StageHost instance that holds no layers) and returns the token ids it streams back.
   */
  async driveRemotely(
    env: Env,
    s: RuntimeSession,
    loop: Omit<DecodeRequest, "model" | "session">,
    signal?: AbortSignal,
  ): Promise<AsyncGenerator<number>> {
    const drivers = this.driverNames(env);
    const name = drivers[parseInt(s.id.slice(0, 6), 16) % drivers.length];
    const req = { ...loop, model: this.id, version: this.version, session: s.id, maxLen: s.maxLen };
    const call = env.STAGE_HOST.getByName(name).decode(req);
    const r = await withDeadline(Promise.resolve(call), pipelineRpcTimeoutMs(env), `session driver ${name}`, signal);
    if (!r.ok) throw stageError(r);
    return decodeTokenStream(r.tokens, stageError, signal);
  }

  /**
   * The session drivers of a pipelined model: one per stage, or — when generations share decode
   * steps (BATCHING) — SESSION_DRIVERS (default one), since only generations that meet in one
   * driver share its steps.
   */
  driverNames(env: Env): string[] {
    const n = this.stepsBatched(env) ? sessionDrivers(env) : Math.max(1, this.pipeline.stages.length);
    return Array.from({ length: n }, (_, k) => driverName(this.id, k));
  }

  /** A session opened elsewhere (by the Worker), driven here: same id on every stage. */
  adoptSession(id: string, maxLen: number): RuntimeSession {
    if (this.model.end !== this.model.first)
      throw new Error("internal: only a pipeline's session can be driven remotely");
    return new RuntimeSession(id, maxLen, null);
  }

  #heads: HeadBatcher | null = null;

  /** The output head's queue: requests reaching the head in one turn share one matmul. */
  #headBatcher(): HeadBatcher {
    this.#heads ??= new HeadBatcher(
      this.spec.dModel,
      this.spec.vocabSize,
      (rows) => this.model.head(rows),
      () => batchMembers(this.id),
    );
    return this.#heads;
  }

  #steps: StepBatcher | null = null;
  #copier: CopyPositions | null = null;

  /** Copies K/V positions between two sessions of this model (prefix sharing). */
  get #copy(): CopyPositions {
    this.#copier ??= kvCopier(this.model.kernels, kvLayout(this.spec.attention));
    return this.#copier;
  }

  /**
   * Keeps an ended generation's complete positions as a donor for later prompts (prefix sharing),
   * holding their bytes of the KV budget until a session that needs the room, or the donors' count
   * limit, releases them. A session mostly used is kept as it is (its ledger entry moves to the
   * donor; true: the caller must not free it); otherwise its positions are copied into a session of
   * their size. Nothing is kept when a donor already holds them, the budget has no room now, or the
   * copy's memory cannot be had — and a failed copy keeps nothing.
   */
  #retain(id: string, local: Session): boolean {
    const steps = this.#steps;
    const history = steps?.sharing ? steps.endedHistory(local) : null;
    if (!steps || !history || history.length < RETAIN_MIN_TOKENS || steps.retained.covers(history)) return false;
    const donor = (session: Session, bytes: number, key: string) =>
      steps.retained.add({
        history,
        session,
        bytes,
        release: () => {
          if (this.kv.remove(key)) this.model.endSession(session);
        },
      });
    if (history.length * 4 >= local.maxLen * 3) {
      const bytes = this.model.kvBytes(local.maxLen);
      const key = `retained:${id}`;
      this.kv.remove(id);
      this.kv.add(key, bytes, local, Date.now());
      donor(local, bytes, key);
      return true;
    }
    const bytes = this.model.kvBytes(history.length);
    if (bytes > this.kv.budgetBytes - this.kv.usedBytes) return false;
    let keep: Session;
    try {
      keep = this.model.startSession(history.length);
    } catch (err) {
      if (err instanceof Error && err.name === "MemoryBudgetError") return false;
      throw err;
    }
    try {
      this.#copy(local, keep, 0, history.length);
    } catch (err) {
      this.model.endSession(keep);
      throw err;
    }
    keep.length = history.length;
    const key = `retained:${crypto.randomUUID()}`;
    this.kv.add(key, bytes, keep, Date.now());
    donor(keep, bytes, key);
    return false;
  }

  /**
   * Whether a generation's tokens come from decode steps shared with the isolate's other
   * generations (./step-batcher.ts): BATCHING on, and a batched step gives every row what it gets
   * alone — the whole model here (`ModelForward.stepExact`), every layer (`layersExact`) with the
   * embeddings and head on HeadHosts (`#stepRemoteEnds`), or, on a pipeline's session driver, the
   * stage chain (./pipeline-steps.ts: the stages merge the step's calls into one pass each).
   */
  stepsBatched(env: Env): boolean {
    // Routing noise and capacity are drawn and counted per forward call (prefill chunks of
    // PREFILL_CHUNK): a step splits prompts elsewhere, so such models keep the per-request path.
    const { noiseStd, capacityFactor } = this.model.routing;
    // A pipeline's stages merge a step's calls into one pass only when that is exact (GQA): an MLA
    // chain would run a step's sessions one after another at every stage, slower than the
    // per-session loops whose calls overlap across stages.
    const exact = this.chain !== null ? this.model.layersExact : this.#stepExact;
    return batchingEnabled(env) && noiseStd === 0 && capacityFactor === null && exact;
  }

  /** The Worker's batched step is exact: the whole model here, or every layer with the ends on HeadHosts. */
  get #stepExact(): boolean {
    if (this.model.stepExact) return true;
    const everyLayer = this.model.first === 0 && this.model.end === this.spec.nLayers;
    return everyLayer && this.head !== null && this.embeddings !== null && this.model.layersExact;
  }

  /** The generation's token ids from the shared decode steps (only when `stepsBatched`). */
  async *stepTokens(
    env: Env,
    s: RuntimeSession,
    spec: Omit<StepStreamSpec, "session">,
    signal?: AbortSignal,
  ): AsyncGenerator<number> {
    const local = s.local ?? this.#pipelineSessions.stand(s);
    const longest = this.#longestSession();
    const chain = this.chain;
    this.#steps ??= new StepBatcher(
      (segs) =>
        chain
          ? runPipelineStep(this.#pipelineParts(env, chain), this.#pipelineSessions, segs)
          : this.#runStep(env, segs),
      keepRequestAlive,
      (segments, rows, shared) => {
        expertEvents()?.batched?.(this.id, segments, rows);
        if (shared > 0) expertEvents()?.prefixShared?.(this.id, shared);
      },
      // A step's scratch fits the Worker's: WORKER_SCRATCH_BYTES, for the longest session the KV budget
      // holds. A head row (vocabulary-wide logits) only for the rows that want logits, one per member.
      // A pipeline's steps: no layer scratch here, KV caches on the stages (no prefix sharing: a copy
      // would be an RPC to every stage), their own bounds (#pipelineLimits).
      chain
        ? this.#pipelineLimits(env)
        : {
            fits: (rows, outRows) => this.model.stepScratchBytes(rows, outRows, longest) <= WORKER_SCRATCH_BYTES,
            share: prefixSharingEnabled(env) ? this.#copy : null,
          },
    );
    // Its MoE layers run in the steps, not through the layer batcher: not counted at its barrier.
    s.leaveBatch();
    for await (const id of this.#steps.tokens({ ...spec, session: local }, signal)) {
      s.length = local.length;
      yield id;
    }
  }

  /** The steps' stand-ins for pipeline sessions (their K/V live on the stages). */
  readonly #pipelineSessions = new PipelineSessions<RuntimeSession>();

  /**
   * A pipeline's step limits. Rows: PREFILL_CHUNK (a stage's pass queue always takes that many, and
   * a hop's payload stays one prompt chunk's), a quarter of them kept for prompts while one waits.
   * Logits: a driver serves its share of the model's generations (all of them by default), so a
   * step's head rows are bounded — their logits in JS (remote head) or the head's Wasm scratch
   * (local) within PIPELINE_STEP_LOGITS_BYTES.
   * Wait: a step crosses every stage and may replay a lost session, each call bounded by the
   * pipeline's RPC deadline; members give a step several of those before calling it stuck.
   */
  #pipelineLimits(env: Env): Partial<StepLimits> {
    const perOut = 4 * (this.spec.vocabSize + 2 * this.spec.dModel);
    return {
      maxRows: PREFILL_CHUNK,
      prefillReserve: PREFILL_CHUNK / 4,
      fits: (_rows, outRows) => outRows * perOut <= PIPELINE_STEP_LOGITS_BYTES,
      waitMs: 4 * pipelineRpcTimeoutMs(env),
    };
  }

  /** A pipeline step's parts: embeddings, the stage chain, final norm and head, replays. */
  #pipelineParts(env: Env, chain: StageChain): PipelineStepParts<RuntimeSession> {
    const { dModel, vocabSize } = this.spec;
    const head = this.head;
    return {
      dModel,
      vocabSize,
      embed: async (tokens) =>
        this.embeddings ? this.model.scaleEmbeddings(await this.embeddings.rows(tokens)) : this.model.embed(tokens),
      chain: (items) =>
        chain.runMany(
          env,
          items.map(({ s, start, x }) => ({ session: s.id, maxLen: s.maxLen, start, x })),
        ),
      head: (rows, n) =>
        memoryFullAsBusy(async () =>
          head ? runHead(env, head, this.model.normed(rows), n, "logits") : this.model.head(rows),
        ),
      replay: (s, rng) => this.#replay(env, s, { rng, rpcs: { stageCalls: 0, total: 0 } }),
      maxReplays: MAX_REPLAYS,
    };
  }

  /** Positions one session can have here: the model's context, within the Worker's KV budget. */
  #longestSession(): number {
    return Math.min(this.spec.maxPositions, Math.floor(this.kv.budgetBytes / Math.max(1, this.model.kvBytes(1))));
  }

  /** Sessions replayed from position 0 because a stage lost their KV caches (per request or in a step). */
  replays = 0;

  /** Steps run and rows they carried in this isolate (tests, bench). */
  get stepStats(): { steps: number; rows: number; segments: number } {
    const b = this.#steps;
    return b ? { steps: b.steps, rows: b.rows, segments: b.segments } : { steps: 0, rows: 0, segments: 0 };
  }

  /** One batched step: the experts of all its rows in one fan-out per MoE layer, a lost row failing its owner. */
  async #runStep(env: Env, segs: StepSegment[]): Promise<StepOutcome[]> {
    const placement = await this.placement(env);
    const { dModel } = this.spec;
    const experts: OwnedExpertRunner = async (layer, routing, h, owner) => {
      const r = await runExpertsOwned(env, placement, layer, routing, h, dModel, owner, {
        modelVersion: this.version,
        gone: (i) => segs[i]?.gone?.() ?? false,
      });
      return { out: r.out, lost: r.lost };
    };
    if (this.model.whole) return memoryFullAsBusy(() => this.model.step(segs, experts));
    return this.#stepRemoteEnds(env, segs, experts);
  }

  /**
   * A batched step whose embeddings and head live on HeadHosts: every row's embedding in one lookup,
   * the Worker's layers over all rows at once (`stepLayers`: each weight matrix read once a step,
   * not once per request), then the final norm and ONE head call for the rows that want logits.
   * Each row gets what the per-request path gives it: embedding rows, the layers (`layersExact`),
   * the per-row final norm and the HeadHosts' head rows are all independent of the rows beside them.
   * A failed lookup fails the step's segments (it failed each request alone); a failed head call
   * fails only the segments that wanted logits (a prompt chunk that wants none needs no head).
   */
  async #stepRemoteEnds(env: Env, segs: StepSegment[], experts: OwnedExpertRunner): Promise<StepOutcome[]> {
    const { dModel, vocabSize } = this.spec;
    const x = this.model.scaleEmbeddings(await this.embeddings!.rows(segs.flatMap((g) => g.tokens)));
    let at = 0;
    const layerSegs = segs.map((g) => {
      const rows = x.subarray(at * dModel, (at + g.tokens.length) * dModel);
      at += g.tokens.length;
      return { session: g.session, x: rows, rng: g.rng };
    });
    const outs = await memoryFullAsBusy(() => this.model.stepLayers(layerSegs, experts));
    const want = segs.flatMap((g, i) => (g.nOut === 1 && outs[i].ok ? [i] : []));
    const logits = new Map<number, Float32Array>();
    let headError: unknown = null;
    if (want.length > 0) {
      const last = new Float32Array(want.length * dModel);
      want.forEach((i, j) => {
        const r = outs[i];
        if (r.ok) last.set(r.y.subarray(r.y.length - dModel), j * dModel);
      });
      try {
        const normed = await memoryFullAsBusy(async () => this.model.normed(last));
        const all = await runHead(env, this.head!, normed, want.length, "logits");
        want.forEach((i, j) => logits.set(i, all.slice(j * vocabSize, (j + 1) * vocabSize)));
      } catch (error) {
        headError = error;
      }
    }
    const wanted = new Set(want);
    return outs.map((r, i): StepOutcome => {
      if (!r.ok) return { ok: false, error: r.error };
      if (headError !== null && wanted.has(i)) return { ok: false, error: headError };
      return { ok: true, logits: logits.get(i) ?? new Float32Array(0) };
    });
  }

  async placement(env: Env) {
    return currentPlacement(env, this.placementInit);
  }

  /**
   * Runs `tokens` at positions session.length… through the model, appending to the KV caches.
   * Returns logits [nOut, vocab] for the last token (nOut = 1) or every token (`allLogits`).
   * Long prompts go in chunks of PREFILL_CHUNK tokens (bounded scratch and RPC payloads).
   * `signal` (the client went away) stops the work at once: no further expert, stage or head call
   * starts and the one in flight is no longer waited for.
   */
  async forward(
    env: Env,
    s: RuntimeSession,
    tokens: number[],
    rng: () => number,
    opts: { allLogits?: boolean; trace?: ForwardTrace; signal?: AbortSignal } = {},
  ): Promise<Float32Array> {
    const rpcs: ForwardRpcs = { stageCalls: 0, total: 0 };
    const parts: Float32Array[] = [];
    const call: ChunkCall = { rng, rpcs, trace: opts.trace, signal: opts.signal };
    for (let at = 0; at < tokens.length; at += PREFILL_CHUNK) {
      opts.signal?.throwIfAborted();
      const chunk = tokens.slice(at, at + PREFILL_CHUNK);
      const last = at + PREFILL_CHUNK >= tokens.length;
      const nOut = opts.allLogits ? chunk.length : last ? 1 : 0;
      const out = await memoryFullAsBusy(() => this.#forwardChunk(env, s, chunk, nOut, call));
      if (nOut > 0) parts.push(out);
    }
    this.lastRpcs = rpcs;
    return parts.length === 1 ? parts[0] : concat(parts);
  }

  /**
   * One chunk: embeddings → the layers (the Worker's own, or the stage chain) → final norm and
   * head (the Worker's, or the HeadHost shards). nOut = 0 → no logits. When the Worker holds the
   * whole model, the three run inside its Wasm memory in one call.
   */
  async #forwardChunk(
    env: Env,
    s: RuntimeSession,
    tokens: number[],
    nOut: number,
    call: ChunkCall,
  ): Promise<Float32Array> {
    const { rng, rpcs, trace, signal } = call;
    if (s.length + tokens.length > s.maxLen)
      throw new Error(`session holds ${s.maxLen} positions, asked for ${s.length + tokens.length}`);
    const onRouting = trace ? (layer: number, routing: Routing) => trace.routing.push({ layer, routing }) : undefined;
    let logits: Float32Array;
    if (this.model.whole && nOut > 0 && batchingEnabled(env)) {
      // BATCHING: the same layers, then the head merged with the other requests of this turn.
      const placement = await this.placement(env);
      const { dModel } = this.spec;
      const all = await this.model.layers(
        s.local!,
        this.model.embed(tokens),
        this.#experts(env, placement, call),
        rng,
        onRouting,
      );
      logits = await this.#headBatcher().run(all.slice(all.length - nOut * dModel), nOut);
    } else if (this.model.whole) {
      const placement = await this.placement(env);
      const out = await this.model.forward(s.local!, tokens, this.#experts(env, placement, call), rng, {
        allLogits: nOut > 1,
        onRouting,
      });
      logits = nOut === 0 ? new Float32Array(0) : out;
    } else {
      const x = this.embeddings
        ? this.model.scaleEmbeddings(await this.embeddings.rows(tokens))
        : this.model.embed(tokens);
      let y: Float32Array;
      if (this.chain) {
        const chain = this.chain;
        const run = () => chain.run(env, s.id, s.maxLen, s.length, x, Math.max(nOut, 1), trace !== undefined, signal);
        let r: Awaited<ReturnType<typeof run>> | null = null;
        while (r === null) {
          try {
            r = await run();
          } catch (err) {
            if (!(err instanceof SessionLostError) || s.replays >= MAX_REPLAYS) throw err;
            await this.#replay(env, s, call);
          }
        }
        rpcs.stageCalls += 1;
        rpcs.total += r.rpcs;
        if (trace) for (const t of r.trace) recordTrace(trace, t);
        y = r.y;
      } else {
        const placement = await this.placement(env);
        const all = await this.model.layers(s.local!, x, this.#experts(env, placement, call), rng, onRouting);
        y = all.subarray(all.length - Math.max(nOut, 1) * this.spec.dModel);
      }
      if (nOut === 0) logits = new Float32Array(0);
      else if (this.head) {
        signal?.throwIfAborted();
        logits = await runHead(env, this.head, this.model.normed(y), nOut, "logits");
        rpcs.total += this.head.shards.length;
      } else logits = this.model.head(y);
    }
    s.length += tokens.length;
    if (this.chain) s.fed.push(...tokens);
    return logits;
  }

  /**
   * A stage lost the session's KV cache (an evicted or reset instance keeps nothing in memory):
   * frees it everywhere, re-admits it on every stage and runs the tokens fed so far again from
   * position 0, so the stages hold the same prefix as before and the caller's chunk can run.
   */
  async #replay(env: Env, s: RuntimeSession, call: ChunkCall): Promise<void> {
    const chain = this.chain!;
    s.replays++;
    this.replays++;
    const history = s.fed.slice(0, s.length);
    console.warn(`session ${s.id}: a stage lost its KV cache; replaying ${history.length} tokens`);
    await chain.end(env, s.id);
    s.length = 0;
    s.fed.length = 0;
    await chain.open(env, s.id, s.maxLen);
    for (let at = 0; at < history.length; at += PREFILL_CHUNK) {
      await this.#forwardChunk(env, s, history.slice(at, at + PREFILL_CHUNK), 0, { ...call, trace: undefined });
    }
  }

  /**
   * Runs one MoE block on given inputs (verify's moe_layer check): [n, dModel] → [n, dModel], the
   * block output before the residual add — routed experts plus shared experts.
   */
  async moeBlock(
    env: Env,
    layer: number,
    input: Float32Array,
    rng: () => number,
  ): Promise<{ out: Float32Array; routing: Routing }> {
    if (this.spec.layers[layer]?.kind !== "moe") {
      throw ApiError.invalid(
        "layer",
        `layer ${layer} is a dense MLP layer, not an MoE layer (MoE layers: ${this.spec.moeLayers.join(", ")})`,
      );
    }
    if (this.chain) {
      const { out, trace } = await this.chain.moeBlock(env, layer, input);
      return { out, routing: { n: trace.n, topK: trace.topK, ids: trace.ids, weights: trace.weights } };
    }
    const placement = await this.placement(env);
    const call: ChunkCall = { rng, rpcs: { stageCalls: 0, total: 0 } };
    return this.model.moeBlock(layer, input, this.#experts(env, placement, call), rng);
  }

  /** Routed experts through the ExpertHost fan-out, recording each layer's dispatch. */
  #experts(env: Env, placement: Placement, { rpcs, trace, signal }: ChunkCall): ExpertRunner {
    const { dModel } = this.spec;
    return async (layer, routing, h) => {
      const { out, dispatch } = await runExperts(env, placement, layer, routing, h, dModel, {
        signal,
        modelVersion: this.version,
      });
      rpcs.total += dispatch.rpcs;
      trace?.dispatch.push(dispatch);
      return out;
    };
  }
}

/** What every chunk of one forward call shares. */
interface ChunkCall {
  /** The request's seeded source (noisy routing draws from it; the expert dispatch does not). */
  rng: () => number;
  rpcs: ForwardRpcs;
  trace?: ForwardTrace;
  signal?: AbortSignal;
}

function recordTrace(trace: ForwardTrace, t: StageLayerTrace): void {
  trace.routing.push({ layer: t.layer, routing: { n: t.n, topK: t.topK, ids: t.ids, weights: t.weights } });
  trace.dispatch.push({ layer: t.layer, rpcs: t.rpcs });
}

/** A runtime's memory in its isolate (the Worker's, or a session driver's). */
export interface RuntimeMemoryStats {
  model: string;
  /** Dense weights held against WORKER_BUDGET_MB (embeddings, final norm, head and layers when here). */
  weightBytes: number;
  /** WORKER_BUDGET_MB: what the weights may take in one isolate. */
  weightBudgetBytes: number;
  kvBytesUsed: number;
  kvBytesPeak: number;
  kvBudgetBytes: number;
  wasmBytesInUse: number;
  wasmMemoryBytes: number;
  /** The kernels' cap on the linear memory. */
  wasmLimitBytes: number;
  /** bytesHeldPeak = weights + KV peak. */
  peak: MemoryPeakStats;
}

/** DO name of session driver k of a model (a StageHost that holds no layers). */
export function driverName(model: string, k: number): string {
  return `${model}/driver/${k}`;
}

/**
 * A pass whose scratch finds the Worker's Wasm memory full (fragmentation, or many per-request
 * passes at once with BATCHING off) is refused as busy (429 + Retry-After), not a server error.
 */
async function memoryFullAsBusy<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    if (err instanceof Error && err.name === "MemoryBudgetError")
      throw busy(`the Worker's memory is full: ${err.message}`);
    throw err;
  }
}

function busy(message: string): ApiError {
  return new ApiError(
    429,
    `the model is at capacity: ${message}`,
    "service_unavailable",
    null,
    "kv_cache_full",
    ApiError.retryIn(KV_RETRY_AFTER_MS / 1000),
  );
}

/**
 * Dense bytes a Worker isolate holds against WORKER_BUDGET_MB: the embeddings, final norm and head
 * (only the final norm and, untied, the embedding-row cache when the head is on HeadHosts) and,
 * without stages, every layer as f32.
 */
function workerHeldBytes(spec: ModelSpec, headOnHosts: boolean, staged: boolean): number {
  const ends = headOnHosts ? 4 * spec.dModel + (spec.tieEmbeddings ? 0 : EMBED_CACHE_BYTES) : denseEndsBytes(spec);
  return ends + (staged ? 0 : layerTotal(spec));
}

function layerTotal(spec: ModelSpec): number {
  return spec.layers.reduce((n, _, l) => n + denseLayerBytes(spec, l), 0);
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Routing knobs from the deployment's vars (absent vars → off). */
export function routingOptionsFromEnv(env: Env): RoutingOptions {
  return parseRoutingOptions(env);
}

/** The tokenizer files of the same upload as the weights (reads pinned to its etags). */
async function loadTokenizer(store: FileStore): Promise<TextTokenizer | null> {
  const readJson = async (name: string): Promise<unknown> => {
    const f = await store.open(name);
    return f ? JSON.parse(new TextDecoder().decode(await f.read(0, await f.size()))) : null;
  };
  const [tj, tc] = await Promise.all([readJson("tokenizer.json"), readJson("tokenizer_config.json")]);
  if (tj === null) return null;
  return TextTokenizer.fromJson(tj, tc ?? {});
}
