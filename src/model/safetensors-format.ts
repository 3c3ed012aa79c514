/**
 * @module The safetensors format itself: parsing and validating a file's header (and the shard
 * headers a `model.safetensors.index.json` names) into `TensorInfo`s, and decoding tensor bytes of
 * each supported dtype to f32. No I/O of its own beyond the `ByteSource` reads it is handed.
 * Format: https://github.com/huggingface/safetensors#format — 8-byte little-endian header length N,
 * N bytes of JSON `{ name: { dtype, shape, data_offsets: [begin, end] } }` (offsets relative to the
 * data section that starts at 8 + N), then the data.
 */
import { ModelFormatError } from "./errors";
import type { ByteSource, FileStore } from "./file-stores";

/** Decoded dtypes; I8 holds int8-quantized experts (src/model/quantized.ts), decoded exactly. */
export type DType = "F32" | "BF16" | "F16" | "I8";

export interface TensorInfo {
  name: string;
  /** File that holds the tensor. */
  file: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte offset of the tensor's first byte in `file`. */
  offset: number;
  byteLength: number;
}

export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";
/** A header larger than this is a corrupt length field, not a real header (real ones are < 10 MB). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;
/** First read of a file; most headers fit, which saves a second round trip to R2. */
const HEADER_PROBE_BYTES = 64 * 1024;

/** Bytes per element of each decoded dtype (the Checkpoint reads rows by it). */
export const DTYPE_BYTES: Record<DType, number> = { F32: 4, BF16: 2, F16: 2, I8: 1 };
/** Dtypes the format defines that we do not decode (named as such in errors). */
const KNOWN_UNSUPPORTED = new Set([
  "F64",
  "I64",
  "I32",
  "I16",
  "U64",
  "U32",
  "U16",
  "U8",
  "BOOL",
  "F8_E4M3",
  "F8_E5M2",
  "F8_E8M0",
  "F6_E2M3",
  "F6_E3M2",
  "F4",
  "C64",
]);

/** Reads the index and every shard header it names; tensors map to the shard that holds them. */
export async function readShardedHeaders(
  store: FileStore,
  index: ByteSource,
): Promise<{ tensors: Map<string, TensorInfo>; files: Map<string, ByteSource> }> {
  const raw = parseJson(await index.read(0, await index.size()), INDEX_FILE, "index");
  const weightMap = (raw as Record<string, unknown>).weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new ModelFormatError(
      `${INDEX_FILE}: weight_map must be an object mapping tensor names to shard files`,
      INDEX_FILE,
      undefined,
      "weight_map",
    );
  }
  // Shard → the tensors the index places there (the first one names the shard in errors).
  const byShard = new Map<string, string[]>();
  for (const [tensor, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string" || shard === "" || shard.includes("..") || shard.startsWith("/")) {
      throw new ModelFormatError(
        `${INDEX_FILE}: weight_map entry for tensor "${tensor}" must be a shard file name, ` +
          `got ${JSON.stringify(shard)}`,
        INDEX_FILE,
        tensor,
        "weight_map",
      );
    }
    const list = byShard.get(shard) ?? [];
    list.push(tensor);
    byShard.set(shard, list);
  }
  const files = new Map<string, ByteSource>();
  const headers = await Promise.all(
    [...byShard.entries()].map(async ([shard, names]) => {
      const src = await store.open(shard);
      if (!src) {
        throw new ModelFormatError(
          `${INDEX_FILE}: tensor "${names[0]}" is mapped to shard "${shard}", which is missing from ${store.label}`,
          INDEX_FILE,
          names[0],
        );
      }
      files.set(shard, src);
      return { shard, names, header: await readHeader(src) };
    }),
  );
  const tensors = new Map<string, TensorInfo>();
  for (const { shard, names, header } of headers) {
    for (const name of names) {
      const t = header.get(name);
      if (!t) {
        throw new ModelFormatError(
          `${INDEX_FILE}: tensor "${name}" is mapped to ${shard}, but ${shard} has no such tensor`,
          shard,
          name,
        );
      }
      tensors.set(name, t);
    }
  }
  return { tensors, files };
}

/** Parses and validates one file's header; offsets in the result are absolute. */
export async function readHeader(src: ByteSource): Promise<Map<string, TensorInfo>> {
  const file = src.name;
  const size = await src.size();
  if (size < 8) {
    throw new ModelFormatError(
      `${file}: file is ${size} bytes, shorter than the 8-byte header length (truncated upload?)`,
      file,
    );
  }
  const probe = await src.read(0, Math.min(size, HEADER_PROBE_BYTES));
  const headerLen = new DataView(probe.buffer, probe.byteOffset, 8).getBigUint64(0, true);
  if (headerLen > BigInt(MAX_HEADER_BYTES)) {
    throw new ModelFormatError(
      `${file}: header length field says ${headerLen} bytes, over the ${MAX_HEADER_BYTES}-byte limit ` +
        "(corrupt or not a safetensors file)",
      file,
    );
  }
  const n = Number(headerLen);
  if (8 + n > size) {
    throw new ModelFormatError(
      `${file}: header length ${n} runs past the end of the ${size}-byte file (truncated)`,
      file,
    );
  }
  const headerBytes = 8 + n <= probe.length ? probe.subarray(8, 8 + n) : await src.read(8, n);
  const header = parseJson(headerBytes, file, "header");
  const dataStart = 8 + n;
  const dataLen = size - dataStart;

  const tensors = new Map<string, TensorInfo>();
  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") continue;
    tensors.set(name, tensorInfo(file, name, entry, dataStart, dataLen));
  }
  return tensors;
}

