/**
 * @module The one place the routed experts' outputs are added up: out[t] = Σ_k gate[t,k] · y(t,k).
 *
 * Float addition is not associative, so the order of this sum is fixed here — for each token, over
 * its top-k slots k = 0, 1, …, topK−1, starting from zero — and never follows the order in which
 * instances answered, which replica served a row, how rows were grouped into calls, or how many
 * attempts a row took. With ExpertHosts returning one unsummed row per (token, expert)
 * (protocol.ts) and computing each row independently of the others in its call, the layer output
 * is bit-identical for the same input under any placement and dispatch.
 */

/** Where the output of each (token, slot) landed: row `rowOf[i]` of `bufferOf[i]` (i = t·topK + k). */
export interface SlotOutputs {
  bufferOf: (Float32Array | undefined)[]; // [n · topK], undefined for dropped slots
  rowOf: Int32Array; // [n · topK]
}

export function slotOutputs(n: number, topK: number): SlotOutputs {
  return { bufferOf: new Array<Float32Array | undefined>(n * topK), rowOf: new Int32Array(n * topK) };
}

/**
 * [n, dModel] = Σ_k weights[t,k] · y(t,k) in slot order. `ids` marks dropped slots with -1 (they
 * add nothing); every other slot must have its output in `slots`.
 */
export function combineSlots(
  n: number,
  topK: number,
  ids: ArrayLike<number>, // [n, topK]
  weights: ArrayLike<number>, // [n, topK]
  dModel: number,
  slots: SlotOutputs,
): Float32Array {
  const out = new Float32Array(n * dModel); // [n, dModel]
  for (let t = 0; t < n; t++) {
    const o = t * dModel;
    for (let k = 0; k < topK; k++) {
      const i = t * topK + k;
      if (ids[i] < 0) continue;
      const y = slots.bufferOf[i];
      if (!y) throw new Error(`internal: no expert output for token ${t}, slot ${k}`);
      const g = weights[i];
      const r = slots.rowOf[i] * dModel;
      for (let d = 0; d < dModel; d++) out[o + d] += g * y[r + d];
    }
  }
  return out;
}
