/**
 * @module Projects a whole model's decode cost from a `bench:e2e` run on its first layers (the
 * Qwen3-30B-A3B 4-layer slice → its 48 layers), for `npm run plan -- <config> --measured FILE`.
 * Pure. The bench's model must be a slice of the config: same width, experts, top-k and vocabulary.
 *
 * Decode time per token is taken as linear in the layer count through the origin: the measured
 * ms/token ÷ measured layers × the config's layers. The measured time also holds the per-token
 * work that does not grow with layers (embedding row, head shards, sampling, the driver's stream),
 * so the projection over-counts that part by (layers ÷ measured layers − 1) times: an upper bound
 * under the measured machine's conditions. Expert RPCs per token scale with the MoE layers (one
 * fan-out per MoE layer, measured from /metrics); stage and head RPCs are the plan's. The measured
 * RPCs are per processed token, prompt tokens included: a prompt chunk's tokens share one call per
 * host, so this is below a decoded token's count (at most top-k hosts per MoE layer).
 */
import type { ModelSpec } from "../../src/model/config";

/** The parts of bench:e2e's JSON (scripts/bench-e2e.ts) the projection reads. */
export interface E2eResult {
  date: string;
  model: {
    id: string;
    nLayers: number;
    moeLayers: number;
    dModel: number;
    nExperts: number;
    topK: number;
    vocabSize: number;
  };
  configurations: Record<
    string,
    { msPerToken: number; decodeTokensPerSec: number; measuredExpertRpcsPerToken?: number | null; expertHosts: number }
  >;
}

export interface MeasuredProjection {
  source: string;
  measuredModel: string;
  measuredLayers: number;
  measuredMsPerToken: number;
  measuredExpertRpcsPerToken: number | null;
  /** The config's layers at the measured per-layer cost (upper bound, see the module comment). */
  projectedMsPerToken: number;
  projectedTokensPerSec: number;
  /** Measured expert RPCs per MoE layer × the config's MoE layers + the plan's stage and head RPCs. */
  projectedRpcsPerToken: number | null;
}

/** Throws (naming the field) when `r` is not a run of a slice of `spec`. */
export function projectFromMeasured(
  spec: ModelSpec,
  r: E2eResult,
  source: string,
  plan: { stages: number; headShards: number },
  configuration = "distributed",
): MeasuredProjection {
  const m = r.model;
  const same: [string, number, number][] = [
    ["dModel", m.dModel, spec.dModel],
    ["nExperts", m.nExperts, spec.nExperts],
    ["topK", m.topK, spec.topK],
    ["vocabSize", m.vocabSize, spec.vocabSize],
  ];
  for (const [field, got, want] of same)
    if (got !== want) throw new Error(`--measured ${source}: model.${field} is ${got}, the config's is ${want}`);
  if (!(m.nLayers >= 1 && m.nLayers <= spec.nLayers))
    throw new Error(`--measured ${source}: model.nLayers ${m.nLayers} is not a slice of ${spec.nLayers} layers`);
  const c = r.configurations[configuration];
  if (!c || !(c.msPerToken > 0))
    throw new Error(`--measured ${source}: no "${configuration}" configuration with msPerToken`);
  const projectedMsPerToken = (c.msPerToken / m.nLayers) * spec.nLayers;
  const perMoeLayer =
    c.measuredExpertRpcsPerToken != null && m.moeLayers > 0 ? c.measuredExpertRpcsPerToken / m.moeLayers : null;
  return {
    source,
    measuredModel: m.id,
    measuredLayers: m.nLayers,
    measuredMsPerToken: c.msPerToken,
    measuredExpertRpcsPerToken: c.measuredExpertRpcsPerToken ?? null,
    projectedMsPerToken,
    projectedTokensPerSec: 1000 / projectedMsPerToken,
    projectedRpcsPerToken:
      perMoeLayer === null ? null : perMoeLayer * spec.moeLayers.length + plan.stages + plan.headShards,
  };
}
