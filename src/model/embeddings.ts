/**
 * @module Token embeddings without the whole table in memory: rows read on demand from the
 * checkpoint (ranged reads — R2 in production), decoded to f32, kept in a byte-bounded LRU cache.
 * A decode step needs one row; a prompt needs a few hundred, mostly distinct, read in coalesced
 * runs of adjacent ids. Holding granite-3.1-1b-a400m's table would take 192 MiB as f32 (96 MiB in
 * bf16): more than an isolate can spare next to anything else.
 *
 * Rows come back as stored, before any embedding multiplier (Granite's is applied by the forward
 * pass). F32, BF16 and F16 tables decode exactly; an int8 table (`<name>.qweight` I8 + `<name>.scales`
 * F32 per row, the src/model/quantized.ts format) decodes to scale · q.
 *
 * Concurrent requests share reads under way (and the int8 scales' one read) as Flights
 * (src/platform/shared-work.ts): a request that needs a row another request is reading picks it up
 * in its own context, and reads it itself if that request went away mid-read.
 */
import { vocabTensorNames } from "./architectures";
import type { ModelSpec } from "./config";
import { quantNames } from "./quant-names";
import type { Checkpoint } from "./safetensors";
import { Flight, shareWork } from "../platform/shared-work";

/** Where a forward pass gets its input rows. */
export interface EmbeddingSource {
  readonly vocabSize: number;
  readonly dModel: number;
  /** [ids.length, dModel] f32 rows, in the order of `ids` (repeats allowed). RangeError on a bad id. */
  rows(ids: readonly number[]): Promise<Float32Array>;
}

export interface EmbeddingCacheStats {
  /** Rows answered from the cache (or from a read already in flight). */
  hits: number;
  /** Rows read from the checkpoint. */
  misses: number;
  /** Ranged reads issued (one per run of nearby ids). */
  reads: number;
  /** Checkpoint bytes read. */
  bytesRead: number;
  /** Bytes of f32 rows held now, and at most. */
  cachedBytes: number;
  cacheBytes: number;
}

/** Ids this close are read in one run (the rows between are read and dropped): a round trip costs
 * more than a few rows of bytes. */
const MAX_GAP_ROWS = 8;
/** Checkpoint bytes per ranged read at most, so one prompt never needs one huge buffer. */
const MAX_RUN_BYTES = 1024 * 1024;

export function checkIds(ids: readonly number[], vocabSize: number): void {
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize)
      throw new RangeError(`token id ${id} is outside the vocabulary [0, ${vocabSize})`);
  }
}

/** The table held whole in memory: the fast path for models whose table fits (and the baseline). */
export class TableEmbeddings implements EmbeddingSource {
  constructor(
    readonly table: Float32Array, // [vocabSize, dModel]
    readonly vocabSize: number,
    readonly dModel: number,
  ) {}

  async rows(ids: readonly number[]): Promise<Float32Array> {
    checkIds(ids, this.vocabSize);
    const d = this.dModel;
    const out = new Float32Array(ids.length * d);
    for (let i = 0; i < ids.length; i++) out.set(this.table.subarray(ids[i] * d, (ids[i] + 1) * d), i * d);
    return out;
  }
}

/** Rows read from the checkpoint on demand, cached in at most `cacheBytes` of f32 rows (LRU). */
export class CheckpointEmbeddings implements EmbeddingSource {
  /** id → row; Map order is recency (oldest first). */
  readonly #cache = new Map<number, Float32Array>();
  /** id → the read under way that covers it. */
  readonly #pending = new Map<number, Flight<RunBlock>>();
  #scales: Flight<Float32Array> | null = null;
  #stats: EmbeddingCacheStats;

  private constructor(
    private readonly ckpt: Checkpoint,
    /** The tensor whose rows are read: the table, or its `.qweight` when stored int8. */
    readonly tensor: string,
    private readonly scalesTensor: string | null,
    readonly vocabSize: number,
    readonly dModel: number,
    cacheBytes: number,
  ) {
    this.#stats = { hits: 0, misses: 0, reads: 0, bytesRead: 0, cachedBytes: 0, cacheBytes };
  }

  /** The model's embedding table (shape checked against the config); no data is read yet. */
  static open(ckpt: Checkpoint, spec: ModelSpec, opts: { cacheBytes: number }): CheckpointEmbeddings {
    const name = vocabTensorNames(spec).embed;
    const q = quantNames(name);
    const quantized = !ckpt.has(name) && ckpt.has(q.qweight) && ckpt.has(q.scales);
    const tensor = quantized ? q.qweight : name;
    const info = ckpt.info(tensor);
    const want = [spec.vocabSize, spec.dModel];
    if (info.shape.length !== 2 || info.shape[0] !== want[0] || info.shape[1] !== want[1]) {
      throw new RangeError(
        `${info.file}: tensor "${tensor}" has shape [${info.shape.join(", ")}], config expects [${want.join(", ")}]`,
      );
    }
    if (info.dtype === "I8" && !quantized)
      throw new RangeError(`${info.file}: tensor "${tensor}" is I8 without "${q.scales}"`);
    return new CheckpointEmbeddings(
      ckpt,
      tensor,
      quantized ? q.scales : null,
      spec.vocabSize,
      spec.dModel,
      opts.cacheBytes,
    );
  }

