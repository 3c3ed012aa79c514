/**
 * @module What the Coordinator is given to place a model's routed experts, computed one way for
 * every process that runs MoE layers (the Worker, or the StageHost that holds the layer).
 */
import { expertStoredBytes } from "../model/quantized";
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
  return {
    model: opened.id,
    nLayers: spec.nLayers,
    nExperts: spec.nExperts,
    moeLayers: spec.moeLayers,
    // Real bytes of one expert as the ExpertHosts will hold it (int8 ≈ ¼ of f32).
    expertBytes: expertStoredBytes(ckpt, spec, expertStoreOptions(env).quant),
    budgetBytes: budgets.expertHostBytes,
    minInstances: budgets.minExpertHosts,
  };
}
