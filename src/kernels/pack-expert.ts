/**
 * @module pack-expert — packs an f32 expert into its blob inside Wasm memory (the layout of
 * ./packing.ts packExpertF32, byte for byte): rows are written into a scratch region of the same
 * memory a chunk at a time (decoded straight from the checkpoint's bytes when the caller has them),
 * and the Wasm op packRowsF32 (assembly/pack-f32.ts) moves them into panels 16 bytes at a time,
 * writing every byte of the blob once (padding included), so the blob needs no clearing first.
 * The JS packer moves one float at a time through a per-row callback after clearing the blob; in
 * workerd it dominated an expert load (README, Continuous batching), and a load is what a new
 * replica waits for. packExpertF32 stays as the reference the tests compare with.
 */
import type { Kernels } from "./index";
import { packedF32Bytes } from "./packing";

const roundUp = (v: number, m: number) => Math.ceil(v / m) * m;

/** A row-major matrix [rows, cols] that can write any run of its rows as f32 into a view. */
export interface F32Rows {
  /** Writes rows r0 .. r0 + n - 1 into dst (exactly n · cols floats). */
  copyRows(r0: number, n: number, dst: Float32Array): void;
}

/** The rows of a Float32Array holding [rows, cols]. */
export function f32Rows(w: Float32Array, cols: number): F32Rows {
  return { copyRows: (r0, n, dst) => dst.set(w.subarray(r0 * cols, (r0 + n) * cols)) };
}

/** The least scratch packExpertF32Into takes: one row of the wider matrix. */
export function packScratchMinBytes(dModel: number, dFf: number): number {
  return 4 * Math.max(dModel, dFf);
}

/** The fixed arguments of one matrix's packRowsF32 calls: where its panels start and how rows map. */
interface Target {
  dst: number;
  cols: number;
  group: number;
  rowOffset: number;
}

/** Rows [0, rows) of `w` → panels, through `scratch` (as many rows a chunk as fit); rows [rows, padTo) as zeros. */
function packMatrix(k: Kernels, t: Target, w: F32Rows, rows: number, padTo: number, scratch: number, sb: number): void {
  const perChunk = Math.max(1, Math.floor(sb / (4 * t.cols)));
  for (let r0 = 0; r0 < rows; r0 += perChunk) {
    const n = Math.min(perChunk, rows - r0);
    w.copyRows(r0, n, k.f32(scratch, n * t.cols));
    k.packRowsF32(t.dst, scratch, r0, n, t.cols, t.group, t.rowOffset);
  }
  if (padTo > rows) k.packRowsF32(t.dst, 0, rows, padTo - rows, t.cols, t.group, t.rowOffset);
}

/**
 * Packs one expert (w1, w3 [dFf, dModel], w2 [dModel, dFf]) into the blob at `blob`
 * (expertPackedBytes("f32", dModel, dFf) bytes) of `k`'s memory; the blob's previous contents do
 * not matter. `scratch` is any free region of the same memory of `scratchBytes` ≥
 * packScratchMinBytes bytes (an ExpertStore lends its kernel scratch, idle while a load packs); it
 * is overwritten.
 */
export function packExpertF32Into(
  k: Kernels,
  blob: number,
  scratch: number,
  scratchBytes: number,
  w: { w1: F32Rows; w3: F32Rows; w2: F32Rows },
  dModel: number,
  dFf: number,
): void {
  if (scratchBytes < packScratchMinBytes(dModel, dFf))
    throw new RangeError(
      `pack scratch of ${scratchBytes} B is less than one row (${packScratchMinBytes(dModel, dFf)} B)`,
    );
  const df4 = roundUp(dFf, 4);
  const gateUp = (rowOffset: number): Target => ({ dst: blob, cols: dModel, group: 4, rowOffset });
  // Fused gate/up panels: panel p holds w1 rows 4p..4p+3 (panel rows 0–3), then w3's (rows 4–7).
  packMatrix(k, gateUp(0), w.w1, dFf, df4, scratch, scratchBytes);
  packMatrix(k, gateUp(4), w.w3, dFf, df4, scratch, scratchBytes);
  const down: Target = { dst: blob + packedF32Bytes(2 * df4, dModel), cols: dFf, group: 8, rowOffset: 0 };
  packMatrix(k, down, w.w2, dModel, roundUp(dModel, 8), scratch, scratchBytes);
}
