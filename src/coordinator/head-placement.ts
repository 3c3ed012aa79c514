/**
 * @module Where the output head lives: the vocabulary split into M contiguous row ranges, one
 * HeadHost Durable Object each, every shard within the HeadHost byte budget. Pure (no I/O): the
 * Coordinator, the Worker, tests and the simulator all size the head with the same function.
 *
 * Shard boundaries are multiples of HEAD_ROW_ALIGN rows. That is what keeps the split head's
 * logits bit-identical to one host's: the matmul kernel (assembly/matmul.ts) computes each output
 * row independently, but takes rows in blocks of 2 or 4 and computes the last `dOut mod block`
 * rows with a different summation order. With every shard starting on a multiple of 4, each
 * vocabulary row falls in a block, or in the tail, exactly as it does in the unsplit [vocab, dModel]
 * product — so each logit is summed in the same order, in whichever shard it lands.
 */

/** Shard boundaries are multiples of this many rows (the matmul kernel's widest row block). */
export const HEAD_ROW_ALIGN = 4;

/** Kernels.alloc rounds every allocation up to this many bytes. */
const ALLOC_ALIGN = 16;

/** One HeadHost: rows [rowStart, rowEnd) of the head matrix [vocabSize, dModel]. */
export interface HeadShard {
  /** Position in `HeadPlacement.shards` (shards are in vocabulary order). */
  index: number;
  /** Durable Object name; it names the rows, so an instance never changes what it holds. */
  name: string;
  rowStart: number;
  rowEnd: number;
  /** Bytes of head weights the shard holds (its rows, rounded up to the allocator's 16). */
  bytes: number;
}

export interface HeadPlacement {
  model: string;
  vocabSize: number;
  dModel: number;
  /** Bytes one head row takes in a HeadHost (dModel × element size of the stored form). */
  bytesPerRow: number;
  /** Contiguous, in vocabulary order, covering [0, vocabSize) exactly. */
  shards: HeadShard[];
  /** The upload of the model its users read (set by the Worker; every shard call names it). */
  version?: string;
}

export interface HeadPlanInput {
  model: string;
  vocabSize: number;
  dModel: number;
  /** Bytes one head row takes in a HeadHost (4·dModel for f32 rows). */
  bytesPerRow: number;
  /** Bytes of head weights one HeadHost may hold (HEAD_HOST_BUDGET_MB). */
  budgetBytes: number;
  /** Use exactly this many shards (e.g. verify's `--head-shards`); must fit the budget. */
  shards?: number;
  /** At least this many shards (default 1). */
  minShards?: number;
}

/** The planned split is impossible (a shard would break the budget, or more shards than rows). */
export class HeadPlanError extends Error {
  override name = "HeadPlanError";
}

/** DO name of the HeadHost holding rows [rowStart, rowEnd) of `model`'s head. */
export function headShardName(model: string, rowStart: number, rowEnd: number): string {
  return `${model}/head/${rowStart}-${rowEnd}`;
}

/**
 * Splits [0, vocabSize) into the fewest shards (≥ minShards, or exactly `shards`) whose rows fit
 * `budgetBytes`, as even as the HEAD_ROW_ALIGN boundaries allow (earlier shards take the extra
 * aligned blocks; the last shard takes the vocabulary's ragged end).
 */
export function planHeadShards(p: HeadPlanInput): HeadPlacement {
  const { model, vocabSize, dModel, bytesPerRow, budgetBytes } = p;
  for (const [k, v] of Object.entries({ vocabSize, dModel, bytesPerRow })) {
    if (!Number.isInteger(v) || v < 1) throw new HeadPlanError(`${k} must be a positive integer, got ${v}`);
  }
  const blocks = Math.ceil(vocabSize / HEAD_ROW_ALIGN);
  const blockBytes = HEAD_ROW_ALIGN * bytesPerRow;
  // A host's allocation is rounded up to 16 bytes: leave room for it.
  const maxBlocks = Math.floor(Math.max(0, budgetBytes - (ALLOC_ALIGN - 1)) / blockBytes);
  if (maxBlocks < 1) {
    throw new HeadPlanError(
      `a HeadHost budget of ${budgetBytes} bytes holds no block of ${HEAD_ROW_ALIGN} head rows (${blockBytes} bytes)`,
    );
  }
  const fewest = Math.max(p.minShards ?? 1, Math.ceil(blocks / maxBlocks));
  const m = p.shards ?? fewest;
  if (!Number.isInteger(m) || m < 1) throw new HeadPlanError(`head shards must be a positive integer, got ${m}`);
  if (m > blocks) {
    throw new HeadPlanError(
      `${m} head shards is more than the ${blocks} blocks of ${HEAD_ROW_ALIGN} rows a vocabulary of ${vocabSize} has`,
    );
  }
  if (Math.ceil(blocks / m) > maxBlocks) {
    throw new HeadPlanError(
      `${m} head shards of ${vocabSize} rows need ${Math.ceil(blocks / m) * blockBytes} bytes each, ` +
        `over the HeadHost budget of ${budgetBytes} bytes (use at least ${Math.ceil(blocks / maxBlocks)} shards)`,
    );
  }
  const shards: HeadShard[] = [];
  let row = 0;
  for (let i = 0; i < m; i++) {
    const nBlocks = Math.floor(blocks / m) + (i < blocks % m ? 1 : 0);
    const rowEnd = Math.min(vocabSize, row + nBlocks * HEAD_ROW_ALIGN);
    const bytes = Math.ceil(((rowEnd - row) * bytesPerRow) / ALLOC_ALIGN) * ALLOC_ALIGN;
    shards.push({ index: i, name: headShardName(model, row, rowEnd), rowStart: row, rowEnd, bytes });
    row = rowEnd;
  }
  return { model, vocabSize, dModel, bytesPerRow, shards };
}

/** The shard holding vocabulary row `id`. */
export function shardOfRow(p: HeadPlacement, id: number): HeadShard {
  let lo = 0;
  let hi = p.shards.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (p.shards[mid].rowStart <= id) lo = mid;
    else hi = mid - 1;
  }
  const s = p.shards[lo];
  if (id < s.rowStart || id >= s.rowEnd)
    throw new RangeError(`row ${id} is outside the vocabulary [0, ${p.vocabSize})`);
  return s;
}
