/**
 * @module Writes a safetensors file tensor by tensor, chunk by chunk, straight to disk: the header
 * (sizes are known up front) first, then each tensor's bytes as its producer emits them. Memory
 * stays at one chunk whatever the file size. Same header layout as src/model/safetensors-writer.ts
 * (JSON padded with spaces so the data section starts 8-byte aligned).
 */
import { closeSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import type { WritableDType } from "../../src/model/safetensors-writer.ts";

const DTYPE_BYTES: Record<WritableDType, number> = { F32: 4, BF16: 2, F16: 2, I8: 1, U8: 1 };

export interface StreamedTensor {
  name: string;
  dtype: WritableDType;
  shape: number[];
  /** Emits the tensor's little-endian bytes, in order, in any number of chunks. */
  produce(emit: (bytes: Uint8Array) => void): void;
}

export function tensorBytes(t: { dtype: WritableDType; shape: number[] }): number {
  return t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
}

/**
 * Writes `tensors` (in order) to `path` via a temporary file renamed at the end, so an interrupted
 * run never leaves a complete-looking file. `onBytes` sees every chunk's size (progress).
 * Returns the file's size.
 */
export function writeSafetensorsStream(
  path: string,
  tensors: StreamedTensor[],
  metadata: Record<string, string>,
  onBytes: (n: number) => void = () => {},
): number {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const n = tensorBytes(t);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + n] };
    offset += n;
  }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += " ";
  const headerBytes = new TextEncoder().encode(json);
  const lenBytes = new Uint8Array(8);
  new DataView(lenBytes.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);

  const tmp = `${path}.partial`;
  const fd = openSync(tmp, "w");
  let ok = false;
  try {
    writeSync(fd, lenBytes);
    writeSync(fd, headerBytes);
    for (const t of tensors) {
      const want = tensorBytes(t);
      let got = 0;
      t.produce((bytes) => {
        got += bytes.byteLength;
        if (got > want) throw new Error(`tensor ${t.name}: producer wrote more than its ${want} bytes`);
        let at = 0;
        while (at < bytes.byteLength) at += writeSync(fd, bytes, at, bytes.byteLength - at);
        onBytes(bytes.byteLength);
      });
      if (got !== want) throw new Error(`tensor ${t.name}: producer wrote ${got} bytes, its shape needs ${want}`);
    }
    ok = true;
  } finally {
    closeSync(fd);
    if (!ok) rmSync(tmp, { force: true }); // no half-written shard left behind
  }
  renameSync(tmp, path);
  return 8 + headerBytes.byteLength + offset;
}
