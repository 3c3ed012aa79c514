/**
 * @module The Worker's half of the model: dense weights (embeddings, attention, norms, routers,
 * dense-layer MLPs, shared experts, lm_head) in Wasm memory, loaded from R2 once per isolate, and
 * the forward pass of src/serving/forward.ts with its routed experts sent to the ExpertHost
 * fan-out (one RPC per instance per MoE layer).
 */
import { createKernels } from "../kernels/workers";
import { denseBytes, loadDenseWeights } from "../model/architectures";
import { expertStoredBytes } from "../model/quantized";
import { expertStoreOptions } from "../experts/options";
import type { ModelSpec } from "../model/config";
import { TextTokenizer } from "../model/tokenizer";
import { parseRoutingOptions } from "../gating/options";
import type { Routing, RoutingOptions } from "../gating/router";
import { currentPlacement, runExperts, type LayerDispatch } from "../experts/expert-client";
import type { PlacementInit } from "../coordinator/initial-placement";
import type { Placement } from "../coordinator/placement";
import { modelPrefix, openModelFromR2 } from "../platform/model-store";
import { readBudgets, WORKER_SCRATCH_BYTES } from "../platform/budgets";
import { formatMiB } from "../platform/format";
import { ApiError, BudgetError } from "../errors";
import { ModelForward, Session, type ExpertRunner } from "./forward";

export { Session } from "./forward";

/** What a forward pass can record for inspection (verify, tests): per-layer routing. */
export interface ForwardTrace {
  routing: { layer: number; routing: Routing }[];
  dispatch: LayerDispatch[];
}

/**
 * What the Coordinator is given to place a model. `moeLayers` lists the only layers that have
 * routed experts: dense layers (DeepSeek first_k_dense_replace, Qwen mlp_only_layers) must get no
 * experts placed — loading one fails.
 */
export type ModelPlacementInit = PlacementInit & { moeLayers: readonly number[] };

export class ModelRuntime {
  private constructor(
    readonly id: string,
    readonly spec: ModelSpec,
    readonly tokenizer: TextTokenizer | null,
    private readonly model: ModelForward,
    private readonly placementInit: ModelPlacementInit,
  ) {}

  /**
   * Loads model `id` from R2. `routing` = the deployer's routing knobs (default: from the vars
   * ROUTER_TEMPERATURE, CAPACITY_FACTOR, ROUTER_NOISE_STD; unset = off).
   */
  static async load(env: Env, id: string, routing: RoutingOptions = routingOptionsFromEnv(env)): Promise<ModelRuntime> {
    const opened = await openModelFromR2(env.MODELS, id);
    const { spec, ckpt } = opened;
    const budgets = readBudgets(env);
    const need = denseBytes(spec);
    if (need > budgets.workerBytes) {
      throw new BudgetError(
        `model "${id}" does not fit the Worker: its dense weights need ${formatMiB(need)}, WORKER_BUDGET_MB allows ${formatMiB(budgets.workerBytes)}`,
      );
    }
    const tokenizer = await loadTokenizer(env.MODELS, id);
    const dense = await loadDenseWeights(ckpt, spec);
    const k = createKernels("best", { maxBytes: budgets.workerBytes + WORKER_SCRATCH_BYTES });
    const init: ModelPlacementInit = {
      model: id,
      nLayers: spec.nLayers,
      nExperts: spec.nExperts,
      moeLayers: spec.moeLayers,
      // Real bytes of one expert as the ExpertHosts will hold it (int8 ≈ ¼ of f32).
      expertBytes: expertStoredBytes(ckpt, spec, expertStoreOptions(env).quant),
      budgetBytes: budgets.expertHostBytes,
      minInstances: budgets.minExpertHosts,
    };
    return new ModelRuntime(id, spec, tokenizer, ModelForward.create(k, spec, dense, routing), init);
  }

  get kernelFlavor(): string {
    return this.model.kernels.flavor;
  }

  /** The routing knobs in force (all off unless the deployer set them). */
  get routingOptions(): RoutingOptions {
    return this.model.routing;
  }

  /** A KV cache for up to maxLen positions, sized for the attention kind; free it with `endSession`. */
  startSession(maxLen: number): Session {
    return this.model.startSession(maxLen);
  }

  endSession(s: Session): void {
    this.model.endSession(s);
  }

  async placement(env: Env) {
    return currentPlacement(env, this.placementInit);
  }

  /**
   * Runs `tokens` at positions session.length… through the model, appending to the KV cache.
   * Returns logits [nOut, vocab] for the last token (nOut = 1) or every token (`allLogits`).
   */
  async forward(env: Env, s: Session, tokens: number[], rng: () => number, opts: { allLogits?: boolean; trace?: ForwardTrace } = {}): Promise<Float32Array> {
    const placement = await this.placement(env);
    const trace = opts.trace;
    return this.model.forward(s, tokens, this.#experts(env, placement, rng, trace), rng, {
      allLogits: opts.allLogits,
      onRouting: trace ? (layer, routing) => trace.routing.push({ layer, routing }) : undefined,
    });
  }

  /**
   * Runs one MoE block on given inputs (verify's moe_layer check): [n, dModel] → [n, dModel], the
   * block output before the residual add — routed experts plus shared experts.
   */
  async moeBlock(env: Env, layer: number, input: Float32Array, rng: () => number): Promise<{ out: Float32Array; routing: Routing }> {
    if (this.spec.layers[layer]?.kind !== "moe") {
      throw ApiError.invalid("layer", `layer ${layer} is a dense MLP layer, not an MoE layer (MoE layers: ${this.spec.moeLayers.join(", ")})`);
    }
    const placement = await this.placement(env);
    return this.model.moeBlock(layer, input, this.#experts(env, placement, rng), rng);
  }

  /** Routed experts through the ExpertHost fan-out, recording each layer's dispatch. */
  #experts(env: Env, placement: Placement, rng: () => number, trace?: ForwardTrace): ExpertRunner {
    const { dModel } = this.spec;
    return async (layer, routing, h) => {
      const { out, dispatch } = await runExperts(env, placement, layer, routing, h, dModel, rng);
      trace?.dispatch.push(dispatch);
      return out;
    };
  }
}

/** Routing knobs from the deployment's vars (absent vars → off). */
export function routingOptionsFromEnv(env: Env): RoutingOptions {
  return parseRoutingOptions(env);
}

async function loadTokenizer(bucket: R2Bucket, id: string): Promise<TextTokenizer | null> {
  const [tj, tc] = await Promise.all([bucket.get(`${modelPrefix(id)}tokenizer.json`), bucket.get(`${modelPrefix(id)}tokenizer_config.json`)]);
  if (!tj) return null;
  const config = tc ? await tc.json() : {};
  return TextTokenizer.fromJson(await tj.json(), config);
}

/** One runtime per model per isolate, loaded on first use; a failed load is retried next time. */
const runtimes = new Map<string, Promise<ModelRuntime>>();

export function getRuntime(env: Env, id: string): Promise<ModelRuntime> {
  let r = runtimes.get(id);
  if (!r) {
    r = ModelRuntime.load(env, id);
    runtimes.set(id, r);
    r.catch(() => runtimes.delete(id));
  }
  return r;
}
