/**
 * @module The JSON the dashboard polls: one model's heat map (smoothed routed load per layer ×
 * expert, replicas, tokens served), its placement (which instance holds which experts, memory
 * used vs budget), recent re-plans, and the hub's timeline (tokens/s, TTFT) — all from one
 * `collect` (see there for its RPC cost).
 */
import type { Collected } from "./collect";
import { SLOT_MS, type TimelineSlot } from "./metrics-hub";

export interface DashboardInstance {
  name: string;
  up: boolean;
  bytesLoaded: number;
  budgetBytes: number;
  wasmBytes: number;
  calls: number;
  tokens: number;
  /** "layer:expert" of every replica the placement puts here. */
  experts: string[];
}

export interface DashboardData {
  model: string;
  models: string[];
  at: number;
  /** Model layer index of each heat-map row. */
  layers: number[];
  nExperts: number;
  /** [row][expert] smoothed routed tokens per load window. */
  loads: number[][];
  /** [row][expert] replicas in the placement. */
  replicas: number[][];
  /** [row][expert] tokens computed, summed over instances. */
  served: number[][];
  balance: number[];
  windowMs: number;
  placement: { version: number; instances: DashboardInstance[] } | null;
  replans: {
    at: number;
    trigger: string;
    reason: string;
    fromVersion: number;
    toVersion: number;
    ops: Record<string, number>;
    failedLoads: number;
  }[];
  timeline: TimelineSlot[];
  slotMs: number;
  scrape: { rpcs: number; ms: number };
}

export function dashboardData(c: Collected, model: string): DashboardData {
  const view = c.models.find((m) => m.model === model);
  const base: DashboardData = {
    model,
    models: c.hub.models,
    at: Date.now(),
    layers: [],
    nExperts: 0,
    loads: [],
    replicas: [],
    served: [],
    balance: [],
    windowMs: 0,
    placement: null,
    replans: [],
    timeline: c.hub.timeline,
    slotMs: SLOT_MS,
    scrape: { rpcs: c.rpcs, ms: c.ms },
  };
  if (!view) return base;
  const { status, hosts } = view;
  const p = status.placement;
  const rows = p ? p.nLayers : status.loads.length;
  const layers = Array.from({ length: rows }, (_, r) => (p?.layers ? p.layers[r] : r));
  const nExperts = p?.nExperts ?? status.loads[0]?.length ?? 0;
  const grid = () => Array.from({ length: rows }, () => new Array<number>(nExperts).fill(0));
  const loads = grid();
  status.loads.forEach((row, r) => row.forEach((v, e) => r < rows && e < nExperts && (loads[r][e] = v)));
  const replicas = grid();
  const served = grid();
  const rowOfLayer = new Map(layers.map((l, r) => [l, r]));
  let instances: DashboardInstance[] = [];
  if (p) {
    instances = p.instances.map((inst, i) => ({
      name: inst.name,
      up: hosts[i] !== null,
      bytesLoaded: hosts[i]?.bytesLoaded ?? 0,
      budgetBytes: hosts[i]?.budgetBytes ?? inst.budgetBytes,
      wasmBytes: hosts[i]?.wasmBytesInUse ?? 0,
      calls: hosts[i]?.calls ?? 0,
      tokens: hosts[i]?.tokens ?? 0,
      experts: [],
    }));
    p.replicas.forEach((row, r) =>
      row.forEach((reps, e) => {
        replicas[r][e] = reps.length;
        for (const rep of reps) instances[rep.instance]?.experts.push(`${layers[r]}:${e}`);
      }),
    );
    for (const h of hosts) {
      for (const [key, n] of Object.entries(h?.expertTokens ?? {})) {
        const [layer, expert] = key.split(":").map(Number);
        const r = rowOfLayer.get(layer);
        if (r !== undefined && expert < nExperts) served[r][expert] += n;
      }
    }
  }
  const replans = status.lastReplans.map((r) => {
    const ops: Record<string, number> = {};
    for (const op of r.ops) ops[op.op] = (ops[op.op] ?? 0) + 1;
    return {
      at: r.at,
      trigger: r.trigger,
      reason: r.reason,
      fromVersion: r.fromVersion,
      toVersion: r.toVersion,
      ops,
      failedLoads: r.failedLoads.length,
    };
  });
  return {
    ...base,
    layers,
    nExperts,
    loads,
    replicas,
    served,
    balance: status.balance,
    windowMs: status.windowMs,
    placement: p ? { version: p.version, instances } : null,
    replans,
  };
}
