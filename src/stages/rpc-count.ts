/**
 * @module RPCs (subrequests) per invocation, counted from the design (pure), so the platform's
 * per-invocation limits are checked in tests for the worst case — longest generation, largest
 * prompt — instead of discovered in production. One request is one invocation of the Worker;
 * every `run` call a StageHost receives is one invocation of that StageHost, and a session
 * driver's one `decode` call (the whole decode loop of a pipelined request) is one invocation.
 */

export interface RpcCountInput {
  /** Model layers that have routed experts. */
  moeLayers: readonly number[];
  /** Rows one token sends into a layer's fan-out: top-k, × slices per expert when sliced. */
  topK: number;
  /** ExpertHost instances in the placement. */
  expertHosts: number;
  /**
   * Most instances the placement can hold: the planner grows it up to MAX_EXPERT_HOSTS (never
   * shrinks the first one), so a fan-out of many rows can reach this many. Default: expertHosts.
   */
  maxExpertHosts?: number;
  /** Layer ranges of the pipeline stages; empty = the Worker runs every layer. */
  stages: readonly { first: number; end: number }[];
  /** Prompt tokens per forward call. */
  prefillChunk: number;
  /** Tries per expert batch (the fan-out fails over to another replica). */
  attempts: number;
  /** HeadHost shards of the output head (0 = the Worker holds it): one RPC each per forward. */
  headShards: number;
  /** Where embedding rows come from when the Worker lacks the table: the HeadHosts (tied), R2, or none. */
  embeddings: "worker" | "head-hosts" | "r2";
}

export interface RpcCount {
  /** Forward calls (prompt chunks + decode steps). */
  forwards: number;
  /** Subrequests of the Worker's invocation for the whole request. */
  worker: number;
  /** Most subrequests of one StageHost invocation (one `run` call). */
  stageCall: number;
  /** Subrequests of the session driver's invocation (its one `decode` call runs the whole loop). */
  driverCall: number;
  /** Per decode token: RPCs the Worker makes, and RPCs inside the model's region. */
  perToken: { worker: number; inRegion: number };
}

/** Per forward call: one placement-version check and at most one load report (each rate-limited). */
const PLACEMENT_AND_LOAD = 2;

/** Expert RPCs of one MoE layer for n rows: one per instance touched, per attempt. */
function fanOut(i: RpcCountInput, n: number): number {
  return i.attempts * Math.min(Math.max(i.expertHosts, i.maxExpertHosts ?? 0), n * i.topK);
}

function layersRpcs(i: RpcCountInput, first: number, end: number, n: number): number {
  const moe = i.moeLayers.filter((l) => l >= first && l < end).length;
  return moe === 0 ? 0 : moe * fanOut(i, n) + PLACEMENT_AND_LOAD;
}

/** RPCs of one request of `promptTokens` + `maxTokens` (every token generated, no early stop). */
/** Head and embedding RPCs of one forward call of n tokens (≤ one embedding read per token). */
function endsRpcs(i: RpcCountInput, n: number): number {
  const embed = i.embeddings === "head-hosts" ? Math.min(i.headShards, n) : i.embeddings === "r2" ? n : 0;
  return i.headShards + embed;
}

export function countRpcs(i: RpcCountInput, promptTokens: number, maxTokens: number): RpcCount {
  const chunks = Math.ceil(promptTokens / i.prefillChunk);
  const decodes = maxTokens - 1; // the last token is sampled from the previous step's logits
  const forwards = chunks + decodes;
  const lastLayer = Math.max(...i.moeLayers, ...i.stages.map((s) => s.end - 1), 0) + 1;
  const chunkRows = Math.min(promptTokens, i.prefillChunk);
  if (i.stages.length === 0) {
    const prefill = chunks * (layersRpcs(i, 0, lastLayer, chunkRows) + endsRpcs(i, chunkRows));
    const step = layersRpcs(i, 0, lastLayer, 1) + endsRpcs(i, 1);
    // + the Coordinator's first placement and the head's first load.
    return {
      forwards,
      worker: 1 + i.headShards + prefill + decodes * step,
      stageCall: 0,
      driverCall: 0,
      perToken: { worker: step, inRegion: 0 },
    };
  }
  const S = i.stages.length;
  const stageCall = Math.max(...i.stages.map((s, k) => layersRpcs(i, s.first, s.end, chunkRows) + (k + 1 < S ? 1 : 0)));
  const inRegion = i.stages.reduce((n, s, k) => n + layersRpcs(i, s.first, s.end, 1) + (k + 1 < S ? 1 : 0), 0);
  // The session driver (in the region) makes one chain call + the ends per forward, the
  // Coordinator's pipeline and the head's first load once, and frees the session on every stage.
  const driverCall = 1 + i.headShards + chunks * (1 + endsRpcs(i, chunkRows)) + decodes * (1 + endsRpcs(i, 1)) + S;
  // The Worker: the same first-load calls, open + end on every stage, one `decode` call.
  const worker = 1 + i.headShards + 2 * S + 1;
  return { forwards, worker, stageCall, driverCall, perToken: { worker: 0, inRegion: inRegion + 1 + endsRpcs(i, 1) } };
}

/**
 * The worst request a deployment admits: every split of `maxLen` positions between prompt and
 * generation is bounded by its two ends (all prompt, or all generation).
 */
export function worstCaseRpcs(i: RpcCountInput, maxLen: number): RpcCount {
  const a = countRpcs(i, maxLen - 1, 1);
  const b = countRpcs(i, 1, maxLen - 1);
  return {
    forwards: Math.max(a.forwards, b.forwards),
    worker: Math.max(a.worker, b.worker),
    stageCall: Math.max(a.stageCall, b.stageCall),
    driverCall: Math.max(a.driverCall, b.driverCall),
    perToken: b.perToken,
  };
}

/**
 * The worst invocation with BATCHING on: a generation's request (Worker) or `decode` call (session
 * driver) that leads shared steps. Every step it leads is charged as a full one of `stepRows` rows
 * (MAX_STEP_ROWS on the Worker, PREFILL_CHUNK on a driver) — each MoE layer's fan-out reaching every
 * ExpertHost the placement can grow to, the ends for every row — and it leads at most one step per
 * position its own session fills (≤ maxLen: the pick takes a leader with work first, and a step
 * with its row advances it) plus `leadForOthers` steps with no row of its own
 * (src/serving/step-batcher.ts LEAD_FOR_OTHERS_STEPS). Not counted: a driver's replays of sessions
 * a stage lost (each ≤ MAX_REPLAYS times: frees, opens and its tokens again, rare).
 */
export function worstCaseLeaderRpcs(
  i: RpcCountInput,
  maxLen: number,
  leadForOthers: number,
  stepRows: number,
): { worker: number; driverCall: number; perStep: number } {
  const steps = maxLen + leadForOthers;
  if (i.stages.length === 0) {
    const lastLayer = Math.max(...i.moeLayers, 0) + 1;
    const perStep = layersRpcs(i, 0, lastLayer, stepRows) + endsRpcs(i, stepRows);
    return { worker: 1 + i.headShards + steps * perStep, driverCall: 0, perStep };
  }
  // One runMany call into stage 0 and the ends a step; the first loads and the frees as countRpcs.
  const perStep = 1 + endsRpcs(i, stepRows);
  return {
    worker: countRpcs(i, 1, 1).worker,
    driverCall: 1 + i.headShards + steps * perStep + i.stages.length,
    perStep,
  };
}
