/**
 * @module quantized — int8 routed experts in a checkpoint, and the bytes an expert takes in an
 * ExpertStore.
 *
 * Format (written by `scripts/convert.ts --quant int8`): each routed-expert tensor `<base>.weight`
 * (or a stacked `<base>` such as `mlp.experts.gate_up_proj`) is replaced by
 *   `<base>.qweight`  I8  — same shape and row layout as the original tensor
 *   `<base>.scales`   F32 — one per row: [rows] (per-expert) or [E, rows] (stacked)
 * with w[j, k] ≈ scales[j] · qweight[j, k], symmetric per output channel (src/kernels/packing.ts
 * quantizeRowsQ8). Dense tensors stay as they were, so the Worker's half is unchanged.
 *
 * int4 (`--quant int4`, src/kernels/q4g-format.ts): the same two names with
 *   `<base>.qweight`  I8  — [..., rows, cols/2]: each byte two 4-bit weights (packNibbles: byte i of
 *                           every 16 holds inputs k0+i and k0+16+i of a 32-input block), bits as I8
 *   `<base>.scales`   BF16 — [..., rows, cols/group]: one scale per group of inputs
 * so an int4 checkpoint is told from an int8 one by its scales having the weight's rank; the group
 * is cols / (scales' last dimension) and is also recorded in the safetensors metadata
 * (`edge_moe_int4_group`). convert requires cols to be a multiple of the group.
 *
 * Group-wise int8 (`--quant int8-group`, the dense int8 format of src/kernels/dense-format.ts):
 *   `<base>.qweight`  I8  — the tensor's shape, as per-row int8
 *   `<base>.scales`   F32 — [..., rows, cols/32]: one scale per 32 inputs (Q8_EXPERT_GROUP)
 * told from int4 by the scales' dtype (F32, not BF16); metadata `edge_moe_int8_group`.
 *
 * Which tensor holds which expert is the architecture adapter's business (`expertTensorRefs`);
 * this module asks it through a view of the checkpoint in which each `.qweight` answers to its
 * original name (same shape and rows), so no naming rule is repeated here.
 *
 * Reading `.qweight` needs a Checkpoint that accepts the I8 dtype (decoded exactly to f32 by
 * readF32Rows); until src/model/safetensors.ts does, int8 checkpoints are refused when opened and
 * the int8 path is reached by quantizing at load (ExpertStore option `quant: "int8"`).
 */
import { expertTensorRefs, loadExpertWeights, type ExpertTensorRef } from "./architectures";
import type { ModelSpec } from "./config";
import type { Checkpoint } from "./safetensors";
import { quantNames, quantView, scalesKind } from "./quant-names";

export { quantNames, quantView };
import {
  expertPackedBytes,
  Q8_EXPERT_GROUP,
  quantizeRowsQ8,
  type ExpertDtype,
  type Q8Expert,
  type Q8Rows,
} from "../kernels/packing";
import {
  denseMatrixBytes,
  expertQ8gBytes,
  f32ToBf16,
  packQ8g,
  quantizeQ8g,
  type Q8gMatrix,
} from "../kernels/dense-format";
import { Q8_DIVISORS } from "../kernels/q8-scale";
import {
  inexactQ4Scale,
  Q4_GROUP,
  quantizeExpertQ4g,
  unpackNibbles,
  type Q4gExpert,
  type Q4gMatrix,
} from "../kernels/q4g-format";
import { ModelFormatError } from "./errors";

/** How an ExpertStore holds experts: "int8" / "int4" quantize f32/bf16 checkpoints at load;
 * "int8-group" quantizes at load to int8 with one scale per 32 inputs (expertFfnQ8g); experts stored
 * quantized load as stored whatever this says. */
export type ExpertQuant = "none" | "int8" | "int8-group" | "int4";

/** How the checkpoint stores its routed experts (probes the first MoE layer's expert 0). */
export function storedExpertQuant(ckpt: Checkpoint, spec: ModelSpec): ExpertQuant {
  const layer = spec.moeLayers[0];
  if (layer === undefined) return "none";
  try {
    const refs = expertTensorRefs(quantView(ckpt), spec, layer, 0);
    const names = quantNames(refs.w1.tensor);
    if (ckpt.has(refs.w1.tensor) || !ckpt.has(names.qweight)) return "none";
    const kind = scalesKind(ckpt, names.scales, ckpt.info(names.qweight).shape.length);
    return kind === "unknown" ? "int8" : kind; // no scales header: int8's reader finds out when it reads them
  } catch {
    return "none";
  }
}

