/**
 * @module Turns a collection (`collect.ts`) into Prometheus families: the isolates' merged
 * counters and histograms, then values read from the Durable Objects at scrape time — routed
 * load per (layer, expert), balance, placement, the Coordinator's re-plan counters (monotonic,
 * kept in its SQLite), and each ExpertHost's memory and calls.
 */
import { LOCAL_DEFS, type MetricDef } from "./catalog";
import type { Collected } from "./collect";
import { LOAD_TTL_MS } from "./isolate-loads";
import type { Family, Sample } from "./prometheus";
import type { CounterSample, HistogramSample } from "./registry";

type Gauge = { name: string; help: string; type: "gauge" | "counter" };

const G = {
  expertLoad: {
    name: "edge_moe_expert_load_tokens",
    type: "gauge",
    help: "Routed tokens per load window for each (layer, expert): the Coordinator's smoothed load forecast.",
  },
  expertServed: {
    name: "edge_moe_expert_served_tokens_total",
    type: "counter",
    help:
      "Tokens each (layer, expert) computed, summed over the instances holding it " +
      "(resets when an instance restarts).",
  },
  replicas: {
    name: "edge_moe_expert_replicas",
    type: "gauge",
    help: "Replicas of each (layer, expert) in the current placement.",
  },
  balance: {
    name: "edge_moe_layer_balance_ratio",
    type: "gauge",
    help: "Per MoE layer: max/mean instance load of the current placement under the smoothed loads (1 = balanced).",
  },
  version: { name: "edge_moe_placement_version", type: "gauge", help: "Version of the published placement." },
  instances: { name: "edge_moe_placement_instances", type: "gauge", help: "ExpertHost instances in the placement." },
  windows: { name: "edge_moe_load_windows_total", type: "counter", help: "Load windows the Coordinator has folded." },
  turnRunning: {
    name: "edge_moe_replan_running_seconds",
    type: "gauge",
    help:
      "How long the Coordinator's re-plan or reconcile running now has run (0: none runs); a large value is a " +
      "stuck turn (the turns that find it running count in edge_moe_replan_busy_turns_total).",
  },
  busyTurns: {
    name: "edge_moe_replan_busy_turns_total",
    type: "counter",
    help: "Re-plan turns that found a re-plan or reconcile still running and did nothing (kept in its SQLite).",
  },
  replans: {
    name: "edge_moe_replans_total",
    type: "counter",
    help: "Re-plans the Coordinator ran, by model, trigger and outcome (kept in its SQLite).",
  },
  replicaOps: {
    name: "edge_moe_placement_ops_total",
    type: "counter",
    help: "Placement changes applied by re-plans, by model and op (add-replica = a copy).",
  },
  loadFailures: {
    name: "edge_moe_replica_load_failures_total",
    type: "counter",
    help: "Replica loads that failed during a re-plan, by model.",
  },
  bytesMoved: {
    name: "edge_moe_replan_bytes_moved_total",
    type: "counter",
    help: "Expert weight bytes copied to new replicas by re-plans, by model.",
  },
  staleReports: {
    name: "edge_moe_load_reports_stale_total",
    type: "counter",
    help: "Load reports routed under an older placement version (their per-instance rows are not used).",
  },
  loaded: {
    name: "edge_moe_instance_loaded_bytes",
    type: "gauge",
    help: "Bytes of expert weights an ExpertHost instance holds.",
  },
  budget: {
    name: "edge_moe_instance_budget_bytes",
    type: "gauge",
    help: "Bytes of expert weights an ExpertHost instance may hold (EXPERT_HOST_BUDGET_MB).",
  },
  wasm: {
    name: "edge_moe_instance_wasm_bytes",
    type: "gauge",
    help: "Wasm linear memory in use by an ExpertHost instance's kernels.",
  },
  experts: {
    name: "edge_moe_instance_experts_loaded",
    type: "gauge",
    help: "Experts loaded on an ExpertHost instance.",
  },
  calls: {
    name: "edge_moe_instance_rpc_calls_total",
    type: "counter",
    help: "Forward RPCs an ExpertHost instance served (one per layer fan-out that reached it).",
  },
  tokens: {
    name: "edge_moe_instance_expert_tokens_total",
    type: "counter",
    help: "Expert-token computations an ExpertHost instance ran.",
  },
  inflight: {
    name: "edge_moe_instance_inflight_calls",
    type: "gauge",
    help:
      "Forward RPCs inside an ExpertHost instance at scrape time (begun, not answered): its queue depth " +
      "as far as the object can see it.",
  },
  up: {
    name: "edge_moe_instance_up",
    type: "gauge",
    help: "1 when the instance answered the stats RPC of this scrape, else 0.",
  },
  scrapeRpcs: { name: "edge_moe_scrape_rpcs", type: "gauge", help: "Durable Object RPCs this scrape made." },
  scrapeSeconds: {
    name: "edge_moe_scrape_duration_seconds",
    type: "gauge",
    help: "Time this scrape took to collect its values.",
  },
  workerInflight: {
    name: "edge_moe_worker_inflight_requests",
    type: "gauge",
    help:
      "Generations holding an admission slot in the Worker, summed over the isolates that reported in the " +
      `last ${LOAD_TTL_MS / 1000} s (each isolate sends its own current value; the MetricsHub sums fresh ones).`,
  },
  workerQueued: {
    name: "edge_moe_worker_queued_requests",
    type: "gauge",
    help: "Generations waiting for an admission slot in the Worker, summed like edge_moe_worker_inflight_requests.",
  },
  workerIsolates: {
    name: "edge_moe_worker_busy_isolates",
    type: "gauge",
    help: "Worker isolates with in-flight or queued generations among the fresh reports.",
  },
  flushes: {
    name: "edge_moe_metrics_flushes_total",
    type: "counter",
    help: "Metric deltas the MetricsHub received from Worker isolates.",
  },
} as const satisfies Record<string, Gauge>;