function tensorInfo(file: string, name: string, entry: unknown, dataStart: number, dataLen: number): TensorInfo {
  const bad = (field: string | undefined, what: string) =>
    new ModelFormatError(`${file}: tensor "${name}" ${what}`, file, name, field);
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    throw bad(undefined, `header entry must be an object with dtype, shape and data_offsets`);
  }
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== "string") throw bad("dtype", `has no dtype string`);
  if (!(dtype in DTYPE_BYTES)) {
    throw bad(
      "dtype",
      KNOWN_UNSUPPORTED.has(dtype)
        ? `has dtype ${dtype}, which is not supported (supported: F32, BF16, F16)`
        : `has unknown dtype ${JSON.stringify(dtype)} (supported: F32, BF16, F16)`,
    );
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw bad("shape", `shape must be a list of integers ≥ 0, got ${JSON.stringify(shape)}`);
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
    offsets[0] > offsets[1]
  ) {
    throw bad("data_offsets", `data_offsets must be [begin, end] with 0 ≤ begin ≤ end, got ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as [number, number];
  const dt = dtype as DType;
  const expected = numel(shape) * DTYPE_BYTES[dt];
  if (end - begin !== expected) {
    throw bad(
      "data_offsets",
      `shape ${fmtShape(shape)} × ${dt} needs ${expected} bytes, ` +
        `but data_offsets [${begin}, ${end}] span ${end - begin}`,
    );
  }
  if (end > dataLen) {
    throw bad(
      "data_offsets",
      `data_offsets [${begin}, ${end}] extend past the ${dataLen}-byte data section (file truncated?)`,
    );
  }
  return { name, file, dtype: dt, shape: [...shape], offset: dataStart + begin, byteLength: expected };
}

function parseJson(bytes: Uint8Array, file: string, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes));
  } catch (e) {
    throw new ModelFormatError(`${file}: ${what} is not valid UTF-8 JSON (${(e as Error).message})`, file);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ModelFormatError(
      `${file}: ${what} must be a JSON object, got ${Array.isArray(value) ? "an array" : JSON.stringify(value)}`,
      file,
    );
  }
  return value as Record<string, unknown>;
}

/**
 * Little-endian `bytes` of `dtype` → f32, into `dst` (from its start) or a new array. Exact for all
 * three: F32 is copied (any byte alignment), BF16 is the top half of an f32 (bits << 16), F16
 * covers subnormals, ±inf and NaN.
 */
export function decodeToF32(bytes: Uint8Array, dtype: DType, dst?: Float32Array): Float32Array {
  const esize = DTYPE_BYTES[dtype];
  if (bytes.byteLength % esize !== 0) {
    throw new RangeError(`${dtype} data must be a multiple of ${esize} bytes, got ${bytes.byteLength}`);
  }
  const n = bytes.byteLength / esize;
  if (dst && dst.length < n) throw new RangeError(`destination holds ${dst.length} floats, need ${n}`);
  const out = dst ? (dst.length === n ? dst : dst.subarray(0, n)) : new Float32Array(n);
  switch (dtype) {
    case "F32":
      if (bytes.byteOffset % 4 === 0 && LITTLE_ENDIAN) {
        out.set(new Float32Array(bytes.buffer, bytes.byteOffset, n));
      } else {
        const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
      }
      break;
    case "BF16": {
      const bits = new Uint32Array(out.buffer, out.byteOffset, n);
      if (bytes.byteOffset % 2 === 0 && LITTLE_ENDIAN) {
        const half = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
        for (let i = 0; i < n; i++) bits[i] = half[i] << 16;
      } else {
        for (let i = 0; i < n; i++) bits[i] = (bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16;
      }
      break;
    }
    case "F16": {
      const bits = new Uint32Array(out.buffer, out.byteOffset, n);
      for (let i = 0; i < n; i++) bits[i] = f16BitsToF32Bits(bytes[2 * i] | (bytes[2 * i + 1] << 8));
      break;
    }
    case "I8":
      for (let i = 0; i < n; i++) out[i] = (bytes[i] << 24) >> 24;
      break;
  }
  return out;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** IEEE half → single, bit-exact (NaN payloads kept). */
function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0; // inf / NaN
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0; // rebias 15 → 127
  if (mant === 0) return sign >>> 0; // ±0
  // Subnormal: mant × 2^-24; normalise so the leading 1 becomes the implicit bit.
  let e = 113;
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}
