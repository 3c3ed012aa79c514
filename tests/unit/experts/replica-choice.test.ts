import { describe, expect, it } from "vitest";
import { assignReplicas, type Assignment, type InstanceLoad } from "../../../src/experts/replica-choice";
import type { Replica } from "../../../src/coordinator/placement";
import { createRng } from "../../../src/serving/sampling";

const fresh = (): InstanceLoad => ({ recent: [], inflight: [], at: Date.now() });
const tokens = (expert: number, n: number, from = 0): Assignment => ({
  expert,
  tokens: Array.from({ length: n }, (_, i) => from + i),
  slots: Array.from({ length: n }, (_, i) => i % 2),
});
const rowsOf = (m: Map<number, Assignment[]>) =>
  new Map([...m].map(([i, parts]) => [i, parts.reduce((s, a) => s + a.tokens.length, 0)]));

describe("least-loaded replica choice in the Worker", () => {
  it("avoids an instance with rows in flight", () => {
    const load = fresh();
    load.inflight[0] = 50;
    const out = assignReplicas(
      [tokens(1, 4)],
      () => [
        { instance: 0, share: 0.5 },
        { instance: 1, share: 0.5 },
      ],
      new Set(),
      0,
      load,
      createRng(2),
    );
    expect([...out.keys()]).toEqual([1]);
    expect(out.get(1)![0].tokens).toEqual([0, 1, 2, 3]);
    expect(out.get(1)![0].slots).toEqual([0, 1, 0, 1]);
  });

  it("with a pass cost, sends a few rows of an expert to one replica and keeps the load view in rows", () => {
    const two = () => [
      { instance: 0, share: 0.5 },
      { instance: 1, share: 0.5 },
    ];
    for (let seed = 1; seed <= 20; seed++) {
      const load = fresh();
      const out = assignReplicas([tokens(1, 4)], two, new Set(), 0, load, createRng(seed), 4);
      expect(out.size).toBe(1);
      const [instance] = [...out.keys()];
      expect(out.get(instance)![0].tokens).toEqual([0, 1, 2, 3]);
      expect(load.recent[instance]).toBe(4);
      // Rows only (no pass cost): the same call costs two weight reads.
      expect(assignReplicas([tokens(1, 4)], two, new Set(), 0, fresh(), createRng(seed)).size).toBe(2);
    }
  });

  it("levels instance load across experts: a replica goes where the rigid experts are not", () => {
    // Expert 0 lives only on instance 0 (8 rows); expert 1 has replicas on 0 and 1 (8 rows).
    const replicas: Record<number, Replica[]> = {
      0: [{ instance: 0, share: 1 }],
      1: [
        { instance: 0, share: 0.5 },
        { instance: 1, share: 0.5 },
      ],
    };
    const out = assignReplicas(
      [tokens(0, 8), tokens(1, 8, 8)],
      (e) => replicas[e],
      new Set(),
      0,
      fresh(),
      createRng(3),
    );
    expect(rowsOf(out)).toEqual(
      new Map([
        [0, 8],
        [1, 8],
      ]),
    );
    const all = [...out.values()]
      .flat()
      .flatMap((a) => a.tokens)
      .sort((a, b) => a - b);
    expect(all).toEqual(Array.from({ length: 16 }, (_, i) => i));
  });

  it("spreads an isolate's sequential single tokens over equal replicas", () => {
    const load = fresh();
    const reps = [
      { instance: 0, share: 0.5 },
      { instance: 2, share: 0.5 },
    ];
    const counts = new Map<number, number>();
    for (let k = 0; k < 100; k++)
      for (const [i] of assignReplicas([tokens(3, 1)], () => reps, new Set(), 0, load, createRng(k)))
        counts.set(i, (counts.get(i) ?? 0) + 1);
    expect(counts.get(0)).toBeGreaterThan(40);
    expect(counts.get(2)).toBeGreaterThan(40);
  });

  it("skips failed instances, and retries one when every replica failed", () => {
    const reps = [
      { instance: 0, share: 0.5 },
      { instance: 1, share: 0.5 },
    ];
    const pick = (failed: number[], attempt: number) => [
      ...assignReplicas([tokens(0, 1)], () => reps, new Set(failed), attempt, fresh(), createRng(4)).keys(),
    ];
    expect(pick([0], 1)).toEqual([1]);
    expect(pick([0, 1], 1)).toEqual([1]);
    expect(pick([0, 1], 2)).toEqual([0]);
  });
});
