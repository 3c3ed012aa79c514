/**
 * @module The metrics the Worker isolates record themselves (HTTP requests, generation timings,
 * tokens): names, help text, types and histogram buckets. Metrics read from the Durable Objects at
 * scrape time (expert loads, placement, instance memory) are declared where they are rendered
 * (`scrape.ts`). Names follow Prometheus conventions (base units, `_total` on counters).
 */

export type MetricType = "counter" | "histogram" | "gauge";

export interface MetricDef {
  name: string;
  help: string;
  type: MetricType;
  /** Upper bounds (le) of a histogram's buckets, ascending; +Inf is implicit. */
  buckets?: readonly number[];
}

// Buckets in seconds. Edge MoE requests fan out over RPCs, so first tokens take tens of ms to
// seconds; per-token times sit between a few ms (small models, local) and a second.
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] as const;
const TPOT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5] as const;
// One layer's fan-out: an in-isolate store answers in well under a ms, RPCs to ExpertHosts take
// ms to tens of ms, retries after a deadline take seconds.
const FANOUT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5] as const;

// Requests (or rows) in one merged unit of work: 1 is a request alone.
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] as const;

export const METRICS = {
  requests: {
    name: "edge_moe_http_requests_total",
    help: "HTTP requests answered by the Worker, by route, method and status code.",
    type: "counter",
  },
  refusals: {
    name: "edge_moe_admission_refusals_total",
    help: "Requests refused for lack of capacity (429 or 503), by route and status code.",
    type: "counter",
  },
  ttft: {
    name: "edge_moe_time_to_first_token_seconds",
    help: "Time from the request reaching the Worker to the first generated token.",
    type: "histogram",
    buckets: LATENCY_BUCKETS,
  },
  tpot: {
    name: "edge_moe_time_per_output_token_seconds",
    help: "Mean decode time per output token after the first, per request.",
    type: "histogram",
    buckets: TPOT_BUCKETS,
  },
  e2e: {
    name: "edge_moe_e2e_request_latency_seconds",
    help: "Time from the request reaching the Worker to its last generated token.",
    type: "histogram",
    buckets: LATENCY_BUCKETS,
  },
  promptTokens: {
    name: "edge_moe_prompt_tokens_total",
    help: "Prompt tokens prefilled, by model.",
    type: "counter",
  },
  completionTokens: {
    name: "edge_moe_generation_tokens_total",
    help: "Tokens generated, by model.",
    type: "counter",
  },
  generations: {
    name: "edge_moe_generations_total",
    help: "Generations finished, by model and finish reason (stop, length, error, aborted).",
    type: "counter",
  },
  fanout: {
    name: "edge_moe_fanout_seconds",
    help: "Wall time of one MoE layer's expert fan-out (RPCs, retries and combine), by layer.",
    type: "histogram",
    buckets: FANOUT_BUCKETS,
  },
  layerTokens: {
    name: "edge_moe_expert_layer_tokens_total",
    help: "Tokens sent through a MoE layer's fan-out, by layer (RPCs per token = rpcs_total / this).",
    type: "counter",
  },
  expertRpcs: {
    name: "edge_moe_expert_rpcs_total",
    help: "Expert forward RPCs sent to ExpertHosts, retries included, by layer (0 for the in-Worker store).",
    type: "counter",
  },
  failovers: {
    name: "edge_moe_expert_failovers_total",
    help:
      "Expert calls that failed and whose rows were retried or sent to another replica, by layer and " +
      "code (the host's error code, or deadline / rpc_error for calls that threw).",
    type: "counter",
  },
  capacityDrops: {
    name: "edge_moe_capacity_drops_total",
    help: "(token, expert) assignments dropped by the capacity factor (no expert with room), by layer.",
    type: "counter",
  },
  capacityReroutes: {
    name: "edge_moe_capacity_reroutes_total",
    help:
      "(token, expert) assignments the capacity factor moved to a later choice of the token " +
      "(served, but outside its uncapped top-k), by layer.",
    type: "counter",
  },
  rpcWait: {
    name: "edge_moe_expert_rpc_wait_seconds",
    help:
      "Per ExpertHost forward RPC: round trip minus the host's own time in forward, i.e. the wait in " +
      "the runtime's queue for the object plus transit, by layer. The host's time is read with " +
      "performance.now(), which deployed Workers do not advance during pure JS/Wasm execution: in " +
      "production its compute is not subtracted and the value is an upper bound.",
    type: "histogram",
    buckets: FANOUT_BUCKETS,
  },
  batchRequests: {
    name: "edge_moe_batch_requests",
    help: "Requests sharing one batched decode step in the Worker (continuous batching's batch size), by model.",
    type: "histogram",
    buckets: BATCH_BUCKETS,
  },
  prefixShared: {
    name: "edge_moe_prefix_shared_tokens_total",
    help:
      "Prompt tokens whose K/V a joining request copied from a live request's KV cache instead of " +
      "running them through the model (PREFIX_SHARING), by model.",
    type: "counter",
  },
  batchRows: {
    name: "edge_moe_batch_rows",
    help: "Token rows in one batched decode step in the Worker (decode rows plus prompt chunks), by model.",
    type: "histogram",
    buckets: BATCH_BUCKETS,
  },
} as const satisfies Record<string, MetricDef>;

export type MetricKey = keyof typeof METRICS;

/** The local (isolate-recorded) metric definitions, by Prometheus name. */
export const LOCAL_DEFS: ReadonlyMap<string, MetricDef> = new Map(Object.values(METRICS).map((d) => [d.name, d]));