export function scrapeFamilies(c: Collected): Family[] {
  const families: Family[] = [];
  const counters = groupBy(c.hub.metrics.counters);
  const histograms = groupBy(c.hub.metrics.histograms);
  const defs: MetricDef[] = [...LOCAL_DEFS.values()];
  for (const def of defs) {
    if (def.type === "histogram") {
      families.push({ name: def.name, help: def.help, type: "histogram", histograms: histograms.get(def.name) ?? [] });
    } else {
      families.push({
        name: def.name,
        help: def.help,
        type: "counter",
        samples: (counters.get(def.name) ?? []).map((s) => ({ labels: s.labels, value: s.value })),
      });
    }
  }

  const samples = new Map<Gauge, Sample[]>(Object.values(G).map((g) => [g, []]));
  const add = (g: Gauge, labels: Record<string, string>, value: number) => samples.get(g)!.push({ labels, value });
  for (const { model, status, hosts } of c.models) {
    const p = status.placement;
    const layerOf = (row: number) => String(p?.layers ? p.layers[row] : row);
    status.loads.forEach((row, r) =>
      row.forEach((v, e) => add(G.expertLoad, { model, layer: layerOf(r), expert: String(e) }, v)),
    );
    status.balance.forEach((v, r) => add(G.balance, { model, layer: layerOf(r) }, v));
    add(G.windows, { model }, status.windows);
    const since = status.busySince;
    add(G.turnRunning, { model }, typeof since === "number" ? Math.max(0, (Date.now() - since) / 1000) : 0);
    const k = status.counters;
    if (k) {
      for (const r of k.replans) add(G.replans, { model, trigger: r.trigger, reason: r.reason }, r.count);
      for (const [op, n] of Object.entries(k.ops)) add(G.replicaOps, { model, op }, n);
      add(G.loadFailures, { model }, k.loadFailures);
      add(G.bytesMoved, { model }, k.bytesMoved);
      add(G.staleReports, { model }, k.staleReports);
      add(G.busyTurns, { model }, k.busyTurns ?? 0);
    }
    if (!p) continue;
    add(G.version, { model }, p.version);
    add(G.instances, { model }, p.instances.length);
    p.replicas.forEach((row, r) =>
      row.forEach((reps, e) => add(G.replicas, { model, layer: layerOf(r), expert: String(e) }, reps.length)),
    );
    const served = new Map<string, number>();
    p.instances.forEach((inst, i) => {
      const labels = { model, instance: inst.name };
      const h = hosts[i];
      add(G.up, labels, h ? 1 : 0);
      add(G.budget, labels, h?.budgetBytes ?? inst.budgetBytes);
      if (!h) return;
      add(G.loaded, labels, h.bytesLoaded);
      add(G.wasm, labels, h.wasmBytesInUse);
      add(G.experts, labels, h.loaded.length);
      add(G.calls, labels, h.calls);
      add(G.tokens, labels, h.tokens);
      add(G.inflight, labels, h.inflight);
      for (const [key, n] of Object.entries(h.expertTokens)) served.set(key, (served.get(key) ?? 0) + n);
    });
    for (const [key, n] of served) {
      const [layer, expert] = key.split(":");
      add(G.expertServed, { model, layer, expert }, n);
    }
  }
  add(G.scrapeRpcs, {}, c.rpcs);
  add(G.scrapeSeconds, {}, c.ms / 1000);
  add(G.flushes, {}, c.hub.flushes);
  add(G.workerInflight, {}, c.hub.workerLoad.inflight);
  add(G.workerQueued, {}, c.hub.workerLoad.queued);
  add(G.workerIsolates, {}, c.hub.workerLoad.isolates);
  for (const [g, s] of samples) families.push({ name: g.name, help: g.help, type: g.type, samples: s });
  return families;
}

function groupBy<T extends CounterSample | HistogramSample>(xs: T[]): Map<string, T[]> {
  const m = new Map<string, T[]>();
  for (const x of xs) m.set(x.name, [...(m.get(x.name) ?? []), x]);
  return m;
}
