/**
 * @module Where models live: R2 keys `models/<id>/…` in the `MODELS` bucket, one HF-format
 * directory per model (config.json, safetensors or shards + index, tokenizer files).
 */
import { r2FileStore } from "../model/safetensors";
import { openModel } from "../model/architectures";
import type { ModelSpec } from "../model/config";
import type { Checkpoint } from "../model/safetensors";

export const MODEL_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function modelPrefix(id: string): string {
  return `models/${id}/`;
}

export class ModelNotFoundError extends Error {
  override name = "ModelNotFoundError";
}

export interface OpenedModel {
  id: string;
  spec: ModelSpec;
  ckpt: Checkpoint;
}

/** Opens a model's config and safetensors headers from R2 (no weights are read). */
export async function openModelFromR2(bucket: R2Bucket, id: string): Promise<OpenedModel> {
  if (!MODEL_ID_PATTERN.test(id)) throw new ModelNotFoundError(`model "${id}" is not a valid model id`);
  const head = await bucket.head(`${modelPrefix(id)}config.json`);
  if (!head)
    throw new ModelNotFoundError(
      `model "${id}" does not exist (no ${modelPrefix(id)}config.json in the MODELS bucket)`,
    );
  const { spec, ckpt } = await openModel(r2FileStore(bucket, modelPrefix(id)));
  return { id, spec, ckpt };
}

/** Lists model ids: prefixes under `models/` that hold a config.json. */
export async function listModelIds(bucket: R2Bucket): Promise<string[]> {
  const ids: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await bucket.list({ prefix: "models/", delimiter: "/", cursor });
    for (const p of page.delimitedPrefixes) {
      const id = p.slice("models/".length, -1);
      if (MODEL_ID_PATTERN.test(id)) ids.push(id);
    }
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  return ids.sort();
}
