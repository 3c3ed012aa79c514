/**
 * @module bench-workerd — runs the Wasm cases of bench:kernels inside workerd (wrangler's test
 * harness, an inline config around bench-workerd-worker.ts). workerd's V8 is newer than Node's
 * and has relaxed SIMD on; this is the runtime ExpertHosts use.
 *
 * Method: workerd's clocks do not advance while a request computes, so Node times whole requests.
 * A /run request makes `iters` expert calls; ms per call = (t(iters) − t(0)) / iters, with t(0)
 * the median round trip of an empty /run and iters chosen so one request computes ≈ 120 ms.
 * The median of 3 such requests is reported, and the CPU time workerd's processes used over the 3
 * (from /proc, less an empty request's; null elsewhere) per call — on a shared machine the steadier
 * figure, at the 10 ms resolution of /proc over ≈ 360 ms.
 */
import { createTestHarness } from "wrangler";
import { fileURLToPath } from "node:url";
import { median } from "./bench-measure";
import { cpuMs, descendantPids } from "./process-cpu";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

export interface WorkerdBench {
  info(): Promise<Record<string, { ok: boolean; q8Paths?: string[] }>>;
  setup(impl: string, dModel: number, dFf: number, copies: number, maxN: number): Promise<number>;
  /** A dense stage case (bench-dense.ts DENSE_IMPLS) of W[rows, cols]. */
  setupDense(impl: string, rows: number, cols: number, copies: number, maxN: number): Promise<number>;
  /** Median ms per call (and the best) of `n`-token calls, cold or hot; cpuMs: workerd's CPU time per
   * call over the same requests (null without /proc). */
  time(n: number, cold: boolean, guessMs: number): Promise<{ ms: number; msMin: number; cpuMs: number | null }>;
  /** Streaming-read GB/s over `mb` MiB (best of 5 requests of 10 reads). */
  bandwidth(mb: number): Promise<number>;
  /** The compute ceilings (simd-ceiling.ts) in G ops/s: wall clock (best of 3 requests of ≈ 150 ms)
   * and workerd's CPU time over the same requests (null without /proc). */
  ceilings(): Promise<{ flavor: string; name: string; wall: number; cpu: number | null }[]>;
  close(): Promise<void>;
}

export async function startWorkerdBench(): Promise<WorkerdBench> {
  process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= "false";
  process.env.WRANGLER_SEND_METRICS ??= "false";
  process.env.X_LOCAL_OBSERVABILITY ??= "false";
  process.env.X_LOCAL_EXPLORER ??= "false";
  const harness = createTestHarness({
    root: ROOT,
    workers: [
      {
        config: {
          name: "edge-moe-bench-kernels",
          main: "scripts/lib/bench-workerd-worker.ts",
          compatibility_date: "2026-10-01",
          rules: [{ type: "CompiledWasm", globs: ["**/*.wasm"], fallthrough: false }],
        },
      },
    ],
  });
  const { url } = await harness.listen();
  const call = async (path: string, method = "POST"): Promise<unknown> => {
    const res = (await harness.fetch(new URL(path, url).href, { method } as never)) as unknown as Response;
    const text = await res.text();
    if (!res.ok) throw new Error(`workerd ${path}: ${res.status} ${text}`);
    return JSON.parse(text);
  };
  const roundTrip = async (path: string): Promise<number> => {
    const t = performance.now();
    await call(path);
    return performance.now() - t;
  };
  let overhead = NaN;
  let overheadCpu = 0;
  const measureOverhead = async () => {
    const ts: number[] = [];
    const c0 = cpuMs(descendantPids());
    for (let i = 0; i < 7; i++) ts.push(await roundTrip("/run?n=1&iters=0&cold=0"));
    const c1 = cpuMs(descendantPids());
    overhead = median(ts);
    overheadCpu = c0 === null || c1 === null ? 0 : Math.max(0, c1 - c0) / 7;
  };
  return {
    info: () => call("/info", "GET") as Promise<Record<string, { ok: boolean; q8Paths?: string[] }>>,
    async setup(impl, dModel, dFf, copies, maxN) {
      const r = (await call(`/setup?impl=${impl}&dModel=${dModel}&dFf=${dFf}&copies=${copies}&maxN=${maxN}`)) as {
        copies: number;
      };
      if (Number.isNaN(overhead)) await measureOverhead();
      return r.copies;
    },
    async setupDense(impl, rows, cols, copies, maxN) {
      const r = (await call(`/dsetup?impl=${impl}&rows=${rows}&cols=${cols}&copies=${copies}&maxN=${maxN}`)) as {
        copies: number;
      };
      if (Number.isNaN(overhead)) await measureOverhead();
      return r.copies;
    },
    async time(n, cold, guessMs) {
      const iters = Math.max(3, Math.round(120 / Math.max(guessMs, 0.005)));
      const path = `/run?n=${n}&iters=${iters}&cold=${cold ? 1 : 0}`;
      await roundTrip(`/run?n=${n}&iters=${Math.max(1, iters >> 3)}&cold=${cold ? 1 : 0}`); // warm
      const per: number[] = [];
      const pids = descendantPids();
      const c0 = cpuMs(pids);
      for (let r = 0; r < 3; r++) per.push(Math.max(0, (await roundTrip(path)) - overhead) / iters);
      const c1 = cpuMs(pids);
      const cpu = c0 === null || c1 === null ? null : Math.max(0, c1 - c0 - 3 * overheadCpu) / (3 * iters);
      return { ms: median(per), msMin: Math.min(...per), cpuMs: cpu };
    },
    async bandwidth(mb) {
      await call(`/stream?mb=${mb}&reps=1`);
      const t0 = median([
        await roundTrip(`/stream?mb=${mb}&reps=0`),
        await roundTrip(`/stream?mb=${mb}&reps=0`),
        await roundTrip(`/stream?mb=${mb}&reps=0`),
      ]);
      const reps = 10;
      const ts: number[] = [];
      for (let i = 0; i < 5; i++) ts.push(await roundTrip(`/stream?mb=${mb}&reps=${reps}`));
      return ((mb << 20) * reps) / ((Math.min(...ts) - t0) * 1e6);
    },
    async ceilings() {
      const list = (await call("/peaks", "GET")) as { flavor: string; name: string; opsPerUnit: number }[];
      const out: { flavor: string; name: string; wall: number; cpu: number | null }[] = [];
      for (const c of list) {
        const path = (units: number) => `/peak?flavor=${c.flavor}&name=${encodeURIComponent(c.name)}&units=${units}`;
        const empty = median([await roundTrip(path(0)), await roundTrip(path(0)), await roundTrip(path(0))]);
        // Size one request to ≈ 150 ms from a ≈ 10 ms probe at the f32 ceiling's order of magnitude.
        let units = Math.max(1, Math.round(4e8 / c.opsPerUnit));
        const probe = Math.max(1, (await roundTrip(path(units))) - empty);
        units = Math.max(1, Math.round((units * 150) / probe));
        const pids = descendantPids();
        const c0 = cpuMs(pids);
        const ts: number[] = [];
        for (let r = 0; r < 3; r++) ts.push(Math.max(1e-3, (await roundTrip(path(units))) - empty));
        const c1 = cpuMs(pids);
        const ops = c.opsPerUnit * units;
        const cpu = c0 === null || c1 === null ? null : Math.max(1e-3, c1 - c0) / 3;
        out.push({
          flavor: c.flavor,
          name: c.name,
          wall: ops / (Math.min(...ts) * 1e6),
          cpu: cpu === null ? null : ops / (cpu * 1e6),
        });
      }
      return out;
    },
    close: () => harness.close(),
  };
}
