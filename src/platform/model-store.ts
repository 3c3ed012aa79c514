/**
 * @module Where models live: R2 keys `models/<id>/…` in the `MODELS` bucket, one HF-format
 * directory per model (config.json, safetensors or shards + index, tokenizer files) — and which
 * upload of it a reader holds.
 *
 * One upload: `scripts/seed.ts` writes `upload.json` last, listing the R2 etag of every file it
 * uploaded (config.json is written just before it). A model opened from R2 is pinned to that
 * manifest: a file whose etag differs is refused (an upload is in progress), and every ranged read
 * is conditional on the file's etag, so a re-upload can never mix old and new weights. A model
 * seeded without a manifest is pinned to the etags one listing of its directory shows. The
 * model's `version` names that upload; every host compares it with the caller's (PinnedModel).
 */
import { ModelChangedError } from "../model/errors";
import { r2FileStore, type FileStore } from "../model/safetensors";
import { openModel } from "../model/architectures";
import type { ModelSpec } from "../model/config";
import type { Checkpoint } from "../model/safetensors";
import { Flight, shareWork } from "./shared-work";

export { ModelChangedError } from "../model/errors";

export const MODEL_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** The upload manifest's name inside a model directory. */
export const UPLOAD_MANIFEST = "upload.json";
export const UPLOAD_MANIFEST_FORMAT = "edge-moe-upload/1";

/** How often a reader asks R2 whether the model it holds is still the current upload. */
export const MODEL_CHECK_MS = 1000;

export function modelPrefix(id: string): string {
  return `models/${id}/`;
}

export class ModelNotFoundError extends Error {
  override name = "ModelNotFoundError";
}

/** `upload.json`: the etag R2 reported for each file of one upload, by file name. */
export interface UploadManifest {
  format: typeof UPLOAD_MANIFEST_FORMAT;
  files: Record<string, string>;
}

/** A model's parsed config and checkpoint (what stores and tests build on, wherever it was read). */
export interface ModelCheckpoint {
  id: string;
  spec: ModelSpec;
  ckpt: Checkpoint;
}

export interface OpenedModel extends ModelCheckpoint {
  /** The upload this model was read from: "upload:<manifest etag>" or "list:<digest of etags>". */
  version: string;
  /** The model directory, every read pinned to `version`'s etags (tokenizer files, embeddings). */
  store: FileStore;
}

/** Checks a parsed `upload.json`; a malformed one is the uploader's error, named with its field. */
export function parseUploadManifest(raw: unknown, where: string): UploadManifest {
  const m = raw as { format?: unknown; files?: unknown } | null;
  if (typeof m !== "object" || m === null || m.format !== UPLOAD_MANIFEST_FORMAT)
    throw new Error(`${where}: format must be "${UPLOAD_MANIFEST_FORMAT}"`);
  const files = m.files as Record<string, unknown> | null;
  if (typeof files !== "object" || files === null || !Object.values(files).every((e) => typeof e === "string"))
    throw new Error(`${where}: files must map each file name to its etag`);
  return { format: UPLOAD_MANIFEST_FORMAT, files: files as Record<string, string> };
}

interface Upload {
  version: string;
  etags: Map<string, string>;
}

/** The current upload of model `id`: its manifest, else one listing of its directory. */
async function currentUpload(bucket: R2Bucket, id: string, withFiles: boolean): Promise<Upload> {
  if (!MODEL_ID_PATTERN.test(id)) throw new ModelNotFoundError(`model "${id}" is not a valid model id`);
  const prefix = modelPrefix(id);
  const key = prefix + UPLOAD_MANIFEST;
  if (withFiles) {
    const manifest = await bucket.get(key);
    if (manifest) {
      const m = parseUploadManifest(await manifest.json<unknown>(), key);
      return { version: `upload:${manifest.etag}`, etags: new Map(Object.entries(m.files)) };
    }
  } else {
    const manifest = await bucket.head(key);
    if (manifest) return { version: `upload:${manifest.etag}`, etags: new Map() };
  }
  const etags = new Map<string, string>();
  let cursor: string | undefined;
  do {
    const page = await bucket.list({ prefix, cursor });
    for (const o of page.objects) etags.set(o.key.slice(prefix.length), o.etag);
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  const listing = [...etags].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([f, e]) => `${f}\n${e}\n`);
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(listing.join("")));
  const hex = [...new Uint8Array(digest, 0, 12)].map((b) => b.toString(16).padStart(2, "0")).join("");
  return { version: `list:${hex}`, etags };
}

