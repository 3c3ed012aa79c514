/**
 * @module The shape of a deployment from a model's config and the deployment's vars (pure): where
 * the layers run (pipeline placement), how many ExpertHosts the experts need, and the longest
 * request the KV budgets admit — what the RPC count and `[limits]` are checked against.
 */
import { denseEndsBytes, denseLayerBytes } from "../model/architectures";
import { layerHeldBytes } from "../model/dense-layers";
import type { ModelSpec } from "../model/config";
import { initialPlacement } from "../coordinator/initial-placement";
import type { Placement } from "../coordinator/placement";
import { chooseSlices, forcedSlices, maxSliceBytes } from "../experts/slices";
import type { ExpertDtype } from "../kernels/packing";
import { planPipeline, type PipelinePlacement } from "../coordinator/pipeline-placement";
import { readBudgets } from "../platform/budgets";
import { numberVar, type Vars } from "../platform/env";
import { DEFAULT_RETRY } from "../experts/retry-policy";
import { planHeadShards, type HeadPlacement } from "../coordinator/head-placement";
import { headHostBudgetBytes } from "../head/budget";
import { deploymentMaxLen, EMBED_CACHE_BYTES, PREFILL_CHUNK, readStageBudgets } from "../serving/stage-budgets";
import type { RpcCountInput } from "./rpc-count";
import { replanConfigFromEnv } from "../coordinator/replan";

export interface DeploymentShape {
  pipeline: PipelinePlacement;
  /** The output head's shards (null: the Worker holds the head). */
  head: HeadPlacement | null;
  expertHosts: number;
  /** The first expert placement (units e·expertSlices + s when sliced), as the Coordinator makes it. */
  experts: Placement;
  /** Slices per expert (1: whole experts), as ExpertHosts and the Worker choose them. */
  expertSlices: number;
  /** Bytes of one placement unit on a host: an expert, or its largest slice. */
  expertUnitBytes: number;
  /** Longest prompt + generation one request may have (context, or less if the KV budget binds). */
  maxLen: number;
  rpcInput: RpcCountInput;
}

/**
 * The routed experts' part of a deployment: slices per expert, bytes of a unit, first placement.
 * `experts` as in `deploymentShape`. Throws a BudgetError when not even one unit fits a host.
 */
export function expertDeployment(
  spec: ModelSpec,
  vars: Vars,
  experts: number | ExpertDtype,
  model = "model",
): { placement: Placement; slices: number; expertBytes: number } {
  const budgets = readBudgets(vars);
  const { dModel, dFf } = spec;
  const slices =
    typeof experts === "number"
      ? 1
      : chooseSlices(dFf, budgets.expertHostBytes, (n) => maxSliceBytes(experts, dModel, dFf, n), forcedSlices(vars));
  const expertBytes = typeof experts === "number" ? experts : maxSliceBytes(experts, dModel, dFf, slices);
  const placement = initialPlacement({
    model,
    nLayers: spec.nLayers,
    moeLayers: spec.moeLayers,
    nExperts: spec.nExperts,
    slices,
    expertBytes,
    budgetBytes: budgets.expertHostBytes,
    minInstances: budgets.minExpertHosts,
    spareFraction: numberVar(vars, "SPARE_SLOT_FRACTION", 0, { min: 0, max: 0.9 }),
  });
  return { placement, slices, expertBytes };
}

/**
 * `experts`: how the ExpertHosts hold an expert — its dtype (slices then chosen as the hosts and
 * the Worker choose them: EXPERT_SLICES, else the fewest whose largest slice fits
 * EXPERT_HOST_BUDGET_MB), or the bytes of one whole expert (placed unsliced).
 */
export function deploymentShape(
  spec: ModelSpec,
  vars: Vars,
  experts: number | ExpertDtype,
  model = "model",
): DeploymentShape {
  const budgets = readBudgets(vars);
  const stageBudgets = readStageBudgets(vars);
  // Same rule as ModelRuntime.load: the head leaves the Worker when forced or when it does not fit.
  const forcedHead = stageBudgets.forcedHeadShards;
  const head =
    forcedHead > 0 || denseEndsBytes(spec) > budgets.workerBytes
      ? planHeadShards({
          model,
          vocabSize: spec.vocabSize,
          dModel: spec.dModel,
          bytesPerRow: 4 * spec.dModel,
          budgetBytes: headHostBudgetBytes(vars),
          shards: forcedHead || undefined,
        })
      : null;
  const pipeline = planPipeline({
    model,
    layerBytes: spec.layers.map((_, l) => layerHeldBytes(spec, l, stageBudgets.denseFormat)),
    workerLayerBytes: spec.layers.map((_, l) => denseLayerBytes(spec, l)),
    endsBytes: head ? 4 * spec.dModel + (spec.tieEmbeddings ? 0 : EMBED_CACHE_BYTES) : denseEndsBytes(spec),
    workerBytes: budgets.workerBytes,
    stageBytes: stageBudgets.stageBytes,
    forcedStages: stageBudgets.forcedStages,
  });
  const { placement, slices, expertBytes } = expertDeployment(spec, vars, experts, model);
  const maxLen = deploymentMaxLen(spec, pipeline.stages, stageBudgets);
  return {
    pipeline,
    head,
    expertHosts: placement.instances.length,
    experts: placement,
    expertSlices: slices,
    expertUnitBytes: expertBytes,
    maxLen,
    rpcInput: {
      moeLayers: spec.moeLayers,
      // Rows a token sends into a layer's fan-out: one per routed expert's slice (unit).
      topK: spec.topK * slices,
      expertHosts: placement.instances.length,
      maxExpertHosts: Math.max(placement.instances.length, replanConfigFromEnv(vars).maxInstances),
      stages: pipeline.stages,
      prefillChunk: PREFILL_CHUNK,
      attempts: DEFAULT_RETRY.maxAttempts,
      headShards: head?.shards.length ?? 0,
      embeddings: head === null ? "worker" : spec.tieEmbeddings ? "head-hosts" : "r2",
    },
  };
}
