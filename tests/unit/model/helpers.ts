/**
 * @module Test helpers for the model loaders: fixture files from disk, and builders for altered
 * checkpoints (shards, packed experts, broken headers).
 */
import { readdirSync, readFileSync } from "node:fs";
import { ModelFormatError } from "../../../src/model/errors";
import { Checkpoint, memoryFileStore } from "../../../src/model/safetensors";
import { writeSafetensors } from "../../../src/model/safetensors-writer";
import type { TensorToWrite, WritableDType } from "../../../src/model/safetensors-writer";
import { expect } from "vitest";

export const FIXTURES = ["mixtral-tiny", "mixtral-tiny-bf16"] as const;
export type FixtureName = (typeof FIXTURES)[number];

const FIXTURE_DIR = new URL("../../fixtures/", import.meta.url);

/** Every file of a fixture directory, by name. */
export function fixtureFiles(fixture: FixtureName): Record<string, Uint8Array> {
  const dir = new URL(`${fixture}/`, FIXTURE_DIR);
  const files: Record<string, Uint8Array> = {};
  for (const f of readdirSync(dir)) files[f] = new Uint8Array(readFileSync(new URL(f, dir)));
  return files;
}

export function fixtureJson<T = unknown>(fixture: FixtureName, file: string): T {
  return JSON.parse(new TextDecoder().decode(fixtureFiles(fixture)[file])) as T;
}

export async function fixtureCheckpoint(fixture: FixtureName): Promise<Checkpoint> {
  return Checkpoint.open(memoryFileStore(fixtureFiles(fixture), fixture));
}

/** The tensors of a checkpoint as raw bytes, in file order, ready to rewrite. */
export async function rawTensors(ckpt: Checkpoint, files: Record<string, Uint8Array>): Promise<TensorToWrite[]> {
  return [...ckpt.tensors.values()]
    .sort((a, b) => (a.file === b.file ? a.offset - b.offset : a.file < b.file ? -1 : 1))
    .map((t) => ({
      name: t.name,
      dtype: t.dtype as WritableDType,
      shape: [...t.shape],
      data: files[t.file].slice(t.offset, t.offset + t.byteLength),
    }));
}

/** Splits tensors into shards named like HF's (`model-0000k-of-0000n.safetensors`) plus the index. */
export function shard(tensors: TensorToWrite[], nShards: number): Record<string, Uint8Array> {
  const pad = (k: number) => String(k).padStart(5, "0");
  const shardName = (k: number) => `model-${pad(k + 1)}-of-${pad(nShards)}.safetensors`;
  const per = Math.ceil(tensors.length / nShards);
  const out: Record<string, Uint8Array> = {};
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let k = 0; k < nShards; k++) {
    const part = tensors.slice(k * per, (k + 1) * per);
    for (const t of part) {
      weightMap[t.name] = shardName(k);
      total += t.data.byteLength;
    }
    out[shardName(k)] = writeSafetensors(part, { format: "pt" });
  }
  out["model.safetensors.index.json"] = new TextEncoder().encode(
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
  );
  return out;
}

/** A safetensors image with an arbitrary (possibly invalid) header object and `dataBytes` zero bytes. */
export function rawSafetensors(header: unknown, dataBytes: number): Uint8Array {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.byteLength + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  return out;
}

/** Float32 view of little-endian f32 bytes (copying, so any alignment works). */
export function f32(bytes: Uint8Array): Float32Array {
  return new Float32Array(bytes.slice().buffer);
}

/**
 * Awaits `p`, expects a ModelFormatError, and checks that its message names every string in
 * `mentions` (file names, tensor names, fields). Returns the error for further checks.
 */
export async function expectModelError(
  p: Promise<unknown> | (() => unknown),
  mentions: string[],
): Promise<ModelFormatError> {
  let err: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ModelFormatError);
  const message = (err as Error).message;
  for (const m of mentions) expect(message).toContain(m);
  return err as ModelFormatError;
}
