/**
 * @module HeadHost: a Durable Object holding one vocabulary slice of a model's output head (rows
 * [rowStart, rowEnd) of lm_head, or of the tied embedding table) in Wasm memory under
 * HEAD_HOST_BUDGET_MB, answering with its logits slice or its greedy (max, argmax) per token.
 * Rows are read from R2 once per instance (on `load`, or on first use after eviction). Its DO name
 * names its rows (src/coordinator/head-placement.ts headShardName), so an instance never changes
 * what it holds; a call for other rows is refused. Its rows are of one upload of the model
 * (PinnedModel): a call naming a newer upload reloads them whole, an older one is refused.
 */
import { DurableObject } from "cloudflare:workers";
import { createKernels } from "../kernels/workers";
import { MemoryBudgetError } from "../kernels/index";
import { isModelChanged, PinnedModel } from "../platform/model-store";
import { hostKeepAliveMs, KeepAlive } from "../platform/keep-alive";
import { MemoryPeak, type MemoryPeakStats } from "../platform/memory-peak";
import { headHostBudgetBytes } from "./budget";
import { HeadStore, HeadStoreFailure } from "./head-store";
import { batchingEnabled } from "../platform/env";
import { QueueFullError } from "../platform/coalescer";
import { headAnswer, HeadHostBatcher } from "./head-host-batcher";
import type {
  HeadEmbedResult,
  HeadFailure,
  HeadForwardRequest,
  HeadForwardResult,
  HeadHostStats,
  HeadLoadResult,
  HeadShardRef,
} from "./protocol";

export class HeadHost extends DurableObject<Env> {
  /** The rows this instance holds (its DO name fixes them): set by the first call. */
  #rows: HeadShardRef | null = null;
  readonly #model = new PinnedModel<HeadStore>(
    () => this.env.MODELS,
    (opened) =>
      HeadStore.load(opened.ckpt, opened.spec, this.#rows!, {
        budgetBytes: headHostBudgetBytes(this.env),
        label: `${this.#label} (HEAD_HOST_BUDGET_MB)`,
        kernels: (maxBytes) => createKernels("best", { maxBytes }),
      }),
  );

  /** Keeps the rows in memory for HOST_KEEPALIVE_MS after a served call. */
  readonly #keepAlive = new KeepAlive(this.ctx, () => hostKeepAliveMs(this.env));
  /** High-water marks of the rows and Wasm memory held (noted after every call). */
  readonly #peak = new MemoryPeak();
  /** Merges the calls that meet into one head pass (null: BATCHING off). */
  #batcher: HeadHostBatcher | null | undefined;

  get #store(): HeadStore | null {
    return this.#model.current?.value ?? null;
  }

  /** Loads the shard's rows (idempotent). */
  async load(ref: HeadShardRef): Promise<HeadLoadResult> {
    try {
      this.#keepAlive.touch();
      await this.#open(ref);
      return { ok: true, stats: this.stats() };
    } catch (err) {
      return failure(err);
    } finally {
      this.#notePeak();
    }
  }

  /** The shard's logits slice, or its greedy answer, for hidden [n, dModel] (after the final norm). */
  async forward(req: HeadForwardRequest): Promise<HeadForwardResult> {
    try {
      this.#keepAlive.touch();
      const store = await this.#open(req);
      if (req.mode !== "logits" && req.mode !== "greedy")
        return {
          ok: false,
          code: "bad_request",
          message: `mode must be "logits" or "greedy", got ${JSON.stringify(req.mode)}`,
        };
      const call = { mode: req.mode, hidden: req.hidden, n: req.n };
      this.#batcher ??= batchingEnabled(this.env) ? new HeadHostBatcher(this.#label) : null;
      // A call of the wrong shape runs alone: its bad_request is its own.
      const wellFormed = Number.isInteger(req.n) && req.n > 0 && req.hidden?.length === req.n * store.dModel;
      if (!this.#batcher || !wellFormed) return { ok: true, ...headAnswer(store, call) };
      try {
        return { ok: true, ...(await this.#batcher.run(store, call)) };
      } catch (err) {
        if (err instanceof QueueFullError) return { ok: false, code: "overloaded", message: err.message };
        throw err;
      }
    } catch (err) {
      return failure(err);
    } finally {
      this.#notePeak();
    }
  }

  /** Embedding rows for ids inside this shard (tied embeddings: the one copy serves both). */
  async embed(ref: HeadShardRef, ids: number[]): Promise<HeadEmbedResult> {
    try {
      this.#keepAlive.touch();
      const store = await this.#open(ref);
      if (store.tensor !== store.embedTensor) {
        return {
          ok: false,
          code: "bad_request",
          message: `model "${ref.model}" does not tie its embeddings: this HeadHost holds ${store.tensor}`,
        };
      }
      return { ok: true, rows: store.embedRows(ids) };
    } catch (err) {
      return failure(err);
    } finally {
      this.#notePeak();
    }
  }

  /** The keep-alive's tick: wakes again while the shard served a call within HOST_KEEPALIVE_MS. */
  override async alarm(): Promise<void> {
    await this.#keepAlive.alarm();
  }

  stats(): HeadHostStats {
    const s = this.#store;
    return {
      name: this.#label,
      model: s?.ref.model ?? null,
      tensor: s?.tensor ?? null,
      rowStart: s?.ref.rowStart ?? 0,
      rowEnd: s?.ref.rowEnd ?? 0,
      format: s?.format ?? null,
      kernels: s?.kernels.flavor ?? null,
      bytesLoaded: s?.bytesLoaded ?? 0,
      budgetBytes: headHostBudgetBytes(this.env),
      wasmBytesInUse: s?.kernels.bytesInUse ?? 0,
      wasmMemoryBytes: s?.kernels.memoryBytes ?? 0,
      peak: this.#notePeak(),
      calls: s?.calls ?? 0,
      tokens: s?.tokens ?? 0,
      batching: this.#batcher?.stats() ?? null,
    };
  }

  #notePeak(): MemoryPeakStats {
    const s = this.#store;
    return this.#peak.note({ bytesHeld: s?.bytesLoaded ?? 0, wasmMemoryBytes: s?.kernels.memoryBytes ?? 0 });
  }

  get #label(): string {
    return `HeadHost ${this.ctx.id.name ?? this.ctx.id.toString()}`;
  }

  async #open(ref: HeadShardRef): Promise<HeadStore> {
    const same = (s: HeadShardRef) => s.model === ref.model && s.rowStart === ref.rowStart && s.rowEnd === ref.rowEnd;
    if (this.#store) {
      if (!same(this.#store.ref)) {
        const h = this.#store.ref;
        throw new HeadStoreFailure(
          "bad_request",
          `${this.#label} serves rows [${h.rowStart}, ${h.rowEnd}) of "${h.model}", ` +
            `not [${ref.rowStart}, ${ref.rowEnd}) of "${ref.model}"`,
        );
      }
    }
    this.#rows ??= { model: ref.model, rowStart: ref.rowStart, rowEnd: ref.rowEnd };
    // A failed load (R2, budget, a re-upload under it) is not kept: the next call tries again.
    const store = (await this.#model.get(ref.model, ref.version)).value;
    if (!same(store.ref)) return this.#open(ref); // a concurrent first call loaded other rows: refuse
    return store;
  }
}

function failure(err: unknown): HeadFailure {
  if (err instanceof HeadStoreFailure) return { ok: false, code: err.code, message: err.message };
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof MemoryBudgetError) return { ok: false, code: "budget_exceeded", message };
  if (isModelChanged(err)) return { ok: false, code: "model_changed", message };
  return { ok: false, code: "model_error", message };
}
