/**
 * @module The isolate's model runtimes: one per model, loaded on first use and replaced when R2
 * holds a new upload of the model (`getRuntime`), and the runtime of a given upload for a session
 * driver serving the Worker's request (`getRuntimeOf`), and those loaded now (`loadedRuntimes`).
 */
import { MODEL_CHECK_MS, ModelChangedError, modelVersion } from "../platform/model-store";
import { Flight, shareWork } from "../platform/shared-work";
import { ModelRuntime } from "./model-runtime";

/**
 * One runtime per model per isolate, loaded on first use; a failed load is retried next time.
 * At most every MODEL_CHECK_MS a request asks R2 for the model's current upload: a re-uploaded
 * model gets a new runtime, loaded whole, while requests already running finish on the old one
 * (or stop with a retryable 503 when a host has moved on — never a mix of two uploads).
 * The load and the check are Flights (src/platform/shared-work.ts): a request that finds one under
 * way picks its outcome up in its own context, and takes over when the request that started it
 * went away mid-way (its I/O went with it).
 */
interface CachedRuntime {
  rt: Flight<ModelRuntime>;
  checkedAt: number;
  checking: Flight<void> | null;
}

const runtimes = new Map<string, CachedRuntime>();

export async function getRuntime(env: Env, id: string): Promise<ModelRuntime> {
  const cached = runtimes.get(id);
  if (cached && Date.now() - cached.checkedAt >= MODEL_CHECK_MS) {
    await shareWork(
      () => cached.checking,
      () => {
        const f: Flight<void> = new Flight(() =>
          checkUpload(env, id, cached).finally(() => {
            if (cached.checking === f) cached.checking = null;
          }),
        );
        cached.checking = f;
        return f;
      },
    );
  }
  return shareWork(
    () => runtimes.get(id)?.rt,
    () => {
      const rt: Flight<ModelRuntime> = new Flight(() => ModelRuntime.load(env, id));
      const fresh: CachedRuntime = { rt, checkedAt: Date.now(), checking: null };
      runtimes.set(id, fresh);
      rt.promise.catch(() => {
        if (runtimes.get(id) === fresh) runtimes.delete(id);
      });
      return rt;
    },
  );
}

/**
 * The runtimes this isolate holds now, loaded (a load under way or one that failed is not listed;
 * neither is an upload's runtime that a newer one replaced, which its last requests still finish on).
 */
export async function loadedRuntimes(): Promise<ModelRuntime[]> {
  const done = [...runtimes.values()].filter((c) => c.rt.settled);
  const rts = await Promise.allSettled(done.map((c) => c.rt.join()));
  return rts.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
}

/**
 * The runtime of upload `version` of model `id` (a session driver serving the Worker's request):
 * asks R2 at once when this isolate holds another; ModelChangedError when R2's current upload is
 * not `version` either (the Worker is behind: it reloads, its client retries).
 */
export async function getRuntimeOf(env: Env, id: string, version: string | undefined): Promise<ModelRuntime> {
  let rt = await getRuntime(env, id);
  const cached = runtimes.get(id);
  if (version === undefined || rt.version === version || !cached) return rt;
  cached.checkedAt = 0;
  rt = await getRuntime(env, id);
  if (rt.version !== version)
    throw new ModelChangedError(`model "${id}": the caller read upload ${version}, this isolate serves ${rt.version}`);
  return rt;
}

/** Drops `cached` when R2 holds another upload; an R2 failure keeps serving what is loaded. */
async function checkUpload(env: Env, id: string, cached: CachedRuntime): Promise<void> {
  try {
    const [rt, now] = await Promise.all([cached.rt.join(), modelVersion(env.MODELS, id)]);
    cached.checkedAt = Date.now();
    if (now !== rt.version && runtimes.get(id) === cached) runtimes.delete(id);
  } catch (err) {
    // The runtime that is loaded is still one whole upload: keep serving it, ask again later.
    cached.checkedAt = Date.now();
    console.warn(`checking model "${id}" for a new upload failed: ${String(err)}`);
  }
}
