/**
 * @module One routed expert's matrices as their stored bytes (f32, bf16 or f16), decoded to f32 a
 * run of rows at a time by whoever packs them (src/kernels/pack-expert.ts decodes each run
 * straight into Wasm scratch). Unlike loadExpertWeights no f32 copy of the whole expert is made in
 * the JS heap: a load holds only the bytes the read returned.
 */
import { expertTensorRefs, type ExpertTensorRef } from "./architectures";
import type { ModelSpec } from "./config";
import type { Checkpoint } from "./safetensors";
import { DTYPE_BYTES, decodeToF32 } from "./safetensors-format";
import type { F32Rows } from "../kernels/pack-expert";

/** Gate and up [dFf, dModel], down [dModel, dFf], each still encoded as stored. */
export interface ExpertRows {
  w1: F32Rows;
  w3: F32Rows;
  w2: F32Rows;
}

async function encodedRows(ckpt: Checkpoint, r: ExpertTensorRef): Promise<F32Rows> {
  const range = ckpt.rowBytes(r.tensor, r.firstRow, r.nRows);
  const bytes = await range.source.read(range.offset, range.length);
  const rowBytes = r.shape[1] * DTYPE_BYTES[range.dtype];
  return {
    copyRows: (r0, n, dst) => {
      decodeToF32(bytes.subarray(r0 * rowBytes, (r0 + n) * rowBytes), range.dtype, dst);
    },
  };
}

/** Reads expert `expert` of `layer` (three ranged reads, in parallel), undecoded. */
export async function readExpertRows(
  ckpt: Checkpoint,
  spec: ModelSpec,
  layer: number,
  expert: number,
): Promise<ExpertRows> {
  const refs = expertTensorRefs(ckpt, spec, layer, expert);
  const [w1, w3, w2] = await Promise.all([refs.w1, refs.w3, refs.w2].map((r) => encodedRows(ckpt, r)));
  return { w1, w3, w2 };
}
