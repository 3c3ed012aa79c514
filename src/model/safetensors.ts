/**
 * @module The `Checkpoint`: reads safetensors checkpoints (one file, or shards listed by
 * `model.safetensors.index.json`) through ranged reads, so only headers are fetched up front and each
 * tensor, or a run of its rows, is fetched when asked for. Works on any `FileStore`: memory (tests),
 * R2 (the Worker and the ExpertHosts). Web-standard APIs only. Header parsing and dtype decoding live
 * in ./safetensors-format, the stores in ./file-stores; this module re-exports their public names.
 */
import { ModelFormatError } from "./errors";
import type { ByteSource, FileStore } from "./file-stores";
import {
  DTYPE_BYTES,
  INDEX_FILE,
  SINGLE_FILE,
  type DType,
  type TensorInfo,
  decodeToF32,
  fmtShape,
  numel,
  readHeader,
  readShardedHeaders,
  sameShape,
} from "./safetensors-format";

// The names this module has always exported, now defined next door (imports of this module keep working).
export type { ByteSource, FileStore } from "./file-stores";
export { memoryFileStore, r2FileStore } from "./file-stores";
export type { DType, TensorInfo } from "./safetensors-format";
export {
  INDEX_FILE,
  MAX_HEADER_BYTES,
  SINGLE_FILE,
  decodeToF32,
  fmtShape,
  numel,
  sameShape,
} from "./safetensors-format";

/** Bytes fetched per read by `readF32Cols` (a run of rows). */
export const COLS_READ_BYTES = 4 << 20;

/** Undecoded bytes of a run of a tensor's rows: [offset, offset + length) of `source`. */
export interface RawRange {
  source: ByteSource;
  offset: number;
  length: number;
  dtype: DType;
}

export class Checkpoint {
  private constructor(
    /** What the tensor names come from: "model.safetensors" or "model.safetensors.index.json". */
    readonly source: string,
    readonly tensors: ReadonlyMap<string, TensorInfo>,
    private readonly files: ReadonlyMap<string, ByteSource>,
  ) {}

