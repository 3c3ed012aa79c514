/**
 * @module Optional Workers Analytics Engine output: when the `EXPERT_LOAD_AE` dataset is bound
 * (wrangler.toml declares it; a deployment may drop the binding), every scrape or dashboard poll
 * writes the Coordinator's smoothed load of each (layer, expert) as a data point, so the heat map
 * can be queried over time with SQL. Without the binding this does nothing. One point per
 * (layer, expert), hottest first, capped at the per-invocation limit of Analytics Engine.
 */
import type { CoordinatorStatus } from "../coordinator/coordinator";

/** Analytics Engine accepts at most 250 data points per Worker invocation. */
const MAX_POINTS = 250;

interface MaybeAnalytics {
  EXPERT_LOAD_AE?: AnalyticsEngineDataset;
}

export function writeLoadPoints(env: Env, model: string, status: CoordinatorStatus): number {
  const ds = (env as unknown as MaybeAnalytics).EXPERT_LOAD_AE;
  if (!ds || status.loads.length === 0) return 0;
  const version = status.placement?.version ?? 0;
  const layers = status.placement?.layers;
  const points: { layer: number; expert: number; load: number; replicas: number }[] = [];
  status.loads.forEach((row, r) =>
    row.forEach((load, expert) =>
      points.push({
        layer: layers ? layers[r] : r,
        expert,
        load,
        replicas: status.placement?.replicas[r]?.[expert]?.length ?? 0,
      }),
    ),
  );
  points.sort((a, b) => b.load - a.load);
  const sent = points.slice(0, MAX_POINTS);
  for (const p of sent) {
    // blob1 = model, double1..5 = layer, expert, smoothed tokens per window, replicas, placement version.
    ds.writeDataPoint({ indexes: [model], blobs: [model], doubles: [p.layer, p.expert, p.load, p.replicas, version] });
  }
  return sent.length;
}
