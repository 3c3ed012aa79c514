/**
 * @module One slice of a routed expert (src/experts/slices.ts): intermediate units [c0, c1) — rows
 * c0..c1-1 of gate and up, columns c0..c1-1 of down — read with ranged reads of only those rows
 * (gate, up: one contiguous run each) and those columns (down: runs of rows, see
 * Checkpoint.readF32Cols), in every stored format:
 *
 * - f32 / bf16 / f16: the slice's weights as f32 (quantized after by the caller if asked).
 * - int8 (`.qweight` + per-row `.scales`): gate/up rows keep their own scales; down keeps its whole
 *   rows' scales (a slice of a row is scaled like the row).
 * - int8 groups (`.qweight` as int8, `.scales` one f32 per 32 inputs): gate/up rows with their
 *   groups; down's columns [c0, c1) and scale columns [c0/32, c1/32).
 * - int4 (`.qweight` two weights a byte, `.scales` one bf16 per 32 inputs): gate/up rows with
 *   their groups; down's columns at group multiples — bytes [c0/2, c1/2) (the nibble packing stays
 *   inside 32-input blocks) and scale columns [c0/32, c1/32).
 *
 * Quantizing a slice at load gives the whole expert's values for gate/up rows and for group
 * formats; per-row int8 scales of down are then the slice's own row maxima (a finer scale).
 */
import { expertTensorRefs, type ExpertTensorRef, type ExpertWeights } from "./architectures";
import type { ModelSpec } from "./config";
import type { Checkpoint } from "./safetensors";
import { quantNames, quantView } from "./quant-names";
import { storedExpertQuant, storedQ4Scales, type Q8gExpert } from "./quantized";
import { Q8_EXPERT_GROUP, quantizeRowsQ8, type Q8Expert, type Q8Rows } from "../kernels/packing";
import { quantizeQ8g, type Q8gMatrix } from "../kernels/dense-format";
import { Q8_DIVISORS } from "../kernels/q8-scale";
import { Q4_GROUP, quantizeExpertQ4g, unpackNibbles, type Q4gExpert, type Q4gMatrix } from "../kernels/q4g-format";

/** Intermediate units [c0, c1) of one expert. */
export interface SliceBounds {
  c0: number;
  c1: number;
}

function refsOf(ckpt: Checkpoint, spec: ModelSpec, layer: number, expert: number, b: SliceBounds) {
  if (!(Number.isInteger(b.c0) && Number.isInteger(b.c1) && 0 <= b.c0 && b.c0 < b.c1 && b.c1 <= spec.dFf))
    throw new RangeError(`slice [${b.c0}, ${b.c1}) is not inside the intermediate size ${spec.dFf}`);
  return expertTensorRefs(quantView(ckpt), spec, layer, expert);
}

/** The slice's gate and up [c1-c0, dModel] and down [dModel, c1-c0] as f32. */
export async function loadExpertSliceWeights(
  ckpt: Checkpoint,
  spec: ModelSpec,
  layer: number,
  expert: number,
  b: SliceBounds,
): Promise<ExpertWeights> {
  const refs = refsOf(ckpt, spec, layer, expert, b);
  const rows = (r: ExpertTensorRef) => ckpt.readF32Rows(r.tensor, r.firstRow + b.c0, b.c1 - b.c0);
  const [w1, w3, w2] = await Promise.all([
    rows(refs.w1),
    rows(refs.w3),
    ckpt.readF32Cols(refs.w2.tensor, refs.w2.firstRow, refs.w2.nRows, b.c0, b.c1),
  ]);
  return { w1, w3, w2 };
}

/** The slice read as f32 and quantized by `quant(values, rows, cols)`: gate/up [w, dModel], down [dModel, w]. */
async function quantizedSlice<Q>(
  ckpt: Checkpoint,
  spec: ModelSpec,
  layer: number,
  expert: number,
  b: SliceBounds,
  quant: (x: Float32Array, rows: number, cols: number) => Q,
): Promise<{ w1: Q; w3: Q; w2: Q }> {
  const { dModel } = spec;
  const w = b.c1 - b.c0;
  const f = await loadExpertSliceWeights(ckpt, spec, layer, expert, b);
  return { w1: quant(f.w1, w, dModel), w3: quant(f.w3, w, dModel), w2: quant(f.w2, dModel, w) };
}

/** The slice as int8 rows: read from `.qweight`/`.scales` when stored so, else read and quantized. */
export async function loadExpertSliceQ8(
  ckpt: Checkpoint,
  spec: ModelSpec,
  layer: number,
  expert: number,
  b: SliceBounds,
): Promise<Q8Expert> {
  const w = b.c1 - b.c0;
  if (storedExpertQuant(ckpt, spec) === "none") return quantizedSlice(ckpt, spec, layer, expert, b, quantizeRowsQ8);
  const refs = refsOf(ckpt, spec, layer, expert, b);
  const gateUp = async (r: ExpertTensorRef): Promise<Q8Rows> => {
    const n = quantNames(r.tensor);
    const [q, s] = await Promise.all([
      ckpt.readF32Rows(n.qweight, r.firstRow + b.c0, w),
      ckpt.readF32(n.scales), // [rows] or [E, rows]: flat, the weight's row indices
    ]);
    return { q: Int8Array.from(q), scales: s.slice(r.firstRow + b.c0, r.firstRow + b.c1) };
  };
  const down = async (r: ExpertTensorRef): Promise<Q8Rows> => {
    const n = quantNames(r.tensor);
    const [q, s] = await Promise.all([
      ckpt.readF32Cols(n.qweight, r.firstRow, r.nRows, b.c0, b.c1),
      ckpt.readF32(n.scales),
    ]);
    return { q: Int8Array.from(q), scales: s.slice(r.firstRow, r.firstRow + r.nRows) };
  };
  const [w1, w3, w2] = await Promise.all([gateUp(refs.w1), gateUp(refs.w3), down(refs.w2)]);
  return { w1, w3, w2 };
}

