/**
 * @module bench-measure — timing for bench:kernels in Node: warm up, then several bursts of calls
 * of at least a fixed time each; report the median burst (what a busy machine gives) and the best
 * one. The call index keeps counting across bursts, so a cold case keeps cycling through copies.
 */

export interface Timing {
  /** Median over bursts of the mean ms per call. */
  ms: number;
  /** Best burst. */
  msMin: number;
  calls: number;
}

export interface MeasureOptions {
  /** Total time to spend measuring, ms (split over the bursts). */
  budgetMs?: number;
  bursts?: number;
}

export function measureSync(fn: (i: number) => void, opts: MeasureOptions = {}): Timing {
  const bursts = opts.bursts ?? 5;
  const per = (opts.budgetMs ?? 200) / bursts;
  let i = 0;
  const warm = performance.now();
  do fn(i++);
  while (performance.now() - warm < Math.min(20, per) && i < 64);
  const means: number[] = [];
  for (let b = 0; b < bursts; b++) {
    const t0 = performance.now();
    let c = 0;
    let t = t0;
    do {
      fn(i++);
      c++;
      t = performance.now();
    } while (t - t0 < per);
    means.push((t - t0) / c);
  }
  return summarize(means, i);
}

export async function measureAsync(fn: (i: number) => Promise<unknown>, opts: MeasureOptions = {}): Promise<Timing> {
  const bursts = opts.bursts ?? 5;
  const per = (opts.budgetMs ?? 200) / bursts;
  let i = 0;
  const warm = performance.now();
  do await fn(i++);
  while (performance.now() - warm < Math.min(20, per) && i < 64);
  const means: number[] = [];
  for (let b = 0; b < bursts; b++) {
    const t0 = performance.now();
    let c = 0;
    let t = t0;
    do {
      await fn(i++);
      c++;
      t = performance.now();
    } while (t - t0 < per);
    means.push((t - t0) / c);
  }
  return summarize(means, i);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function summarize(means: number[], calls: number): Timing {
  return { ms: median(means), msMin: Math.min(...means), calls };
}

/**
 * Best of 5 bursts (each ≥ budgetMs / 5 of CPU time) of process CPU time per call, after warm-up:
 * on a shared machine this counts only the cycles this process got (it still includes cache and
 * memory contention), where wall-clock time also counts the time other processes held the cores.
 */
export async function cpuTimeAsync(fn: (i: number) => unknown, budgetMs: number): Promise<number> {
  let i = 0;
  for (let w = 0; w < 3; w++) await fn(i++);
  let best = Infinity;
  for (let b = 0; b < 5; b++) {
    const c0 = process.cpuUsage();
    let calls = 0;
    let used = 0;
    do {
      await fn(i++);
      calls++;
      const c = process.cpuUsage(c0);
      used = (c.user + c.system) / 1000;
    } while (used < budgetMs / 5);
    best = Math.min(best, used / calls);
  }
  return best;
}

/** cpuTimeAsync for synchronous calls (no await between calls). */
export function cpuTimeSync(fn: (i: number) => void, budgetMs: number): number {
  let i = 0;
  for (let w = 0; w < 3; w++) fn(i++);
  let best = Infinity;
  for (let b = 0; b < 5; b++) {
    const c0 = process.cpuUsage();
    let calls = 0;
    let used = 0;
    do {
      fn(i++);
      calls++;
      const c = process.cpuUsage(c0);
      used = (c.user + c.system) / 1000;
    } while (used < budgetMs / 5);
    best = Math.min(best, used / calls);
  }
  return best;
}
