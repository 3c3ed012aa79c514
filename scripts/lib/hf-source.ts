/**
 * @module The tensors of a Hugging Face repository directory (one `model.safetensors`, or shards
 * listed by `model.safetensors.index.json`), read by byte ranges from disk: only headers are parsed
 * up front, and tensor data is read a row range at a time into buffers the caller owns, so memory
 * does not grow with shard or tensor size. Besides F32/BF16/F16 it reads DeepSeek's fp8 (F8_E4M3
 * weights with a `<name>_scale_inv` F32 tensor of one scale per 128×128 block), dequantized to f32
 * as DeepSeek's `weight_dequant` does: w = fp8 · scale_inv[row / 128, col / 128].
 */
import { closeSync, existsSync, openSync, readFileSync, readSync } from "node:fs";
import { join } from "node:path";
import { INDEX_FILE, SINGLE_FILE, decodeToF32, numel } from "../../src/model/safetensors";

export type SourceDType = "F32" | "BF16" | "F16" | "F8_E4M3";

export interface SourceTensor {
  name: string;
  file: string;
  dtype: SourceDType;
  shape: number[];
  /** Absolute byte offset of the data in `file`. */
  offset: number;
  byteLength: number;
}

const ESIZE: Record<SourceDType, number> = { F32: 4, BF16: 2, F16: 2, F8_E4M3: 1 };
/** DeepSeek's fp8 block size (quantization_config.weight_block_size). */
export const FP8_BLOCK = 128;

/** Every tensor of the repository at `dir`, by name, from the shard headers. */
export function readSourceTensors(dir: string): Map<string, SourceTensor> {
  let files: string[];
  if (existsSync(join(dir, INDEX_FILE))) {
    const index = JSON.parse(readFileSync(join(dir, INDEX_FILE), "utf8")) as { weight_map?: Record<string, string> };
    if (!index.weight_map || typeof index.weight_map !== "object") throw new Error(`${INDEX_FILE}: missing weight_map`);
    files = [...new Set(Object.values(index.weight_map))].sort();
  } else if (existsSync(join(dir, SINGLE_FILE))) {
    files = [SINGLE_FILE];
  } else {
    throw new Error(`${dir}: no ${SINGLE_FILE} and no ${INDEX_FILE}`);
  }
  const out = new Map<string, SourceTensor>();
  for (const file of files) {
    const path = join(dir, file);
    if (!existsSync(path)) throw new Error(`${INDEX_FILE} names ${file}, which is not in ${dir}`);
    for (const t of readHeader(path, file)) {
      if (out.has(t.name)) throw new Error(`tensor ${t.name} is in both ${out.get(t.name)?.file} and ${file}`);
      out.set(t.name, t);
    }
  }
  return out;
}

function readExact(fd: number, dst: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < dst.length) {
    const n = readSync(fd, dst, done, dst.length - done, position + done);
    if (n === 0) throw new Error(`${path}: unexpected end of file at byte ${position + done}`);
    done += n;
  }
}

function readHeader(path: string, file: string): SourceTensor[] {
  const fd = openSync(path, "r");
  try {
    const len8 = new Uint8Array(8);
    readExact(fd, len8, 0, path);
    const headerLen = Number(new DataView(len8.buffer).getBigUint64(0, true));
    if (headerLen > 100 << 20) throw new Error(`${file}: header of ${headerLen} bytes is not a safetensors header`);
    const raw = new Uint8Array(headerLen);
    readExact(fd, raw, 8, path);
    const header = JSON.parse(new TextDecoder().decode(raw)) as Record<
      string,
      { dtype: string; shape: number[]; data_offsets: [number, number] }
    >;
    const dataStart = 8 + headerLen;
    const tensors: SourceTensor[] = [];
    for (const [name, e] of Object.entries(header)) {
      if (name === "__metadata__") continue;
      if (!(e.dtype in ESIZE))
        throw new Error(`${file}: tensor ${name} has dtype ${e.dtype} (convert reads F32, BF16, F16 and F8_E4M3)`);
      const dtype = e.dtype as SourceDType;
      const byteLength = numel(e.shape) * ESIZE[dtype];
      if (e.data_offsets[1] - e.data_offsets[0] !== byteLength)
        throw new Error(`${file}: tensor ${name}: data_offsets do not match shape × dtype`);
      tensors.push({ name, file, dtype, shape: e.shape, offset: dataStart + e.data_offsets[0], byteLength });
    }
    return tensors;
  } finally {
    closeSync(fd);
  }
}