  /** Reads `model.safetensors` or, if absent, `model.safetensors.index.json` and every shard's header. */
  static async open(store: FileStore): Promise<Checkpoint> {
    const single = await store.open(SINGLE_FILE);
    if (single) {
      const tensors = await readHeader(single);
      return new Checkpoint(SINGLE_FILE, tensors, new Map([[single.name, single]]));
    }
    const index = await store.open(INDEX_FILE);
    if (!index) {
      throw new ModelFormatError(`${store.label}: no ${SINGLE_FILE} or ${INDEX_FILE} found`, SINGLE_FILE);
    }
    const { tensors, files } = await readShardedHeaders(store, index);
    return new Checkpoint(INDEX_FILE, tensors, files);
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) {
      throw new ModelFormatError(
        `${this.source}: tensor "${name}" not found (the checkpoint has ${this.tensors.size} tensors)`,
        this.source,
        name,
      );
    }
    return t;
  }

  /** The whole tensor as f32. With `expectShape`, a different shape is a ModelFormatError. */
  async readF32(name: string, expectShape?: readonly number[]): Promise<Float32Array> {
    const t = this.info(name);
    if (expectShape && !sameShape(t.shape, expectShape)) {
      throw new ModelFormatError(
        `${t.file}: tensor "${name}" has shape ${fmtShape(t.shape)}, expected ${fmtShape(expectShape)}`,
        t.file,
        name,
      );
    }
    const bytes = await this.file(t).read(t.offset, t.byteLength);
    return decodeToF32(bytes, t.dtype);
  }

  /**
   * Rows `firstRow .. firstRow + nRows - 1` of the tensor viewed as 2-D [numel / rowLen, rowLen] with
   * rowLen = its last dimension (row-major, so the rows are contiguous). For a stacked [E, R, C]
   * tensor, expert e is rows e*R .. e*R + R - 1. Result: [nRows, rowLen].
   */
  async readF32Rows(name: string, firstRow: number, nRows: number): Promise<Float32Array> {
    const { rowLen } = this.rowRange(name, firstRow, nRows);
    return this.readF32RowsInto(name, firstRow, nRows, new Float32Array(nRows * rowLen));
  }

  /**
   * Like `readF32Rows`, decoding straight into `dst` (e.g. a view of Wasm memory) from its start;
   * returns the filled view `dst.subarray(0, nRows * rowLen)`.
   */
  async readF32RowsInto(name: string, firstRow: number, nRows: number, dst: Float32Array): Promise<Float32Array> {
    const { t, rowLen } = this.rowRange(name, firstRow, nRows);
    const n = nRows * rowLen;
    if (dst.length < n) {
      throw new RangeError(
        `tensor "${name}": ${nRows} rows of ${rowLen} need ${n} floats, destination holds ${dst.length}`,
      );
    }
    const esize = DTYPE_BYTES[t.dtype];
    const bytes = await this.file(t).read(t.offset + firstRow * rowLen * esize, n * esize);
    return decodeToF32(bytes, t.dtype, dst.subarray(0, n));
  }

  /**
   * Columns [c0, c1) of rows `firstRow .. firstRow + nRows - 1` (2-D view as in `readF32Rows`):
   * [nRows, c1 - c0]. A sliced expert's down projection is read this way. Rows are fetched in runs
   * of at most COLS_READ_BYTES per read, each run from column c0 of its first row to column c1 of
   * its last (the other columns inside a run are fetched and dropped: one read per row would cost
   * thousands of subrequests for a large expert), so peak memory stays bounded whatever the tensor.
   */
  async readF32Cols(
    name: string,
    firstRow: number,
    nRows: number,
    c0: number,
    c1: number,
    runBytes = COLS_READ_BYTES,
  ): Promise<Float32Array> {
    const { t, rowLen } = this.rowRange(name, firstRow, nRows);
    if (!Number.isSafeInteger(c0) || !Number.isSafeInteger(c1) || c0 < 0 || c1 < c0 || c1 > rowLen) {
      throw new RangeError(`tensor "${name}" has rows of ${rowLen}; asked for columns [${c0}, ${c1})`);
    }
    const w = c1 - c0;
    const out = new Float32Array(nRows * w);
    if (w === 0 || nRows === 0) return out;
    if (w === rowLen) return this.readF32RowsInto(name, firstRow, nRows, out);
    const esize = DTYPE_BYTES[t.dtype];
    const perRun = Math.max(1, Math.floor(runBytes / (rowLen * esize)));
    const file = this.file(t);
    for (let r = 0; r < nRows; r += perRun) {
      const k = Math.min(perRun, nRows - r);
      const span = (k - 1) * rowLen + w; // elements from (r, c0) to (r + k - 1, c1)
      const start = t.offset + ((firstRow + r) * rowLen + c0) * esize;
      const vals = decodeToF32(await file.read(start, span * esize), t.dtype);
      for (let i = 0; i < k; i++) out.set(vals.subarray(i * rowLen, i * rowLen + w), (r + i) * w);
    }
    return out;
  }

  /**
   * Where rows `firstRow .. firstRow + nRows - 1` of a tensor (viewed as in `readF32Rows`) lie, undecoded:
   * the file, the byte range and the dtype — for loaders that stream a tensor in bounded ranged reads
   * (src/model/dense-layers.ts) instead of holding it whole.
   */
  rowBytes(name: string, firstRow: number, nRows: number): RawRange {
    const { t, rowLen } = this.rowRange(name, firstRow, nRows);
    const esize = DTYPE_BYTES[t.dtype];
    return {
      source: this.file(t),
      offset: t.offset + firstRow * rowLen * esize,
      length: nRows * rowLen * esize,
      dtype: t.dtype,
    };
  }

  private rowRange(name: string, firstRow: number, nRows: number): { t: TensorInfo; rowLen: number } {
    const t = this.info(name);
    const rowLen = t.shape.length === 0 ? 1 : t.shape[t.shape.length - 1];
    const rows = rowLen === 0 ? 0 : numel(t.shape) / rowLen;
    if (
      !Number.isSafeInteger(firstRow) ||
      !Number.isSafeInteger(nRows) ||
      firstRow < 0 ||
      nRows < 0 ||
      firstRow + nRows > rows
    ) {
      throw new RangeError(
        `tensor "${name}" (${t.file}, shape ${fmtShape(t.shape)}) has ${rows} rows; ` +
          `asked for ${nRows} from row ${firstRow}`,
      );
    }
    return { t, rowLen };
  }

  private file(t: TensorInfo): ByteSource {
    const f = this.files.get(t.file);
    if (!f) throw new Error(`internal: no open file "${t.file}" for tensor "${t.name}"`);
    return f;
  }
}
