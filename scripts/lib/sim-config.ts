/**
 * @module The cluster simulator's configuration (scripts/simulate.ts): cluster and workload shape,
 * run length, offered loads, Worker isolates, and edge-moe's re-plan config — the deployed one
 * (wrangler.toml [vars] through the Coordinator's `replanConfigFromEnv`), whose window period is
 * the simulated re-plan window.
 */
import type { ReplanConfig } from "../../src/coordinator/replan";
import { deployedReplanConfig } from "./replan-config";
import type { Drift, RequestMix } from "./workloads";

export type LoadBasis = "cluster" | "static";

export interface SimConfig {
  nInstances: number;
  nExperts: number;
  topK: number;
  nLayers: number;
  spare: number;
  s: number;
  drift: Drift;
  burstiness: number;
  tokensPerStep: number;
  windowMs: number;
  windows: number;
  warmupWindows: number;
  loads: number[];
  bases: LoadBasis[];
  seed: number;
  /** Worker isolates dispatching independently (least-loaded replica choice). */
  isolates: number;
  /** Half-life of an isolate's recently-sent-rows table (the Worker's RECENT_HALF_LIFE_MS). */
  recentHalfLifeMs: number;
  /** Requests behind the token stream; null: every token drawn from the population. */
  requests: RequestMix | null;
  /** edge-moe's re-plan policy knobs (`windowMs` is the window above). */
  replan: ReplanConfig;
}

export const DEFAULT_SIM: SimConfig = {
  nInstances: 16,
  nExperts: 64,
  topK: 4,
  nLayers: 2,
  spare: 2,
  s: 1.0,
  drift: { kind: "rotate", speed: 0.1 },
  burstiness: 0.1,
  tokensPerStep: 1,
  windowMs: deployedReplanConfig().windowMs,
  windows: 40,
  warmupWindows: 10,
  loads: [0.5, 0.8],
  bases: ["cluster", "static"],
  seed: 7,
  isolates: 8,
  recentHalfLifeMs: 1000,
  requests: { active: 32, meanWindows: 8, affinity: 1 },
  replan: deployedReplanConfig(),
};
