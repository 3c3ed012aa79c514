/**
 * @module The benchmark's scenarios: seeded synthetic load traces (static Zipf, drifting, edge-sized
 * request-correlated windows, sudden jumps, several layers sharing memory) and user load files,
 * each with the cluster shape it runs on.
 */
import { readFileSync } from "node:fs";
import type { ClusterShape } from "./placement-policies";
import {
  parseLoadFile,
  syntheticTrace,
  type Drift,
  type LoadTrace,
  type RequestMix,
  type WorkloadOptions,
} from "./workloads";

/**
 * - `zipf`: fixed popularity, large windows (sampling noise only).
 * - `drift`: large windows (32k tokens) of independent Poisson counts with a 10% burst factor,
 *   hot set rotating or swapping over a few windows — the traces the planner was first tuned on.
 * - `edge`: edge-sized windows (4k tokens, ~2 s of a modest deployment) whose counts come from
 *   32 requests in flight that each prefer their own experts for ~8 windows, over a hot set that
 *   rotates (per layer).
 * - `edge-jumps`: the same plus sudden swaps: a hot expert trades places with a random one
 *   between two windows (5% of windows per layer). No plan made before a jump can see it, so
 *   these set the p99 of every placement alike; they are kept apart so the p99 of gradual drift
 *   stays visible.
 * - `multi-layer`: 8 layers sharing every instance's memory (planner time at model scale).
 */
export type ScenarioKind = "zipf" | "drift" | "edge" | "edge-jumps" | "multi-layer" | "file";

export interface Scenario {
  name: string;
  kind: ScenarioKind;
  trace: LoadTrace;
  shape: ClusterShape;
  workload?: WorkloadOptions;
}

/** Bytes of one expert of the demo model: w1, w3 [dFf, dModel] and w2 [dModel, dFf] in f32. */
export const DEMO_EXPERT_BYTES = 3 * 256 * 2048 * 4;
export const TOKENS_PER_WINDOW = 32_768;
export const EDGE_TOKENS_PER_WINDOW = 4096;
export const TOP_K = 8;
export const BURSTINESS = 0.1;
export const DRIFTS: Record<string, Drift> = {
  rotate: { kind: "rotate", speed: 0.1 },
  swap: { kind: "swap", rate: 0.2, hotSet: 8, rampWindows: 4 },
  mixed: { kind: "mixed", speed: 0.1, rate: 0.05, hotSet: 8 },
};
export const EDGE_REQUESTS: RequestMix = { active: 32, meanWindows: 8, affinity: 1 };

export function shapeFor(nExperts: number, nInstances: number, spare: number, nLayers = 1): ClusterShape {
  return {
    nInstances,
    slotsPerInstance: Math.ceil(nExperts / nInstances) + spare,
    nLayers,
    expertBytes: DEMO_EXPERT_BYTES,
  };
}

const SIZES: [number, number][] = [
  [64, 16],
  [64, 64],
  [256, 16],
  [256, 64],
];

export function syntheticScenarios(opts: { windows: number; spare: number; seed: number }): Scenario[] {
  const out: Scenario[] = [];
  const add = (name: string, kind: ScenarioKind, workload: WorkloadOptions, nInstances: number): void => {
    out.push({
      name,
      kind,
      trace: syntheticTrace(workload),
      shape: shapeFor(workload.nExperts, nInstances, opts.spare, workload.nLayers ?? 1),
      workload,
    });
  };
  const large = (nExperts: number, s: number, drift: Drift): WorkloadOptions => ({
    nExperts,
    s,
    nWindows: opts.windows,
    assignmentsPerWindow: TOKENS_PER_WINDOW * TOP_K,
    drift,
    burstiness: BURSTINESS,
    seed: opts.seed + nExperts * 7 + Math.round(s * 10),
  });
  const edge = (nExperts: number, s: number, drift: Drift, nLayers = 1): WorkloadOptions => ({
    nExperts,
    nLayers,
    s,
    nWindows: opts.windows,
    assignmentsPerWindow: EDGE_TOKENS_PER_WINDOW * TOP_K,
    drift,
    requests: EDGE_REQUESTS,
    seed: opts.seed + nExperts * 13 + Math.round(s * 10) + 5,
  });
  for (const [nExperts, nInstances] of SIZES)
    add(`static s=1 E=${nExperts} N=${nInstances}`, "zipf", large(nExperts, 1, { kind: "none" }), nInstances);
  for (const driftName of ["rotate", "swap"]) {
    for (const s of [0.6, 1.0, 1.2]) {
      for (const [nExperts, nInstances] of SIZES)
        add(
          `${driftName} s=${s} E=${nExperts} N=${nInstances}`,
          "drift",
          large(nExperts, s, DRIFTS[driftName]),
          nInstances,
        );
    }
  }
  for (const s of [0.6, 1.0, 1.2]) {
    for (const [nExperts, nInstances] of SIZES)
      add(`edge s=${s} E=${nExperts} N=${nInstances}`, "edge", edge(nExperts, s, DRIFTS.rotate), nInstances);
  }
  for (const s of [0.6, 1.0, 1.2]) {
    for (const [nExperts, nInstances] of [SIZES[0], SIZES[3]])
      add(`jumps s=${s} E=${nExperts} N=${nInstances}`, "edge-jumps", edge(nExperts, s, DRIFTS.mixed), nInstances);
  }
  // Several layers share each instance's memory: planner time and balance at model scale.
  add(
    "edge s=1 E=256 N=64 L=8",
    "multi-layer",
    { ...edge(256, 1, DRIFTS.rotate, 8), nWindows: Math.min(opts.windows, 60), seed: opts.seed + 99 },
    64,
  );
  return out;
}

export function fileScenarios(path: string, instanceCounts: number[], spare: number): Scenario[] {
  const trace = parseLoadFile(readFileSync(path, "utf8"), path);
  return instanceCounts.map((n) => ({
    name: `${path} N=${n}`,
    kind: "file" as const,
    trace,
    shape: shapeFor(trace.nExperts, n, spare, trace.nLayers),
  }));
}
