/**
 * @module combine.test — the experts' outputs are added per token in top-k slot order, whichever
 * buffer and row each (token, slot) landed in; dropped slots add nothing; a missing output is a bug.
 */
import { describe, expect, it } from "vitest";
import { combineSlots, slotOutputs } from "../../../src/experts/combine";

describe("combineSlots", () => {
  it("adds in slot order whatever the buffers: the same bits as a plain k = 0… loop", () => {
    const dModel = 3;
    const ids = Int32Array.from([4, 1, 7, 2, 0, 5]); // [2 tokens, topK 3]
    const weights = Float32Array.from([0.5, 0.25, 0.125, 1.5, 0.75, 0.3]);
    const rows = [
      [1e8, 1, -1e8],
      [3.3, 1e-7, 7],
      [1, 1, 1],
      [0.1, 0.2, 0.3],
      [-2, 5e7, 9],
      [6, 6, -6],
    ].map((r) => Float32Array.from(r));
    const want = new Float32Array(2 * dModel);
    for (let i = 0; i < 6; i++) {
      for (let d = 0; d < dModel; d++) want[Math.floor(i / 3) * dModel + d] += weights[i] * rows[i][d];
    }
    // Scatter the rows over two "instances" in an arbitrary order.
    const a = new Float32Array(4 * dModel);
    const b = new Float32Array(2 * dModel);
    const where: [Float32Array, number][] = [
      [b, 1],
      [a, 3],
      [a, 0],
      [b, 0],
      [a, 2],
      [a, 1],
    ];
    const slots = slotOutputs(2, 3);
    where.forEach(([buf, row], i) => {
      buf.set(rows[i], row * dModel);
      slots.bufferOf[i] = buf;
      slots.rowOf[i] = row;
    });
    const got = combineSlots(2, 3, ids, weights, dModel, slots);
    expect(Array.from(new Uint32Array(got.buffer))).toEqual(Array.from(new Uint32Array(want.buffer)));
  });

  it("skips dropped slots and refuses a missing output", () => {
    const slots = slotOutputs(1, 2);
    slots.bufferOf[0] = Float32Array.from([2, 4]);
    const dropped = combineSlots(1, 2, Int32Array.from([3, -1]), Float32Array.from([0.5, 0]), 2, slots);
    expect(Array.from(dropped)).toEqual([1, 2]);
    const missing = () => combineSlots(1, 2, Int32Array.from([3, 1]), Float32Array.from([0.5, 0.5]), 2, slots);
    expect(missing).toThrow(/slot 1/);
  });
});