/** True when the checkpoint stores its routed experts quantized (int8 or int4). */
export function hasQuantizedExperts(ckpt: Checkpoint, spec: ModelSpec): boolean {
  return storedExpertQuant(ckpt, spec) !== "none";
}

/** The dtype an ExpertStore holds this model's experts in. */
export function expertDtype(ckpt: Checkpoint, spec: ModelSpec, quant: ExpertQuant = "none"): ExpertDtype {
  const stored = storedExpertQuant(ckpt, spec);
  const q = stored === "none" ? quant : stored;
  return q === "int4" ? "q4" : q === "int8" ? "q8" : q === "int8-group" ? "q8g" : "f32";
}

/**
 * Real bytes of one routed expert as an ExpertStore holds it (packed panels, plus scales and row
 * sums for int8): what an ExpertHost's budget and the placement should count. int8 is ≈ 4× less.
 */
export function expertStoredBytes(ckpt: Checkpoint, spec: ModelSpec, quant: ExpertQuant = "none"): number {
  return expertPackedBytes(expertDtype(ckpt, spec, quant), spec.dModel, spec.dFf);
}

/** One expert as int8: read from `.qweight`/`.scales` when stored so, else read and quantized. */
export async function loadExpertQ8(
  ckpt: Checkpoint,
  spec: ModelSpec,
  layer: number,
  expert: number,
): Promise<Q8Expert> {
  if (!hasQuantizedExperts(ckpt, spec)) {
    const w = await loadExpertWeights(ckpt, spec, layer, expert);
    const { dModel, dFf } = spec;
    return {
      w1: quantizeRowsQ8(w.w1, dFf, dModel),
      w3: quantizeRowsQ8(w.w3, dFf, dModel),
      w2: quantizeRowsQ8(w.w2, dModel, dFf),
    };
  }
  const refs = expertTensorRefs(quantView(ckpt), spec, layer, expert);
  const [w1, w3, w2] = await Promise.all([refs.w1, refs.w3, refs.w2].map((r) => readQ8Rows(ckpt, r)));
  return { w1, w3, w2 };
}

/** One expert as int4 groups (of Q4_GROUP inputs): read from `.qweight`/`.scales` when stored so,
 * else read and quantized. */
export async function loadExpertQ4(
  ckpt: Checkpoint,
  spec: ModelSpec,
  layer: number,
  expert: number,
): Promise<Q4gExpert> {
  const { dModel, dFf } = spec;
  if (storedExpertQuant(ckpt, spec) !== "int4") {
    const w = await loadExpertWeights(ckpt, spec, layer, expert);
    return quantizeExpertQ4g(w.w1, w.w3, w.w2, dModel, dFf, Q4_GROUP);
  }
  const refs = expertTensorRefs(quantView(ckpt), spec, layer, expert);
  const [w1, w3, w2] = await Promise.all([refs.w1, refs.w3, refs.w2].map((r) => readQ4Rows(ckpt, r)));
  return { w1, w3, w2 };
}

async function readQ4Rows(ckpt: Checkpoint, ref: ExpertTensorRef): Promise<Q4gMatrix> {
  const names = quantNames(ref.tensor);
  const cols = ref.shape[1];
  const scaleInfo = ckpt.info(names.scales);
  const groups = scaleInfo.shape[scaleInfo.shape.length - 1];
  const group = cols / groups;
  if (group !== Q4_GROUP) {
    throw new Error(`${names.scales}: int4 groups of ${group} inputs; the expert kernels hold groups of ${Q4_GROUP}`);
  }
  const [bytes, scales] = await Promise.all([
    ckpt.readF32Rows(names.qweight, ref.firstRow, ref.nRows),
    ckpt.readF32Rows(names.scales, ref.firstRow, ref.nRows),
  ]);
  return {
    rows: ref.nRows,
    cols,
    group,
    q: unpackNibbles(
      Uint8Array.from(bytes, (v) => v & 0xff),
      ref.nRows,
      cols,
    ),
    scales: storedQ4Scales(ckpt, names.scales, scales, groups),
  };
}

/**
 * An int4 tensor's stored scales (`groups` a row) as bf16 bits, refused unless the kernel holds
 * every one exactly: a checkpoint converted before scales were integer subs of a row's power of two
 * would otherwise load with its small scales rounded — silently changed weights.
 */
