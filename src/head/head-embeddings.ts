/**
 * @module Embedding rows served by the HeadHosts of a model that ties its embeddings: the one copy
 * of the table, already in HeadHost memory for the output head, answers lookups too — one RPC per
 * shard that holds a wanted id, all in parallel. (Untied models read rows from R2 instead:
 * src/model/embeddings.ts CheckpointEmbeddings.)
 */
import { pipelineRpcTimeoutMs, withDeadline } from "../platform/deadline";
import { shardOfRow, type HeadPlacement, type HeadShard } from "../coordinator/head-placement";
import { checkIds, type EmbeddingSource } from "../model/embeddings";
import { ref, shardError } from "./head-client";

export class HeadEmbeddings implements EmbeddingSource {
  readonly vocabSize: number;
  readonly dModel: number;

  constructor(
    private readonly env: Env,
    private readonly placement: HeadPlacement,
  ) {
    this.vocabSize = placement.vocabSize;
    this.dModel = placement.dModel;
  }

  async rows(ids: readonly number[]): Promise<Float32Array> {
    checkIds(ids, this.vocabSize);
    const p = this.placement;
    const d = this.dModel;
    const byShard = new Map<HeadShard, number[]>(); // shard → positions in ids
    ids.forEach((id, i) => {
      const s = shardOfRow(p, id);
      const list = byShard.get(s) ?? [];
      list.push(i);
      byShard.set(s, list);
    });
    const out = new Float32Array(ids.length * d);
    await Promise.all(
      [...byShard].map(async ([s, at]) => {
        const call = this.env.HEAD_HOST.getByName(s.name).embed(
          ref(p, s),
          at.map((i) => ids[i]),
        );
        const r = await withDeadline(Promise.resolve(call), pipelineRpcTimeoutMs(this.env), `HeadHost ${s.name}`);
        if (!r.ok) throw shardError(r.code, s.name, r.message);
        at.forEach((pos, j) => out.set(r.rows.subarray(j * d, (j + 1) * d), pos * d));
      }),
    );
    return out;
  }
}
