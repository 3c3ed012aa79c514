/**
 * Runs the bundled Worker (`dist/`, exactly what `wrangler deploy` uploads) in real workerd with
 * wrangler's test harness: the wrangler.toml bindings, Coordinator and ExpertHost Durable Objects
 * (SQLite-backed) and a local R2 bucket, with fresh storage per harness. Used by `verify`, the
 * integration tests and `bench:e2e`: production's runtime and code path, on this machine.
 */
import { createTestHarness, type WorkerHandle } from "wrangler";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { cpuMs, descendantPids } from "./process-cpu";

export const ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
export const ADMIN_TOKEN_FOR_TESTS = "local-admin-token";

export interface LocalWorkerOptions {
  /** Overrides of wrangler.toml [vars]. */
  vars?: Record<string, string>;
  /** Secrets (ADMIN_TOKEN is set to ADMIN_TOKEN_FOR_TESTS unless given here). */
  secrets?: Record<string, string>;
}

export interface LocalWorker {
  url: URL;
  fetch(path: string, init?: RequestInit): Promise<Response>;
  bucket(): Promise<R2Bucket>;
  worker: WorkerHandle;
  /**
   * CPU milliseconds the processes this harness started (workerd) have used so far: every isolate
   * of the Worker, its Durable Objects and the runtime's own threads. Null without /proc.
   */
  cpuMs(): number | null;
  dispose(): Promise<void>;
}

export async function startLocalWorker(opts: LocalWorkerOptions = {}): Promise<LocalWorker> {
  const dist = join(ROOT, "dist");
  if (!existsSync(join(dist, "index.js"))) {
    throw new Error(
      "dist/index.js is missing: run `npm run build` first (it bundles the Worker as `wrangler deploy` would)",
    );
  }
  process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= "false";
  process.env.WRANGLER_SEND_METRICS ??= "false";
  // wrangler's local trace collector makes every RPC several times slower; production has none.
  process.env.X_LOCAL_OBSERVABILITY ??= "false";
  process.env.X_LOCAL_EXPLORER ??= "false";
  const harness = createTestHarness({
    root: ROOT,
    workers: [
      {
        configPath: join(ROOT, "wrangler.toml"),
        prebuiltWorkerDir: dist,
        vars: opts.vars ?? {},
        secrets: { ADMIN_TOKEN: ADMIN_TOKEN_FOR_TESTS, ...opts.secrets },
      },
    ],
  });
  const before = descendantPids();
  const { url } = await harness.listen();
  // The harness's processes: those below this one that were not there before it started (the
  // callers start harnesses one at a time).
  const started = [...descendantPids()].filter((pid) => !before.has(pid));
  const worker = harness.getWorker();
  // workerd's own warnings and errors (a request cancelled as hung, a promise settled from another
  // request) reach no console here; a run that fails prints them, else a dropped connection is all
  // the client sees.
  process.once("exit", (code) => {
    if (code === 0) return;
    const said = harness.getLogs().filter((l) => l.level !== "log" || /^(Warning|Uncaught)/.test(l.message));
    for (const l of said.slice(-20)) console.error(`[workerd ${l.level}] ${l.message}`);
  });
  return {
    url,
    worker,
    fetch: (path, init) => harness.fetch(new URL(path, url).href, init as never) as unknown as Promise<Response>,
    bucket: async () => ((await worker.getEnv()) as unknown as Env).MODELS,
    cpuMs: () => cpuMs(started),
    dispose: () => harness.close(),
  };
}

export function readJsonFile<T>(path: string): T {
  return JSON.parse(readFileSync(path, "utf8")) as T;
}