export function storedQ4Scales(ckpt: Checkpoint, tensor: string, scales: Float32Array, groups: number): Uint16Array {
  const bits = Uint16Array.from(scales, f32ToBf16); // bf16 values: exact both ways
  const bad = inexactQ4Scale(bits, groups);
  if (bad >= 0) {
    const file = ckpt.info(tensor).file;
    throw new ModelFormatError(
      `${file}: tensor "${tensor}" has int4 scale ${scales[bad]} (row ${Math.floor(bad / groups)} of this read, ` +
        `group ${bad % groups}) that the int4 kernel cannot hold exactly — the checkpoint was converted by an ` +
        "older version; re-run `convert --quant int4`",
      file,
      tensor,
    );
  }
  return bits;
}

async function readQ8Rows(ckpt: Checkpoint, ref: ExpertTensorRef): Promise<Q8Rows> {
  const names = quantNames(ref.tensor);
  const [values, scales] = await Promise.all([
    ckpt.readF32Rows(names.qweight, ref.firstRow, ref.nRows),
    // scales are [rows] or [E, rows]: flat, the same row indices as the weight rows.
    ckpt.readF32(names.scales).then((s) => s.slice(ref.firstRow, ref.firstRow + ref.nRows)),
  ]);
  return { q: Int8Array.from(values), scales };
}

/** The three matrices of one group-wise int8 expert (gate, up [dFf, dModel]; down [dModel, dFf]). */
export interface Q8gExpert {
  w1: Q8gMatrix;
  w3: Q8gMatrix;
  w2: Q8gMatrix;
}

/** One expert as int8 groups of Q8_EXPERT_GROUP: read from `.qweight`/`.scales` when stored so,
 * else read and quantized (the same quantizer convert uses, so both give the same bytes). */
export async function loadExpertQ8g(
  ckpt: Checkpoint,
  spec: ModelSpec,
  layer: number,
  expert: number,
): Promise<Q8gExpert> {
  const { dModel, dFf } = spec;
  if (storedExpertQuant(ckpt, spec) !== "int8-group") {
    const w = await loadExpertWeights(ckpt, spec, layer, expert);
    return {
      w1: quantizeQ8g(w.w1, dFf, dModel, Q8_EXPERT_GROUP, Q8_DIVISORS),
      w3: quantizeQ8g(w.w3, dFf, dModel, Q8_EXPERT_GROUP, Q8_DIVISORS),
      w2: quantizeQ8g(w.w2, dModel, dFf, Q8_EXPERT_GROUP, Q8_DIVISORS),
    };
  }
  const refs = expertTensorRefs(quantView(ckpt), spec, layer, expert);
  const [w1, w3, w2] = await Promise.all([refs.w1, refs.w3, refs.w2].map((r) => readQ8gRows(ckpt, r)));
  return { w1, w3, w2 };
}

async function readQ8gRows(ckpt: Checkpoint, ref: ExpertTensorRef): Promise<Q8gMatrix> {
  const names = quantNames(ref.tensor);
  const cols = ref.shape[1];
  const groups = ckpt.info(names.scales).shape.at(-1) ?? 0;
  if (groups * Q8_EXPERT_GROUP !== cols) {
    throw new Error(
      `${names.scales}: int8 groups of ${cols / groups} inputs; the expert kernels hold groups of ${Q8_EXPERT_GROUP}`,
    );
  }
  const [q, scales] = await Promise.all([
    ckpt.readF32Rows(names.qweight, ref.firstRow, ref.nRows),
    ckpt.readF32Rows(names.scales, ref.firstRow, ref.nRows),
  ]);
  return { rows: ref.nRows, cols, group: Q8_EXPERT_GROUP, q: Int8Array.from(q), scales };
}

/** Lays out a group-wise int8 expert into dst of expertQ8gBytes bytes (as packExpertQ8g does). */
export function packExpertQ8gMatrices(dst: Uint8Array, e: Q8gExpert, dModel: number, dFf: number): void {
  const group = e.w1.group;
  const gu = denseMatrixBytes(dFf, dModel, "int8", group);
  dst.fill(0, 0, expertQ8gBytes(dModel, dFf, group));
  packQ8g(dst.subarray(0, gu), e.w1);
  packQ8g(dst.subarray(gu, 2 * gu), e.w3);
  packQ8g(dst.subarray(2 * gu), e.w2);
}
