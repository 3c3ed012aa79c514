/**
 * @module Gathers what a scrape or a dashboard poll shows: the hub's merged counters and timeline,
 * and per model the Coordinator's status (smoothed loads, balance, placement, recent re-plans)
 * and each placed ExpertHost's stats. Cost per call: 1 hub read (+1 flush of this isolate's own
 * values when it has any), then per model 1 Coordinator RPC, 1 RPC per placed instance (in
 * parallel) and 1 hub write when the Coordinator reports re-plans.
 */
import { withDeadline } from "../platform/deadline";
import type { CoordinatorStatus } from "../coordinator/coordinator";
import type { ExpertHostStats } from "../experts/protocol";
import { writeLoadPoints } from "./analytics";
import type { HubSnapshot } from "./metrics-hub";
import { flushNow, HUB_NAME } from "./recorder";

export interface ModelView {
  model: string;
  status: CoordinatorStatus;
  /** Stats of each placed instance, in placement order (null where the RPC failed). */
  hosts: (ExpertHostStats | null)[];
}

export interface Collected {
  hub: HubSnapshot;
  models: ModelView[];
  /** RPCs this collection made (what a scrape costs). */
  rpcs: number;
  ms: number;
}

export async function collect(env: Env, only?: string): Promise<Collected> {
  const t0 = Date.now();
  let rpcs = 0;
  await flushNow(env).then((sent) => (rpcs += sent ? 1 : 0));
  const hubStub = env.METRICS_HUB.getByName(HUB_NAME);
  const hub = await withDeadline(Promise.resolve(hubStub.snapshot()), SCRAPE_RPC_MS, "MetricsHub");
  rpcs++;
  const ids = only ? [only] : hub.models.length ? hub.models : [env.DEFAULT_MODEL];
  const views = await Promise.all(
    ids.map(async (model): Promise<ModelView | null> => {
      // status() only reads: it does not create a placement for a model nobody has used yet. A
      // Coordinator that fails or does not answer drops its model from this scrape, not the scrape.
      const status = await withDeadline(
        Promise.resolve(env.COORDINATOR.getByName(model).status()),
        SCRAPE_RPC_MS,
        `Coordinator ${model}`,
      ).catch(() => null);
      rpcs++;
      if (!status) return null;
      const instances = status.placement?.instances ?? [];
      const hosts = await Promise.all(
        instances.map((inst) =>
          withDeadline(Promise.resolve(env.EXPERT_HOST.getByName(inst.name).stats()), SCRAPE_RPC_MS, inst.name)
            .then((s) => s as ExpertHostStats)
            .catch(() => null),
        ),
      );
      rpcs += instances.length;
      writeLoadPoints(env, model, status);
      return { model, status, hosts };
    }),
  );
  const models = views.filter((v): v is ModelView => v !== null);
  return { hub, models, rpcs, ms: Date.now() - t0 };
}

/** Deadline of each RPC a scrape makes: a slow object leaves its part out rather than hang /metrics. */
const SCRAPE_RPC_MS = 10_000;