/** float8 e4m3fn → f32 for every byte (no infinities; 0x7f / 0xff are NaN). */
const E4M3: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const sign = b & 0x80 ? -1 : 1;
    const exp = (b >> 3) & 0xf;
    const man = b & 7;
    if (exp === 15 && man === 7) t[b] = NaN;
    else if (exp === 0) t[b] = sign * (man / 8) * 2 ** -6;
    else t[b] = sign * (1 + man / 8) * 2 ** (exp - 7);
  }
  return t;
})();

/**
 * Reads rows of one tensor, decoded (and fp8-dequantized) to f32, with buffers sized once for
 * `maxValues` values: the memory this holds is ESIZE·maxValues + 4·maxValues bytes, plus the fp8
 * scale tensor (one f32 per 128×128 block).
 */
export class RowReader {
  readonly #raw: Uint8Array;
  readonly #f32: Float32Array;
  readonly #fds = new Map<string, number>();

  constructor(
    private readonly dir: string,
    readonly maxValues: number,
  ) {
    this.#raw = new Uint8Array(4 * maxValues);
    this.#f32 = new Float32Array(maxValues);
  }

  #fd(file: string): number {
    let fd = this.#fds.get(file);
    if (fd === undefined) {
      fd = openSync(join(this.dir, file), "r");
      this.#fds.set(file, fd);
    }
    return fd;
  }

  /** Raw bytes [offset, offset + length) of a tensor's data; valid until the next call. */
  bytes(t: SourceTensor, offset: number, length: number): Uint8Array {
    if (length > this.#raw.length)
      throw new RangeError(`read of ${length} bytes exceeds the ${this.#raw.length}-byte buffer`);
    const dst = this.#raw.subarray(0, length);
    readExact(this.#fd(t.file), dst, t.offset + offset, t.file);
    return dst;
  }

  /**
   * Rows [first, first + n) of a 2-D view ([rows, cols] with cols = last dim) as f32; valid until the
   * next call. `scaleInv` is the fp8 block scale tensor, already read (F32 [⌈rows/128⌉, ⌈cols/128⌉]).
   */
  rowsF32(t: SourceTensor, first: number, n: number, scaleInv: Float32Array | null): Float32Array {
    const cols = t.shape[t.shape.length - 1];
    const count = n * cols;
    if (count > this.maxValues) throw new RangeError(`${n} rows × ${cols} exceed the ${this.maxValues}-value buffer`);
    const esize = ESIZE[t.dtype];
    const raw = this.bytes(t, first * cols * esize, count * esize);
    const out = this.#f32.subarray(0, count);
    if (t.dtype !== "F8_E4M3") return decodeToF32(raw, t.dtype, out);
    if (scaleInv === null) throw new Error(`tensor ${t.name} is F8_E4M3 but has no ${t.name}_scale_inv`);
    const blockCols = Math.ceil(cols / FP8_BLOCK);
    for (let r = 0; r < n; r++) {
      const srow = ((first + r) / FP8_BLOCK) | 0;
      const o = r * cols;
      for (let c = 0; c < cols; c++)
        out[o + c] = Math.fround(E4M3[raw[o + c]] * scaleInv[srow * blockCols + ((c / FP8_BLOCK) | 0)]);
    }
    return out;
  }

  /** A whole small F32 tensor (fp8 block scales), in a new array. */
  smallF32(t: SourceTensor): Float32Array {
    const fd = this.#fd(t.file);
    const raw = new Uint8Array(t.byteLength);
    readExact(fd, raw, t.offset, t.file);
    return decodeToF32(raw, t.dtype === "F8_E4M3" ? "F32" : t.dtype);
  }

  close(): void {
    for (const fd of this.#fds.values()) closeSync(fd);
    this.#fds.clear();
  }
}

export function e4m3ToF32(byte: number): number {
  return E4M3[byte & 0xff];
}
