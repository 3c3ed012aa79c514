/**
 * @module What the Coordinator is given to place a model's routed experts, computed one way for
 * every process that runs MoE layers (the Worker, or the StageHost that holds the layer).
 */
import { expertDtype } from "../model/quantized";
import { expertSlicesFor } from "../experts/expert-store";
import { maxSliceBytes } from "../experts/slices";
import { expertStoreOptions } from "../experts/options";
import type { PlacementInit } from "../coordinator/initial-placement";
import type { ModelCheckpoint } from "../platform/model-store";
import { readBudgets } from "../platform/budgets";

/**
 * `moeLayers` lists the only layers that have routed experts: dense layers (DeepSeek
 * first_k_dense_replace, Qwen mlp_only_layers) must get no experts placed — loading one fails.
 */
export type ModelPlacementInit = PlacementInit & { moeLayers: readonly number[] };

export function placementInitFor(env: Env, opened: ModelCheckpoint): ModelPlacementInit {
  const { spec, ckpt } = opened;
  const budgets = readBudgets(env);
  const opts = expertStoreOptions(env);
  const dtype = expertDtype(ckpt, spec, opts.quant);
  // The same count every ExpertHost computes from the same vars (ExpertStore.slices).
  const slices = expertSlicesFor(dtype, spec, budgets.expertHostBytes, opts.slices);
  return {
    model: opened.id,
    nLayers: spec.nLayers,
    nExperts: spec.nExperts,
    moeLayers: spec.moeLayers,
    slices,
    // Real bytes of one expert (its largest slice) as the ExpertHosts will hold it (int8 ≈ ¼ of f32).
    expertBytes: maxSliceBytes(dtype, spec.dModel, spec.dFf, slices),
    budgetBytes: budgets.expertHostBytes,
    minInstances: budgets.minExpertHosts,
  };
}
