/**
 * @module What a Worker isolate records, and how it reaches the MetricsHub. Recording is a few
 * map updates on the request path; nothing waits on the hub. An isolate flushes its accumulated
 * values as one delta at most every FLUSH_INTERVAL_MS, from `waitUntil` (after the response), and
 * puts them back if the hub call fails, so a flush loses nothing and a request never pays for it.
 * A flush also carries the isolate's current in-flight and queued generations (a gauge, sent as a
 * value under the isolate's id: `isolate-loads.ts`).
 */
import { withDeadline } from "../platform/deadline";
import { setExpertEventSink } from "../platform/events";
import { METRICS } from "./catalog";
import { LOAD_HEARTBEAT_MS, type IsolateLoad } from "./isolate-loads";
import { MetricSet } from "./registry";

export const FLUSH_INTERVAL_MS = 1000;
/** The one MetricsHub instance every isolate reports to. */
export const HUB_NAME = "global";

const local = new MetricSet();
let lastFlush = 0;
let pending: Promise<void> | null = null;

/**
 * This isolate's current generations (admission, `src/routes/admission.ts`): a gauge, sent as a
 * value under this isolate's id rather than as a delta (`isolate-loads.ts` says why). `loadVersion`
 * counts changes, so a flush that raced a change does not mark the newer value as sent.
 */
let isolateId: string | null = null; // made on first use: Workers refuse random values at global scope
let load: IsolateLoad | null = null;
let loadVersion = 0;
let loadSentVersion = 0;
let loadSentAt = 0;

/** Sets this isolate's in-flight and queued generations (reported with the next flush). */
export function setWorkerLoad(inflight: number, queued: number): void {
  if (load && load.inflight === inflight && load.queued === queued) return;
  isolateId ??= crypto.randomUUID();
  load = { isolate: isolateId, inflight, queued };
  loadVersion++;
}

/** The load report is unsent, or non-zero and due for its heartbeat. */
function loadDue(now: number): boolean {
  if (!load) return false;
  if (loadSentVersion !== loadVersion) return true;
  return (load.inflight > 0 || load.queued > 0) && now - loadSentAt >= LOAD_HEARTBEAT_MS;
}

export type WaitUntilFn = (p: Promise<unknown>) => void;

/** Routes whose requests are counted under their own path; anything else is "other" (bounded cardinality). */
const KNOWN_ROUTES = new Set([
  "/",
  "/health",
  "/metrics",
  "/dashboard",
  "/dashboard/data",
  "/v1/models",
  "/v1/completions",
  "/v1/chat/completions",
  "/v1/placement",
  "/admin/forward",
  "/admin/moe",
  "/admin/hosts",
  "/admin/placement",
  "/admin/replan",
  "/admin/fault",
]);

export function routeLabel(pathname: string): string {
  const p = pathname.length > 1 ? pathname.replace(/\/+$/, "") : pathname;
  return KNOWN_ROUTES.has(p) ? p : "other";
}

export function recordRequest(route: string, method: string, status: number): void {
  local.inc(METRICS.requests, { route, method, status: String(status) });
  if (status === 429 || status === 503) local.inc(METRICS.refusals, { route, status: String(status) });
}

export interface GenerationRecord {
  model: string;
  /** Request start to first token (absent when no token was produced). */
  ttftMs: number | null;
  /** Request start to last token. */
  e2eMs: number;
  promptTokens: number;
  completionTokens: number;
  /** Decode time after the first token; divided by completionTokens − 1 for time per output token. */
  decodeMs: number;
  finish: "stop" | "length" | "error" | "aborted";
}

export function recordGeneration(g: GenerationRecord): void {
  const labels = { model: g.model };
  if (g.ttftMs !== null) local.observe(METRICS.ttft, labels, g.ttftMs / 1000);
  local.observe(METRICS.e2e, labels, g.e2eMs / 1000);
  if (g.completionTokens > 1) local.observe(METRICS.tpot, labels, g.decodeMs / 1000 / (g.completionTokens - 1));
  local.inc(METRICS.promptTokens, labels, g.promptTokens);
  local.inc(METRICS.completionTokens, labels, g.completionTokens);
  local.inc(METRICS.generations, { model: g.model, finish: g.finish });
}

/** Layer labels as strings, made once per layer index rather than per call. */
const layerLabels: { layer: string }[] = [];
const layerLabel = (layer: number) => (layerLabels[layer] ??= { layer: String(layer) });