/** The slice as int4 groups: read from `.qweight`/`.scales` when stored so, else read and quantized. */
export async function loadExpertSliceQ4(
  ckpt: Checkpoint,
  spec: ModelSpec,
  layer: number,
  expert: number,
  b: SliceBounds,
): Promise<Q4gExpert> {
  const { dModel } = spec;
  const w = b.c1 - b.c0;
  if (storedExpertQuant(ckpt, spec) !== "int4") {
    const f = await loadExpertSliceWeights(ckpt, spec, layer, expert, b);
    return quantizeExpertQ4g(f.w1, f.w3, f.w2, dModel, w, Q4_GROUP);
  }
  if (b.c0 % Q4_GROUP !== 0 || (b.c1 % Q4_GROUP !== 0 && b.c1 !== spec.dFf))
    throw new RangeError(`int4 slice [${b.c0}, ${b.c1}) must start and end on a group of ${Q4_GROUP}`);
  const refs = refsOf(ckpt, spec, layer, expert, b);
  const read = async (
    r: ExpertTensorRef,
    first: number,
    nRows: number,
    cols: [number, number],
    inputs: number,
  ): Promise<Q4gMatrix> => {
    const n = quantNames(r.tensor);
    const groups = ckpt.info(n.scales).shape.at(-1) ?? 0;
    if (groups * Q4_GROUP !== r.shape[1])
      throw new Error(`${n.scales}: int4 groups of ${r.shape[1] / groups} inputs; slices need groups of ${Q4_GROUP}`);
    const [bytes, scales] = await Promise.all([
      ckpt.readF32Cols(n.qweight, first, nRows, cols[0] / 2, cols[1] / 2),
      ckpt.readF32Cols(n.scales, first, nRows, cols[0] / Q4_GROUP, Math.ceil(cols[1] / Q4_GROUP)),
    ]);
    return {
      rows: nRows,
      cols: inputs,
      group: Q4_GROUP,
      q: unpackNibbles(
        Uint8Array.from(bytes, (v) => v & 0xff),
        nRows,
        inputs,
      ),
      scales: storedQ4Scales(ckpt, n.scales, scales, Math.ceil(cols[1] / Q4_GROUP) - cols[0] / Q4_GROUP),
    };
  };
  const [w1, w3, w2] = await Promise.all([
    read(refs.w1, refs.w1.firstRow + b.c0, w, [0, dModel], dModel),
    read(refs.w3, refs.w3.firstRow + b.c0, w, [0, dModel], dModel),
    read(refs.w2, refs.w2.firstRow, refs.w2.nRows, [b.c0, b.c1], w),
  ]);
  return { w1, w3, w2 };
}

/** The slice as int8 groups of Q8_EXPERT_GROUP: read from `.qweight`/`.scales` when stored so, else
 * read and quantized (the same values: the slice's groups are the whole expert's). */
export async function loadExpertSliceQ8g(
  ckpt: Checkpoint,
  spec: ModelSpec,
  layer: number,
  expert: number,
  b: SliceBounds,
): Promise<Q8gExpert> {
  const { dModel } = spec;
  const w = b.c1 - b.c0;
  const G = Q8_EXPERT_GROUP;
  if (storedExpertQuant(ckpt, spec) !== "int8-group")
    return quantizedSlice(ckpt, spec, layer, expert, b, (x, rows, cols) => quantizeQ8g(x, rows, cols, G, Q8_DIVISORS));
  if (b.c0 % G !== 0 || b.c1 % G !== 0)
    throw new RangeError(`int8-group slice [${b.c0}, ${b.c1}) must start and end on a group of ${G}`);
  const refs = refsOf(ckpt, spec, layer, expert, b);
  const read = async (r: ExpertTensorRef, first: number, nRows: number, cols: [number, number]): Promise<Q8gMatrix> => {
    const n = quantNames(r.tensor);
    const groups = ckpt.info(n.scales).shape.at(-1) ?? 0;
    if (groups * G !== r.shape[1])
      throw new Error(`${n.scales}: int8 groups of ${r.shape[1] / groups} inputs; slices need groups of ${G}`);
    const [q, scales] = await Promise.all([
      ckpt.readF32Cols(n.qweight, first, nRows, cols[0], cols[1]),
      ckpt.readF32Cols(n.scales, first, nRows, cols[0] / G, cols[1] / G),
    ]);
    return { rows: nRows, cols: cols[1] - cols[0], group: G, q: Int8Array.from(q), scales };
  };
  const [w1, w3, w2] = await Promise.all([
    read(refs.w1, refs.w1.firstRow + b.c0, w, [0, dModel]),
    read(refs.w3, refs.w3.firstRow + b.c0, w, [0, dModel]),
    read(refs.w2, refs.w2.firstRow, refs.w2.nRows, [b.c0, b.c1]),
  ]);
  return { w1, w3, w2 };
}
