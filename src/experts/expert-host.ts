/**
 * @module ExpertHost: a Durable Object holding some experts' weights in Wasm memory and running
 * them (an ExpertStore bounded by EXPERT_HOST_BUDGET_MB). Weights are read from R2 once per
 * instance (on `load`, or on first use after the isolate was evicted), never per request.
 */
import { DurableObject } from "cloudflare:workers";
import { createKernels } from "../kernels/workers";
import { readBudgets } from "../platform/budgets";
import { openModelFromR2 } from "../platform/model-store";
import { expertStoreOptions } from "./options";
import { ExpertStore, StoreFailure } from "./expert-store";
import { expertKey, type ExpertFailureCode, type ExpertForwardRequest, type ExpertForwardResult, type ExpertHostStats, type ExpertLoadResult, type ExpertRef } from "./protocol";

export class ExpertHost extends DurableObject<Env> {
  #store: ExpertStore | null = null;
  #storePromise: Promise<ExpertStore> | null = null;
  #name = "";
  /** Tokens served per "layer:expert" since the instance started (admin stats). */
  #expertTokens = new Map<string, number>();
  /** Injected faults (chaos testing via /admin/fault): "layer:expert" → fail calls until this time. */
  #faults = new Map<string, number>();

  /** Loads the given experts (idempotent). The Coordinator calls this before routing traffic here. */
  async load(model: string, experts: ExpertRef[], name?: string): Promise<ExpertLoadResult> {
    if (name) this.#name = name;
    try {
      const store = await this.#open(model);
      await Promise.all(experts.map((e) => store.ensure(e.layer, e.expert)));
      return { ok: true, stats: this.stats() };
    } catch (err) {
      return failure(err);
    }
  }

  /** Drops experts from memory (after the Coordinator drained traffic away from them). */
  async unload(model: string, experts: ExpertRef[]): Promise<ExpertHostStats> {
    if (this.#store?.model.id === model) this.#store.unload(experts);
    return this.stats();
  }

  /** Runs every (expert, token batch) of one layer that this instance serves. */
  async forward(req: ExpertForwardRequest): Promise<ExpertForwardResult> {
    try {
      const store = await this.#open(req.model);
      const now = Date.now();
      for (const it of req.items) {
        const until = this.#faults.get(expertKey(req.layer, it.expert));
        if (until !== undefined && until > now) throw new StoreFailure("model_error", `${this.#label}: injected fault for expert ${req.layer}:${it.expert}`);
      }
      const y = await store.run(req.layer, req.items, req.x);
      for (const it of req.items) {
        const key = expertKey(req.layer, it.expert);
        this.#expertTokens.set(key, (this.#expertTokens.get(key) ?? 0) + it.nTokens);
      }
      return { ok: true, y };
    } catch (err) {
      return failure(err);
    }
  }

  /** Makes calls that include the given experts fail for `ms` (chaos testing of failover). */
  async injectFault(experts: ExpertRef[], ms: number): Promise<void> {
    const until = Date.now() + Math.max(0, ms);
    for (const e of experts) this.#faults.set(expertKey(e.layer, e.expert), until);
  }

  stats(): ExpertHostStats {
    const s = this.#store;
    return {
      name: this.#label,
      model: s?.model.id ?? null,
      kernels: s?.kernelFlavor ?? null,
      loaded: s?.loaded() ?? [],
      bytesLoaded: s?.bytesLoaded ?? 0,
      budgetBytes: readBudgets(this.env).expertHostBytes,
      wasmBytesInUse: s?.wasmBytesInUse ?? 0,
      calls: s?.calls ?? 0,
      tokens: s?.tokens ?? 0,
      expertTokens: Object.fromEntries(this.#expertTokens),
    };
  }

  /** The DO's name ("<model>/h<id>"): given by the Coordinator on load, else read from the id. */
  get #label(): string {
    return this.#name || this.ctx.id.name || this.ctx.id.toString();
  }

  async #open(model: string): Promise<ExpertStore> {
    if (this.#store) {
      if (this.#store.model.id !== model) throw new StoreFailure("bad_request", `this ExpertHost serves model "${this.#store.model.id}", not "${model}"`);
      return this.#store;
    }
    this.#storePromise ??= (async () => {
      const opened = await openModelFromR2(this.env.MODELS, model);
      const budget = readBudgets(this.env).expertHostBytes;
      const store = new ExpertStore(opened, budget, `ExpertHost ${this.#label} (EXPERT_HOST_BUDGET_MB)`, (maxBytes) => createKernels("best", { maxBytes }), expertStoreOptions(this.env));
      this.#store = store;
      return store;
    })();
    try {
      return await this.#storePromise;
    } catch (err) {
      this.#storePromise = null; // recover from a failed init: the next call tries again
      throw err;
    }
  }

  /**
   * Unloads every expert of `model` held here that `assigned` does not list: the Coordinator's
   * reconcile after a restart or a failed make-before-break, so no memory stays with experts that
   * no placement routes to. Returns what it unloaded.
   */
  async reconcile(
    model: string,
    assigned: ExpertRef[],
  ): Promise<{ ok: true; unloaded: ExpertRef[] } | { ok: false; code: string; message: string }> {
    try {
      const store = this.#store ?? (this.#storePromise ? await this.#storePromise.catch(() => null) : null);
      if (!store || store.model.id !== model) return { ok: true, unloaded: [] };
      const keep = new Set(assigned.map((e) => expertKey(e.layer, e.expert)));
      const unloaded = store.loaded().filter((e) => !keep.has(expertKey(e.layer, e.expert)));
      if (unloaded.length > 0) store.unload(unloaded);
      return { ok: true, unloaded };
    } catch (err) {
      return failure(err);
    }
  }
}

function failure(err: unknown): { ok: false; code: ExpertFailureCode; message: string } {
  if (err instanceof StoreFailure) return { ok: false, code: err.code, message: err.message };
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof Error && err.name === "MemoryBudgetError") return { ok: false, code: "budget_exceeded", message };
  return { ok: false, code: "model_error", message };
}