  stats(): EmbeddingCacheStats {
    return { ...this.#stats };
  }

  async rows(ids: readonly number[]): Promise<Float32Array> {
    checkIds(ids, this.vocabSize);
    const d = this.dModel;
    const got = new Map<number, Float32Array | Promise<Float32Array>>();
    const missing: number[] = [];
    for (const id of ids) {
      if (got.has(id)) continue;
      const row = this.#cache.get(id);
      if (row) {
        this.#cache.delete(id); // move to the recent end
        this.#cache.set(id, row);
        got.set(id, row);
        this.#stats.hits++;
      } else if (this.#pending.has(id)) {
        got.set(id, this.#joinRow(id));
        this.#stats.hits++;
      } else {
        missing.push(id);
      }
    }
    for (const [first, last, wanted] of runs(missing, Math.max(1, Math.floor(MAX_RUN_BYTES / (d * 4))))) {
      const read = this.#startRead(first, last - first + 1, wanted).promise;
      for (const id of wanted)
        got.set(
          id,
          read.then((run) => this.#cache.get(id) ?? rowOf(run, id, d)),
        );
    }
    const out = new Float32Array(ids.length * d);
    for (let i = 0; i < ids.length; i++) out.set(await got.get(ids[i])!, i * d);
    return out;
  }

  /** Row `id` from the read another request has under way (read again here if it went away). */
  async #joinRow(id: number): Promise<Float32Array> {
    const run = await shareWork(
      () => this.#pending.get(id),
      () => this.#startRead(id, 1, [id]),
    );
    return this.#cache.get(id) ?? rowOf(run, id, this.dModel);
  }

  /** Starts the read of rows [first, first + n), admitting `wanted` to the cache when it lands. */
  #startRead(first: number, n: number, wanted: readonly number[]): Flight<RunBlock> {
    const d = this.dModel;
    const flight: Flight<RunBlock> = new Flight(async () => {
      try {
        const block = await this.#read(first, n);
        for (const id of wanted) this.#admit(id, block.slice((id - first) * d, (id - first + 1) * d));
        return { first, block };
      } finally {
        for (const id of wanted) if (this.#pending.get(id) === flight) this.#pending.delete(id);
      }
    });
    for (const id of wanted) this.#pending.set(id, flight);
    this.#stats.misses += wanted.length;
    return flight;
  }

  /** Rows [first, first + n) decoded to f32 (× per-row scale when int8). */
  async #read(first: number, n: number): Promise<Float32Array> {
    this.#stats.reads++;
    const info = this.ckpt.info(this.tensor);
    this.#stats.bytesRead += (info.byteLength / this.vocabSize) * n;
    const [block, scales] = await Promise.all([this.ckpt.readF32Rows(this.tensor, first, n), this.#scalesOnce()]);
    if (scales) {
      const d = this.dModel;
      for (let r = 0; r < n; r++) {
        const s = scales[first + r];
        for (let j = r * d; j < (r + 1) * d; j++) block[j] *= s;
      }
    }
    return block;
  }

  /** The int8 table's per-row scales ([vocabSize] f32), read once. */
  #scalesOnce(): Promise<Float32Array | null> {
    if (this.scalesTensor === null) return Promise.resolve(null);
    const name = this.scalesTensor;
    return shareWork(
      () => this.#scales,
      () => {
        const f: Flight<Float32Array> = new Flight(() =>
          this.ckpt.readF32(name, [this.vocabSize]).catch((err: unknown) => {
            if (this.#scales === f) this.#scales = null;
            throw err;
          }),
        );
        this.#scales = f;
        return f;
      },
    );
  }

  /** Caches a fetched row, evicting the least recently used past the byte bound. */
  #admit(id: number, row: Float32Array): Float32Array {
    const s = this.#stats;
    if (row.byteLength > s.cacheBytes || this.#cache.has(id)) return row;
    while (s.cachedBytes + row.byteLength > s.cacheBytes) {
      const [oldId, old] = this.#cache.entries().next().value as [number, Float32Array];
      this.#cache.delete(oldId);
      s.cachedBytes -= old.byteLength;
    }
    this.#cache.set(id, row);
    s.cachedBytes += row.byteLength;
    return row;
  }
}

/** One ranged read's rows: [n, dModel] f32 starting at row `first`. */
interface RunBlock {
  first: number;
  block: Float32Array;
}

/** Row `id` of a run (a copy: the block is dropped once its rows are taken). */
function rowOf(run: RunBlock, id: number, d: number): Float32Array {
  return run.block.slice((id - run.first) * d, (id - run.first + 1) * d);
}

/** Sorted unique ids → [first, last, ids] runs: gaps ≤ MAX_GAP_ROWS merge, ≤ maxRows rows each. */
export function runs(ids: readonly number[], maxRows: number): [number, number, number[]][] {
  const sorted = [...new Set(ids)].sort((a, b) => a - b);
  const out: [number, number, number[]][] = [];
  for (const id of sorted) {
    const cur = out.at(-1);
    if (cur && id - cur[1] <= MAX_GAP_ROWS + 1 && id - cur[0] < maxRows) {
      cur[1] = id;
      cur[2].push(id);
    } else {
      out.push([id, id, [id]]);
    }
  }
  return out;
}
