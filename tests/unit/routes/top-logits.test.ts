/** topLogits (the heap) agrees with sorting the whole row, ties and NaN included. */
import { describe, expect, it } from "vitest";
import { topLogits } from "../../../src/routes/top-logits";

function bySort(row: Float32Array, k: number) {
  const key = (i: number) => (Number.isNaN(row[i]) ? Number.NEGATIVE_INFINITY : row[i]);
  const ids = Array.from(row.keys())
    .sort((a, b) => key(b) - key(a) || a - b)
    .slice(0, k);
  return { ids, logits: ids.map((i) => row[i]) };
}

describe("topLogits", () => {
  it("matches a full sort on random rows with many ties", () => {
    let s = 12345;
    const rand = () => (s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32;
    for (const n of [1, 7, 100, 5000]) {
      const row = new Float32Array(n).map(() => Math.floor(rand() * 20) - 10);
      for (const k of [1, 3, 16, n, n + 5]) expect(topLogits(row, k)).toEqual(bySort(row, k));
    }
  });

  it("ranks NaN last and keeps lower ids first among equal values", () => {
    const row = new Float32Array([Number.NaN, 2, 5, 2, Number.NaN, 5]);
    expect(topLogits(row, 4).ids).toEqual([2, 5, 1, 3]);
    expect(topLogits(row, 6).ids).toEqual([2, 5, 1, 3, 0, 4]);
  });
});