/** One MoE layer's routed tokens and capacity drops (every layer call, whatever the backend). */
export function recordRouted(layer: number, tokens: number, dropped: number): void {
  const labels = layerLabel(layer);
  local.inc(METRICS.layerTokens, labels, tokens);
  if (dropped > 0) local.inc(METRICS.capacityDrops, labels, dropped);
}

/** One layer's expert fan-out: latency and RPCs sent (none for the in-Worker store). */
export function recordLayerCall(layer: number, seconds: number, rpcs: number): void {
  const labels = layerLabel(layer);
  local.observe(METRICS.fanout, labels, seconds);
  if (rpcs > 0) local.inc(METRICS.expertRpcs, labels, rpcs);
}

/** Assignments the capacity factor moved to a token's later choice, in one MoE layer call. */
export function recordRerouted(layer: number, assignments: number): void {
  if (assignments > 0) local.inc(METRICS.capacityReroutes, layerLabel(layer), assignments);
}

/** One ExpertHost RPC's wait outside the object (round trip minus the host's own time). */
export function recordRpcWait(layer: number, seconds: number): void {
  local.observe(METRICS.rpcWait, layerLabel(layer), seconds);
}

/** A failed expert call whose rows went to a retry or another replica. */
export function recordFailover(layer: number, code: string): void {
  local.inc(METRICS.failovers, { layer: String(layer), code });
}

/** One batched decode step: the requests and token rows it carried (the batch size). */
export function recordBatched(model: string, requests: number, rows: number): void {
  local.observe(METRICS.batchRequests, { model }, requests);
  local.observe(METRICS.batchRows, { model }, rows);
}

/** Prompt tokens a joining request took from a live request's KV cache (prefix sharing). */
export function recordPrefixShared(model: string, tokens: number): void {
  if (tokens > 0) local.inc(METRICS.prefixShared, { model }, tokens);
}

/**
 * Subscribes this isolate's recorder to the experts' events (../platform/events.ts). Called once
 * from app.ts at load, so every isolate of the script (the Worker's and the Durable Objects') gets
 * it; the Worker's requests schedule flushes, and a StageHost asks for one after running layers.
 */
export function installExpertMetrics(): void {
  setExpertEventSink({
    routed: recordRouted,
    layerCall: recordLayerCall,
    failover: recordFailover,
    rerouted: recordRerouted,
    rpcWait: recordRpcWait,
    batched: recordBatched,
    prefixShared: recordPrefixShared,
    flushSoon: scheduleFlush,
  });
}

/**
 * Sends what this isolate recorded to the hub, batched: at most one flush per FLUSH_INTERVAL_MS,
 * kept alive by `waitUntil` past the response. Calls while a flush is scheduled join it.
 */
export function scheduleFlush(env: Env, waitUntil: WaitUntilFn | undefined): void {
  if (pending || (local.isEmpty && !loadDue(Date.now()))) return;
  const wait = Math.max(0, lastFlush + FLUSH_INTERVAL_MS - Date.now());
  pending = (async () => {
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await flushNow(env);
  })().finally(() => (pending = null));
  if (waitUntil) waitUntil(pending);
}

/**
 * Schedules a flush when only the load report's heartbeat is due: called on every streamed token,
 * so a long generation keeps its isolate counted without a flush per token.
 */
export function flushIfLoadDue(env: Env, waitUntil: WaitUntilFn | undefined): void {
  if (!pending && loadDue(Date.now())) scheduleFlush(env, waitUntil);
}

/** Flushes immediately (a scrape does this for its own isolate so its own requests show). */
export async function flushNow(env: Env): Promise<boolean> {
  if (local.isEmpty && !loadDue(Date.now())) return false;
  const delta = local.take();
  lastFlush = Date.now();
  const sentVersion = loadVersion;
  const report = load ? { ...load } : undefined;
  try {
    // A deadline, so a hub that never answers cannot keep this isolate's `pending` flush forever.
    await withDeadline(
      Promise.resolve(env.METRICS_HUB.getByName(HUB_NAME).ingest(delta, Date.now(), report)),
      10_000,
      "MetricsHub",
    );
    if (report) {
      loadSentVersion = sentVersion;
      loadSentAt = lastFlush;
    }
    return true;
  } catch (err) {
    local.merge(delta); // keep the values for the next flush
    console.error(
      JSON.stringify({
        level: "warn",
        msg: "metrics flush failed",
        error: err instanceof Error ? err.message : String(err),
      }),
    );
    return false;
  }
}
