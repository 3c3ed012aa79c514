import { describe, expect, it } from "vitest";
import {
  balancedRanges,
  planPipeline,
  PipelinePlanError,
  type PipelineInit,
} from "../../../src/coordinator/pipeline-placement";

const MIB = 2 ** 20;

function init(over: Partial<PipelineInit> = {}): PipelineInit {
  return {
    model: "m",
    layerBytes: [10, 10, 10, 10],
    endsBytes: 5,
    workerBytes: 100,
    stageBytes: 25,
    forcedStages: 0,
    ...over,
  };
}

describe("balancedRanges", () => {
  it("covers every layer once, in order, with exactly the asked number of non-empty ranges", () => {
    for (const sizes of [
      [1, 1, 1, 1, 1],
      [5, 1, 1, 1, 5],
      [3, 9, 2, 7, 7, 1, 4],
    ]) {
      for (let parts = 1; parts <= sizes.length; parts++) {
        const r = balancedRanges(sizes, parts);
        expect(r).toHaveLength(parts);
        expect(r[0][0]).toBe(0);
        expect(r[r.length - 1][1]).toBe(sizes.length);
        r.forEach(([a, b], i) => {
          expect(b).toBeGreaterThan(a);
          if (i > 0) expect(a).toBe(r[i - 1][1]);
        });
      }
    }
  });

  it("minimises the largest range (checked against every split of a small case)", () => {
    const sizes = [3, 9, 2, 7, 7, 1, 4];
    const r = balancedRanges(sizes, 3);
    const largest = Math.max(...r.map(([a, b]) => sizes.slice(a, b).reduce((x, y) => x + y, 0)));
    let best = Infinity;
    for (let i = 1; i < sizes.length; i++)
      for (let j = i + 1; j < sizes.length; j++) {
        const s = [sizes.slice(0, i), sizes.slice(i, j), sizes.slice(j)].map((p) => p.reduce((x, y) => x + y, 0));
        best = Math.min(best, Math.max(...s));
      }
    expect(largest).toBe(best);
  });

  it("one layer per range when parts = layers", () => {
    expect(balancedRanges([4, 4, 4], 3)).toEqual([
      [0, 1],
      [1, 2],
      [2, 3],
    ]);
  });
});

describe("planPipeline", () => {
  it("keeps the fast path (no stages) when the dense part fits the Worker", () => {
    expect(planPipeline(init()).stages).toEqual([]);
  });

  it("forced stages split the layers even when the Worker could hold them", () => {
    const p = planPipeline(init({ forcedStages: 4 }));
    expect(p.stages.map((s) => [s.first, s.end])).toEqual([
      [0, 1],
      [1, 2],
      [2, 3],
      [3, 4],
    ]);
    expect(new Set(p.stages.map((s) => s.name)).size).toBe(4);
  });

  it("uses as few stages as the stage budget allows when the Worker cannot hold the layers", () => {
    const p = planPipeline(init({ workerBytes: 20 }));
    expect(p.stages).toHaveLength(2);
    expect(p.stages.every((s) => s.bytes <= 25)).toBe(true);
  });

  it("names the budget to raise when a layer or the ends cannot fit", () => {
    expect(() => planPipeline(init({ workerBytes: 20, stageBytes: 9 }))).toThrow(/STAGE_HOST_BUDGET_MB/);
    expect(() => planPipeline(init({ workerBytes: 4 }))).toThrow(PipelinePlanError);
    expect(() => planPipeline(init({ workerBytes: 4 }))).toThrow(/WORKER_BUDGET_MB/);
  });

  it("a different set of inputs has a different key (the Coordinator publishes a new version)", () => {
    expect(planPipeline(init({ forcedStages: 2 })).key).not.toBe(planPipeline(init({ forcedStages: 4 })).key);
  });

  it("granite-3.1-1b-a400m-sized layers (f32) go on stages within 64 MiB each", () => {
    const layer = 17.7 * MIB;
    const p = planPipeline(
      init({ layerBytes: new Array(24).fill(layer), endsBytes: 0, workerBytes: 96 * MIB, stageBytes: 64 * MIB }),
    );
    expect(p.stages.length).toBe(8);
    expect(p.stages.every((s) => s.bytes <= 64 * MIB)).toBe(true);
  });
});