/** The version of model `id`'s current upload in R2 (one head, or one listing without a manifest). */
export async function modelVersion(bucket: R2Bucket, id: string): Promise<string> {
  return (await currentUpload(bucket, id, false)).version;
}

/** Opens a model's config and safetensors headers from R2, pinned to its current upload (no weights are read). */
export async function openModelFromR2(bucket: R2Bucket, id: string): Promise<OpenedModel> {
  const upload = await currentUpload(bucket, id, true);
  if (!upload.etags.has("config.json"))
    throw new ModelNotFoundError(
      `model "${id}" does not exist (no ${modelPrefix(id)}config.json in the MODELS bucket)`,
    );
  const store = r2FileStore(bucket, modelPrefix(id), { expected: upload.etags, seen: new Map() });
  const { spec, ckpt } = await openModel(store);
  return { id, spec, ckpt, version: upload.version, store };
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

/** Whether `err` says the model's files changed under its reader (it crosses RPC by name only). */
export function isModelChanged(err: unknown): boolean {
  return err instanceof Error && err.name === "ModelChangedError";
}

interface Held<T> {
  opened: OpenedModel;
  value: T;
}

/**
 * What a host builds from one upload of one model (an ExpertStore, a head shard, a stage's
 * layers), kept in step with its callers. A caller names the upload it read (`want`); when the
 * host holds another one it asks R2 which is current: a newer upload is loaded whole in place of
 * the old one; a caller behind R2 is refused with ModelChangedError (it reloads, then calls again).
 * Weights read under one version are never served to a caller of another.
 */
export class PinnedModel<T> {
  #held: Held<T> | null = null;
  /** A load under way, shared by the calls that arrive meanwhile (src/platform/shared-work.ts). */
  #loading: Flight<Held<T>> | null = null;
  /** A version just found not to be R2's current one: refused without asking R2 again for a while. */
  #behind: { version: string; at: number } | null = null;

  constructor(
    private readonly bucket: () => R2Bucket,
    private readonly build: (opened: OpenedModel) => Promise<T> | T,
  ) {}

  /** What is held now (null before the first load or after `drop`). */
  get current(): Held<T> | null {
    return this.#held;
  }

  /** Forgets what is held (its reads failed with ModelChangedError): the next call reloads. */
  drop(): void {
    this.#held = null;
  }

  /** The value built from upload `want` of model `id` (any upload when `want` is undefined). */
  async get(id: string, want?: string): Promise<Held<T>> {
    const held = this.#held;
    if (held && (want === undefined || want === held.opened.version)) return held;
    if (held && want !== undefined) {
      const b = this.#behind;
      if (b && b.version === want && Date.now() - b.at < MODEL_CHECK_MS) throw behind(id, want, held.opened.version);
      const now = await modelVersion(this.bucket(), id);
      if (now !== want) {
        this.#behind = { version: want, at: Date.now() };
        if (now === held.opened.version) throw behind(id, want, now);
      }
      if (this.#held === held && now !== held.opened.version) this.#held = null; // R2 moved on: reload
    }
    const got = await shareWork(
      () => this.#loading,
      () => {
        const f: Flight<Held<T>> = new Flight(async () => {
          try {
            const opened = await openModelFromR2(this.bucket(), id);
            const next = { opened, value: await this.build(opened) };
            this.#held = next;
            return next;
          } finally {
            if (this.#loading === f) this.#loading = null;
          }
        });
        this.#loading = f;
        return f;
      },
    );
    if (want !== undefined && got.opened.version !== want) throw behind(id, want, got.opened.version);
    return got;
  }
}

function behind(id: string, want: string, have: string): ModelChangedError {
  return new ModelChangedError(
    `model "${id}" was re-uploaded: the caller read upload ${want}, R2's current one is ${have}; ` +
      "the caller reloads the model",
  );
}
