/**
 * @module Writes the safetensors format (8-byte little-endian header length, JSON header, data).
 * Used by scripts (demo model, conversion) and tests; the serving path only reads.
 * Format: https://github.com/huggingface/safetensors#format
 */

export type WritableDType = "F32" | "BF16" | "F16" | "I8" | "U8";

export interface TensorToWrite {
  name: string;
  dtype: WritableDType;
  shape: number[];
  /** Raw little-endian bytes, or f32 values (only with dtype F32). */
  data: Uint8Array | Float32Array;
}

const DTYPE_BYTES: Record<WritableDType, number> = { F32: 4, BF16: 2, F16: 2, I8: 1, U8: 1 };

/** Serialises tensors (in the order given) into one safetensors file image. */
export function writeSafetensors(tensors: TensorToWrite[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  const parts: Uint8Array[] = [];
  for (const t of tensors) {
    const bytes =
      t.data instanceof Float32Array ? new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength) : t.data;
    if (t.data instanceof Float32Array && t.dtype !== "F32") {
      throw new Error(`tensor ${t.name}: Float32Array data needs dtype F32, got ${t.dtype}`);
    }
    const expected = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (bytes.byteLength !== expected) {
      throw new Error(
        `tensor ${t.name}: shape [${t.shape.join(", ")}] × ${t.dtype} needs ${expected} bytes, got ${bytes.byteLength}`,
      );
    }
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.byteLength] };
    parts.push(bytes);
    offset += bytes.byteLength;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data section starts 8-byte aligned (as the reference writer does).
  while ((8 + json.length) % 8 !== 0) json += " ";
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.byteLength;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** Rounds f32 values to bf16 (round-to-nearest-even), as torch's `.to(torch.bfloat16)` does. */
export function f32ToBf16Bytes(values: Float32Array): Uint8Array {
  const u32 = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const x = u32[i];
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x007fffff) !== 0) {
      out[i] = (x >>> 16) | 0x40; // keep NaN a quiet NaN
    } else {
      out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    }
  }
  return new Uint8Array(out.buffer);
}
