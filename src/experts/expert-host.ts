/**
 * @module ExpertHost: a Durable Object holding some experts' weights in Wasm memory and running
 * them (an ExpertStore bounded by EXPERT_HOST_BUDGET_MB). Weights are read from R2 once per
 * instance (on `load`, or on first use after the isolate was evicted), never per request.
 *
 * It serves only the experts it is assigned (./host-assignment.ts, kept in its SQLite): others are
 * refused with `not_assigned`, a failure the Worker retries on another replica after refreshing
 * its placement. The Coordinator alone changes the assignment: `load` adds to it, `unload` takes
 * from it, `reconcile` replaces it.
 *
 * Its weights all come from one upload of the model (PinnedModel): a call naming a newer upload
 * makes it load that one whole, a call naming an older one is refused with `model_changed`.
 */
import { DurableObject } from "cloudflare:workers";
import { createKernels } from "../kernels/workers";
import { readBudgets } from "../platform/budgets";
import { isModelChanged, PinnedModel } from "../platform/model-store";
import { faultyBucket } from "../platform/r2-faults";
import { hostKeepAliveMs, KeepAlive } from "../platform/keep-alive";
import { MemoryPeak, type MemoryPeakStats } from "../platform/memory-peak";
import { ExpertStore, StoreFailure, storeFailure } from "./expert-store";
import { HostAssignment } from "./host-assignment";
import { HostBatcher } from "./host-batcher";
import { batchingEnabled } from "../platform/env";
import { expertStoreOptions } from "./options";
import {
  expertKey,
  type ExpertForwardRequest,
  type ExpertForwardResult,
  type ExpertHostStats,
  type ExpertLoadResult,
  type ExpertReconcileResult,
  type ExpertRef,
} from "./protocol";

export type FaultKind = "fail" | "stall";

/**
 * Experts read from R2 at once by one load. Each read holds its expert's bytes in JS until it is
 * packed into Wasm, so reading all assigned experts at once put up to the budget's worth of bytes
 * in the JS heap beside the Wasm copy (Qwen3-30B-A3B int8: 15 experts of 4.5 MiB per host, 68 MiB
 * on top of a 96 MiB budget in a 128 MB isolate); a few at a time keeps the reads overlapped and
 * the transient bytes at a few experts.
 */
const LOAD_CONCURRENCY = 4;

