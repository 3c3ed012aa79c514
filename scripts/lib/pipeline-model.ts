/**
 * Per-token decode latency of the candidate decode-loop designs (pure): where the loop runs
 * decides how many Worker↔region round trips each token pays. The deployment's shape (stages,
 * head shards, ExpertHosts) comes from src/stages/deployment.ts — the product's own planner.
 */
import type { DeploymentShape } from "../../src/stages/deployment";

/** Measured or assumed costs, in ms. */
export interface PipelineCosts {
  /** Worker (near the user) ↔ the model's region, one round trip. */
  wanRttMs: number;
  /** One RPC round trip inside the region. */
  rpcMs: number;
  /** Dense work of one layer for one token (attention, norms, router, shared experts). */
  denseLayerMs: number;
  /** One routed expert for one token. */
  expertMs: number;
  /** The whole output head for one token (split evenly over the shards, run in parallel). */
  headMs: number;
  /** Sampling one token from the logits (in whoever samples). */
  sampleMs: number;
}

export type DecodeDesign =
  | "worker-calls-each-stage"
  | "chain-worker-embeds-and-heads"
  | "chain-ends-in-region"
  | "session-driver-in-region";

export const DESIGNS: readonly { id: DecodeDesign; label: string }[] = [
  { id: "worker-calls-each-stage", label: "Worker calls each stage, the head and the embeddings" },
  { id: "chain-worker-embeds-and-heads", label: "stages chained; Worker embeds, calls the head, samples" },
  { id: "chain-ends-in-region", label: "stages chained; stage 0 embeds, last stage calls the head and samples" },
  { id: "session-driver-in-region", label: "session driver in the region drives the chain, streams tokens" },
];

export interface TokenCost {
  /** ms per decode token (the steady-state critical path). */
  msPerToken: number;
  /** Worker↔region round trips per token. */
  wanTrips: number;
  /** In-region RPCs on the critical path per token. */
  regionTrips: number;
}

/**
 * The critical path of one decode step for one request. Layers run in order; a MoE layer's
 * experts run in parallel on the hosts (one RPC per host touched); head shards in parallel.
 * With no stages (the Worker runs the layers) the Worker's expert fan-out crosses the WAN.
 */
export function tokenCost(
  d: DeploymentShape,
  nLayers: number,
  topK: number,
  c: PipelineCosts,
  design: DecodeDesign,
): TokenCost {
  const S = d.pipeline.stages.length;
  const moe = d.rpcInput.moeLayers.length;
  const hosts = Math.min(d.expertHosts, topK);
  const expertsPerHost = Math.ceil(topK / hosts);
  const compute =
    nLayers * c.denseLayerMs +
    moe * expertsPerHost * c.expertMs +
    c.headMs / Math.max(1, d.head?.shards.length ?? 1) +
    c.sampleMs;
  const headRemote = d.head !== null;
  const embedRemote = d.rpcInput.embeddings !== "worker";
  if (S === 0) {
    // The Worker runs the layers: its expert fan-out (and head/embedding calls) cross the WAN,
    // unless the whole loop moves into the region (a driver there runs the same layers).
    const remote = moe + (headRemote ? 1 : 0) + (embedRemote ? 1 : 0);
    if (design === "session-driver-in-region")
      return { msPerToken: compute + remote * c.rpcMs, wanTrips: 0, regionTrips: remote };
    return { msPerToken: compute + remote * c.wanRttMs, wanTrips: remote, regionTrips: 0 };
  }
  const ends = (headRemote ? 1 : 0) + (embedRemote ? 1 : 0);
  const fanout = moe; // one parallel round per MoE layer, from the stage, in region
  switch (design) {
    case "worker-calls-each-stage":
      return {
        msPerToken: compute + (S + ends) * c.wanRttMs + fanout * c.rpcMs,
        wanTrips: S + ends,
        regionTrips: fanout,
      };
    case "chain-worker-embeds-and-heads":
      return {
        msPerToken: compute + (1 + ends) * c.wanRttMs + (S - 1 + fanout) * c.rpcMs,
        wanTrips: 1 + ends,
        regionTrips: S - 1 + fanout,
      };
    case "chain-ends-in-region":
      return {
        msPerToken: compute + c.wanRttMs + (S - 1 + ends + fanout) * c.rpcMs,
        wanTrips: 1,
        regionTrips: S - 1 + ends + fanout,
      };
    case "session-driver-in-region":
      return { msPerToken: compute + (S + ends + fanout) * c.rpcMs, wanTrips: 0, regionTrips: S + ends + fanout };
  }
}
