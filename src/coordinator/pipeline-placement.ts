/**
 * @module Pipeline placement (pure): which contiguous layer ranges of a model's dense part go to
 * which StageHost, from the byte budgets. A model whose dense part fits the Worker keeps the fast
 * path — no stages, the Worker runs every layer — unless a stage count is forced (verify, tests).
 * The Worker always keeps the ends (embeddings, final norm, head); the Coordinator stores the
 * result, versioned, beside the expert placement.
 */

export interface PipelineInit {
  model: string;
  /**
   * Bytes of each layer's dense weights (attention, norms, router, shared experts, dense MLP) as a
   * StageHost holds them (DENSE_QUANT's format): what stages are packed by.
   */
  layerBytes: readonly number[];
  /** The same as the Worker would hold them (f32) when it runs every layer; default `layerBytes`. */
  workerLayerBytes?: readonly number[];
  /** Bytes of embeddings + final norm + head (held by the Worker). */
  endsBytes: number;
  /** Bytes of dense weights the Worker may hold (WORKER_BUDGET_MB). */
  workerBytes: number;
  /** Bytes of dense weights one StageHost may hold (STAGE_HOST_BUDGET_MB). */
  stageBytes: number;
  /** Force exactly this many stages (0 = as many as the budgets need, none when the Worker fits all). */
  forcedStages: number;
}

export interface StagePlacement {
  /** DO name of the StageHost; it names the layer range, so a new range is a new instance. */
  name: string;
  first: number;
  end: number;
  /** Weight bytes the stage holds. */
  bytes: number;
}

export interface PipelinePlacement {
  model: string;
  /** 0 until the Coordinator publishes it. */
  version: number;
  /** Empty: the Worker runs every layer (today's fast path). */
  stages: StagePlacement[];
  /** The inputs that produced it: a Worker with other inputs asks for a new version. */
  key: string;
}

/** The plan could not be made under the budgets (the message names the variable to raise). */
export class PipelinePlanError extends Error {
  override name = "PipelinePlanError";
}

export function stageName(model: string, first: number, end: number): string {
  return `${model}/s${first}-${end}`;
}

export function pipelineKey(init: PipelineInit): string {
  const worker = (init.workerLayerBytes ?? init.layerBytes).reduce((a, b) => a + b, 0);
  return [init.forcedStages, init.workerBytes, init.stageBytes, init.endsBytes, init.layerBytes.join(","), worker].join(
    "|",
  );
}

/** Contiguous ranges of `sizes` into exactly `parts` non-empty ranges, minimising the largest sum. */
export function balancedRanges(sizes: readonly number[], parts: number): [number, number][] {
  const n = sizes.length;
  if (!(Number.isInteger(parts) && parts >= 1 && parts <= n))
    throw new RangeError(`cannot split ${n} layers into ${parts} stages`);
  // Binary search on the largest range sum; greedy packing checks a bound (both integral bytes).
  const fits = (cap: number) => {
    let count = 1;
    let sum = 0;
    for (const s of sizes) {
      if (s > cap) return false;
      if (sum + s > cap) {
        count++;
        sum = 0;
      }
      sum += s;
    }
    return count <= parts;
  };
  let lo = Math.max(...sizes);
  let hi = sizes.reduce((a, b) => a + b, 0);
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (fits(mid)) hi = mid;
    else lo = mid + 1;
  }
  // Pack greedily under `lo`, leaving at least one layer for each range still to come.
  const out: [number, number][] = [];
  let first = 0;
  let sum = 0;
  for (let l = 0; l < n; l++) {
    const left = parts - out.length - 1; // ranges still to open after the current one
    if (l > first && (sum + sizes[l] > lo || n - l === left)) {
      out.push([first, l]);
      first = l;
      sum = 0;
    }
    sum += sizes[l];
  }
  out.push([first, n]);
  return out;
}

export function planPipeline(init: PipelineInit): PipelinePlacement {
  const { model, layerBytes, endsBytes, workerBytes, stageBytes, forcedStages } = init;
  const n = layerBytes.length;
  const total = layerBytes.reduce((a, b) => a + b, 0);
  const workerTotal = init.workerLayerBytes ? init.workerLayerBytes.reduce((a, b) => a + b, 0) : total;
  const key = pipelineKey(init);
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  if (endsBytes > workerBytes) {
    throw new PipelinePlanError(
      `model "${model}": its embeddings and output head need ${mib(endsBytes)}, ` +
        `WORKER_BUDGET_MB allows ${mib(workerBytes)}`,
    );
  }
  if (forcedStages === 0 && workerTotal + endsBytes <= workerBytes) return { model, version: 0, stages: [], key };
  const biggest = Math.max(...layerBytes);
  if (biggest > stageBytes) {
    throw new PipelinePlanError(
      `model "${model}": one layer's dense weights need ${mib(biggest)}, ` +
        `STAGE_HOST_BUDGET_MB allows ${mib(stageBytes)}`,
    );
  }
  let parts = forcedStages;
  if (parts === 0) {
    parts = Math.max(1, Math.ceil(total / stageBytes));
    while (parts < n && balancedRanges(layerBytes, parts).some(([a, b]) => sum(layerBytes, a, b) > stageBytes)) parts++;
  }
  if (parts > n) throw new PipelinePlanError(`model "${model}" has ${n} layers; cannot make ${parts} stages`);
  const ranges = balancedRanges(layerBytes, parts);
  const stages = ranges.map(([first, end]) => ({
    name: stageName(model, first, end),
    first,
    end,
    bytes: sum(layerBytes, first, end),
  }));
  const over = stages.find((s) => s.bytes > stageBytes);
  if (over) {
    throw new PipelinePlanError(
      `model "${model}": ${parts} stages need ${mib(over.bytes)} in stage ${over.name}, ` +
        `STAGE_HOST_BUDGET_MB allows ${mib(stageBytes)}`,
    );
  }
  return { model, version: 0, stages, key };
}

function sum(xs: readonly number[], a: number, b: number): number {
  let s = 0;
  for (let i = a; i < b; i++) s += xs[i];
  return s;
}
