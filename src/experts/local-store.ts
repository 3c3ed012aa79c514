/**
 * @module The "worker" backend's ExpertStore: every expert of a model inside the Worker's own
 * isolate, bounded by WORKER_EXPERT_BUDGET_MB (see ./backend.ts).
 */
import { createKernels } from "../kernels/workers";
import { readBudgets } from "../platform/budgets";
import { openModelFromR2 } from "../platform/model-store";
import { ExpertStore } from "./expert-store";
import { expertStoreOptions } from "./options";

const localStores = new Map<string, Promise<ExpertStore>>();

/** The "worker" backend's store for `model`, opened once per isolate (a failed open is retried). */
export function localStore(env: Env, model: string): Promise<ExpertStore> {
  let s = localStores.get(model);
  if (!s) {
    s = openModelFromR2(env.MODELS, model).then(
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
    s.catch(() => localStores.delete(model));
  }
  return s;
}
