/**
 * @module Continuous batching of the Worker's output head: the requests of one isolate that reach
 * the head in the same turn (they left their last MoE layer's merged fan-out together) run ONE
 * matmul over the vocabulary for all their rows — the head streams the whole [vocab, dModel] table
 * per call, so one read serves every row — and each gets its own logits back.
 *
 * Exactness: the head kernels compute each token row identically whatever the number of rows in
 * the call and the row's place in it, for any vocabulary (tests/unit/kernels/matmul-rows.test.ts and
 * the batch-rows contract), so every model's head calls may merge.
 */
import { Coalescer, type BatchEntry, type BatchResult } from "../platform/coalescer";

/** Logit bytes of one merged head call at most (Wasm scratch). */
export const HEAD_BATCH_BYTES = 4 << 20;

/** One model's head queue: rows [n, dModel] in, logits [n, vocab] out. */
export class HeadBatcher {
  readonly #queue: Coalescer<Float32Array, Float32Array>;

  constructor(
    dModel: number,
    vocabSize: number,
    head: (rows: Float32Array) => Float32Array,
    /** Requests expected to reach the head together (the model's decoding requests). */
    quorum?: () => number,
  ) {
    const maxRows = Math.max(1, Math.floor(HEAD_BATCH_BYTES / (4 * vocabSize)));
    this.#queue = new Coalescer<Float32Array, Float32Array>(
      async (entries) => runMerged(entries, dModel, vocabSize, head),
      // Callers are admitted requests (bounded by the KV ledger), each with one row set queued.
      { maxWaitMs: 0, maxRows, maxInFlight: 1, maxQueuedRows: 64 * maxRows, queueDeadlineMs: 30_000 },
      quorum,
      "output head queue",
    );
  }

  /** Logits [n, vocab] of the residual rows [n, dModel], computed with the turn's other rows. */
  run(rows: Float32Array, n: number): Promise<Float32Array> {
    return this.#queue.submit(rows, n);
  }

  get calls(): number {
    return this.#queue.batches;
  }
}

function runMerged(
  entries: readonly BatchEntry<Float32Array>[],
  dModel: number,
  vocab: number,
  head: (rows: Float32Array) => Float32Array,
): BatchResult<Float32Array>[] {
  if (entries.length === 1) return [{ ok: true, value: head(entries[0].item) }];
  const n = entries.reduce((s, e) => s + e.rows, 0);
  const x = new Float32Array(n * dModel);
  let at = 0;
  for (const e of entries) {
    x.set(e.item, at * dModel);
    at += e.rows;
  }
  const logits = head(x);
  at = 0;
  return entries.map((e) => {
    const value = logits.slice(at * vocab, (at + e.rows) * vocab);
    at += e.rows;
    return { ok: true, value };
  });
}