/** `Promise.allSettled(items.map(fn))` with at most `limit` calls of `fn` pending, results in order. */
async function settledInPool<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<PromiseSettledResult<R>[]> {
  const out = new Array<PromiseSettledResult<R>>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      try {
        out[i] = { status: "fulfilled", value: await fn(items[i]) };
      } catch (reason) {
        out[i] = { status: "rejected", reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

export class ExpertHost extends DurableObject<Env> {
  /** The experts of one upload of the model; replaced whole when a newer upload is asked for. */
  readonly #model: PinnedModel<ExpertStore>;
  #name = "";
  readonly #assignment: HostAssignment;
  /** Tokens served per "layer:expert" since the instance started (admin stats). */
  #expertTokens = new Map<string, number>();
  /** Injected faults (chaos testing via /admin/fault): "layer:expert" → what calls do until when. */
  #faults = new Map<string, { until: number; kind: FaultKind }>();
  /** Forward calls begun and not yet answered (the `inflight` of stats, a scrape-time gauge). */
  #inflight = 0;
  /** Merges concurrent forward calls of one layer into one kernel pass per expert (BATCHING). */
  readonly #batcher = new HostBatcher("ExpertHost");
  /** Until when every R2 operation of this instance fails (chaos testing via /admin/fault). */
  #r2FaultUntil = 0;
  /** Keeps the loaded experts in memory for HOST_KEEPALIVE_MS after a load or a forward call. */
  readonly #keepAlive: KeepAlive;
  /** High-water marks of the expert bytes and Wasm memory held (noted wherever they can change). */
  readonly #peak = new MemoryPeak();

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.#assignment = new HostAssignment(ctx.storage.sql);
    this.#keepAlive = new KeepAlive(ctx, () => hostKeepAliveMs(this.env));
    void ctx.blockConcurrencyWhile(async () => this.#assignment.init());
    const bucket = faultyBucket(env.MODELS, () => Date.now() < this.#r2FaultUntil);
    this.#model = new PinnedModel(
      () => bucket,
      (opened) =>
        new ExpertStore(
          opened,
          readBudgets(this.env).expertHostBytes,
          `ExpertHost ${this.#label} (EXPERT_HOST_BUDGET_MB)`,
          (maxBytes) => createKernels("best", { maxBytes }),
          expertStoreOptions(this.env),
        ),
    );
  }

  get #store(): ExpertStore | null {
    return this.#model.current?.value ?? null;
  }

  /**
   * Loads the given experts and adds them to the assignment (idempotent). The Coordinator calls
   * this before routing traffic here. Experts that loaded stay assigned even when another failed.
   */
  async load(model: string, experts: ExpertRef[], name?: string): Promise<ExpertLoadResult> {
    if (name) this.#name = name;
    try {
      this.#keepAlive.touch();
      let store = await this.#open(model);
      let loads = await settledInPool(experts, LOAD_CONCURRENCY, (e) => store.ensure(e.layer, e.expert));
      if (loads.some((r) => r.status === "rejected" && isModelChanged(r.reason))) {
        // Re-uploaded under this instance: load the experts from the new upload, whole.
        if (this.#store === store) this.#model.drop();
        store = await this.#open(model);
        loads = await settledInPool(experts, LOAD_CONCURRENCY, (e) => store.ensure(e.layer, e.expert));
      }
      this.#assignment.add(
        model,
        experts.filter((_, i) => loads[i].status === "fulfilled"),
      );
      this.#notePeak();
      const failed = loads.find((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failed) return storeFailure(failed.reason);
      return { ok: true, stats: this.stats() };
    } catch (err) {
      return storeFailure(err);
    }
  }

  /** Drops experts from memory and from the assignment (after the Coordinator drained traffic away). */
  async unload(model: string, experts: ExpertRef[]): Promise<ExpertHostStats> {
    this.#assignment.remove(model, experts);
    if (this.#store?.model.id === model) this.#store.unload(experts);
    return this.stats();
  }

  /**
   * Makes `assigned` the whole assignment for `model` and drops from memory every expert outside
   * it (the Coordinator calls this after a restart or a failed publish, with what its placement
   * references here). Newly assigned experts load on first use.
   */
  async reconcile(model: string, assigned: ExpertRef[]): Promise<ExpertReconcileResult> {
    if (typeof model !== "string" || model === "") {
      return { ok: false, code: "bad_request", message: "model must be a model id" };
    }
    if (!Array.isArray(assigned) || !assigned.every(isRef)) {
      const message = "assigned must be a list of { layer, expert } with integers ≥ 0";
      return { ok: false, code: "bad_request", message };
    }
    const served = this.#store?.model.id ?? null;
    if (served !== null && served !== model) {
      return { ok: false, code: "bad_request", message: `this ExpertHost serves model "${served}", not "${model}"` };
    }
    this.#assignment.replace(model, assigned);
    const keep = new Set(assigned.map((e) => expertKey(e.layer, e.expert)));
    const unloaded = (this.#store?.loaded() ?? []).filter((e) => !keep.has(expertKey(e.layer, e.expert)));
    this.#notePeak();
    this.#store?.unload(unloaded);
    return { ok: true, unloaded };
  }

  /** Runs every (expert, token batch) of one layer that this instance serves. */
  async forward(req: ExpertForwardRequest): Promise<ExpertForwardResult> {
    const t0 = performance.now();
    this.#inflight++;
    let store: ExpertStore | null = null;
    try {
      this.#keepAlive.touch();
      const refused = req.items.filter((it) => !this.#assignment.has(req.model, req.layer, it.expert));
      if (refused.length > 0) {
        const list = refused.map((it) => expertKey(req.layer, it.expert)).join(", ");
        const message = `${this.#label} is not assigned expert(s) ${list} of "${req.model}"`;
        return { ok: false, code: "not_assigned", message };
      }
      store = await this.#open(req.model, req.version);
      for (const it of req.items) {
        const fault = this.#faults.get(expertKey(req.layer, it.expert));
        const left = fault ? fault.until - Date.now() : 0;
        if (!fault || left <= 0) continue;
        if (fault.kind === "stall") await new Promise((r) => setTimeout(r, left));
        else
          throw new StoreFailure("model_error", `${this.#label}: injected fault for expert ${req.layer}:${it.expert}`);
      }
      // One output row per input row, none summed with another (see protocol.ts, combine.ts);
      // with BATCHING on, in one kernel pass per expert with the calls that arrived in this turn.
      const call = { items: req.items, x: req.x };
      const result = batchingEnabled(this.env)
        ? await this.#batcher.run(store, req.layer, call)
        : { ok: true as const, y: await store.run(req.layer, req.items, req.x) };
      if (!result.ok) return result;
      for (const it of req.items) {
        const key = expertKey(req.layer, it.expert);
        this.#expertTokens.set(key, (this.#expertTokens.get(key) ?? 0) + it.nTokens);
      }
      return { ...result, hostMs: performance.now() - t0 };
    } catch (err) {
      // This instance's upload was replaced under it (a pinned read refused): load the new one next.
      if (isModelChanged(err) && store && this.#store === store) this.#model.drop();
      return storeFailure(err);
    } finally {
      this.#inflight--;
      this.#notePeak();
    }
  }

  /**
   * For `ms`, calls that include the given experts fail ("fail", the default) or do not answer
   * until the time is up ("stall": a stuck host) — chaos testing of failover and deadlines.
   */
  async injectFault(experts: ExpertRef[], ms: number, kind: FaultKind = "fail"): Promise<void> {
    const until = Date.now() + Math.max(0, ms);
    for (const e of experts) this.#faults.set(expertKey(e.layer, e.expert), { until, kind });
  }

  /** For `ms`, every R2 read of this instance fails (an R2 outage while it loads weights). */
  async injectR2Fault(ms: number): Promise<void> {
    this.#r2FaultUntil = Date.now() + Math.max(0, ms);
  }

  /** The keep-alive's tick: wakes again while the host served a call within HOST_KEEPALIVE_MS. */
  override async alarm(): Promise<void> {
    await this.#keepAlive.alarm();
  }

  stats(): ExpertHostStats {
    const s = this.#store;
    return {
      name: this.#label,
      model: s?.model.id ?? null,
      kernels: s?.kernelFlavor ?? null,
      loaded: s?.loaded() ?? [],
      assigned: this.#assignment.list(),
      bytesLoaded: s?.bytesLoaded ?? 0,
      budgetBytes: readBudgets(this.env).expertHostBytes,
      wasmBytesInUse: s?.wasmBytesInUse ?? 0,
      wasmMemoryBytes: s?.wasmMemoryBytes ?? 0,
      peak: this.#notePeak(),
      calls: s?.calls ?? 0,
      tokens: s?.tokens ?? 0,
      expertPasses: s?.passes ?? 0,
      expertLoads: s?.loads ?? 0,
      inflight: this.#inflight,
      expertTokens: Object.fromEntries(this.#expertTokens),
    };
  }

  #notePeak(): MemoryPeakStats {
    const s = this.#store;
    return this.#peak.note({ bytesHeld: s?.bytesLoaded ?? 0, wasmMemoryBytes: s?.wasmMemoryBytes ?? 0 });
  }

  /** The DO's name ("<model>/h<id>"): given by the Coordinator on load, else read from the id. */
  get #label(): string {
    return this.#name || this.ctx.id.name || this.ctx.id.toString();
  }

  /** The store of `model` (of upload `version` when given); a failed open is retried next call. */
  async #open(model: string, version?: string): Promise<ExpertStore> {
    const held = this.#store;
    if (held && held.model.id !== model)
      throw new StoreFailure("bad_request", `this ExpertHost serves model "${held.model.id}", not "${model}"`);
    const store = (await this.#model.get(model, version)).value;
    if (store.model.id !== model)
      throw new StoreFailure("bad_request", `this ExpertHost serves model "${store.model.id}", not "${model}"`);
    return store;
  }
}

function isRef(e: unknown): e is ExpertRef {
  if (typeof e !== "object" || e === null) return false;
  const { layer, expert } = e as { layer?: unknown; expert?: unknown };
  return Number.isInteger(layer) && Number.isInteger(expert) && (layer as number) >= 0 && (expert as number) >= 0;
}
