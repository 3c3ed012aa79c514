/**
 * @module The "worker" backend's ExpertStore: every expert of a model inside the Worker's own
 * isolate, bounded by WORKER_EXPERT_BUDGET_MB (see ./backend.ts). Pinned to one upload like an
 * ExpertHost: a caller of a newer upload gets a store of that upload, never a mix.
 */
import { createKernels } from "../kernels/workers";
import { readBudgets } from "../platform/budgets";
import { PinnedModel } from "../platform/model-store";
import { ExpertStore } from "./expert-store";
import { expertStoreOptions } from "./options";

const localStores = new Map<string, PinnedModel<ExpertStore>>();

/** The "worker" backend's store for `model` (of upload `version` when given), opened once per upload. */
export async function localStore(env: Env, model: string, version?: string): Promise<ExpertStore> {
  let s = localStores.get(model);
  if (!s) {
    s = new PinnedModel(
      () => env.MODELS,
      (opened) =>
        new ExpertStore(
          opened,
          readBudgets(env).workerExpertBytes,
          "the Worker isolate (WORKER_EXPERT_BUDGET_MB)",
          (maxBytes) => createKernels("best", { maxBytes }),
          expertStoreOptions(env),
        ),
    );
    localStores.set(model, s);
  }
  return (await s.get(model, version)).value;
}

/** Forgets `store` (its upload was replaced under it): the next call opens the current upload. */
export function dropLocalStore(model: string, store: ExpertStore): void {
  const s = localStores.get(model);
  if (s?.current?.value === store) s.drop();
}
