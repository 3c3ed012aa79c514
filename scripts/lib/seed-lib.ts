/**
 * @module Uploads a Hugging Face model directory to an R2 bucket under `models/<id>/`, skipping
 * files whose size and MD5 already match. Takes any bucket with R2's `head`/`put` (the binding from
 * `getPlatformProxy`, a Miniflare bucket in tests, or a Worker's `env.MODELS`). Files larger than
 * one put (`MAX_PUT_BYTES`: the local proxy refuses a body over 128 MiB, e.g. Qwen3's 594 MiB bf16
 * embedding, which is one tensor and so one shard) go up through the binding's multipart API in
 * equal parts streamed from disk; their MD5 travels in custom metadata, since a multipart object's
 * ETag is not the file's MD5. Last it writes the upload manifest (`upload.json`: every file's etag)
 * that pins readers to this one upload (src/platform/model-store.ts).
 */
import { createHash } from "node:crypto";
import { createReadStream, existsSync, openAsBlob, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { UPLOAD_MANIFEST, UPLOAD_MANIFEST_FORMAT, type UploadManifest } from "../../src/platform/model-store.ts";

export { UPLOAD_MANIFEST } from "../../src/platform/model-store.ts";

/** The part of `R2Bucket` seeding uses. */
export interface SeedBucket {
  head(key: string): Promise<{
    size: number;
    etag: string;
    checksums?: { md5?: ArrayBuffer };
    customMetadata?: Record<string, string>;
  } | null>;
  put(
    key: string,
    value: Blob | ArrayBuffer | ArrayBufferView,
    options?: { md5?: string; httpMetadata?: { contentType?: string } },
  ): Promise<unknown>;
  createMultipartUpload(
    key: string,
    options?: { httpMetadata?: { contentType?: string }; customMetadata?: Record<string, string> },
  ): Promise<SeedMultipartUpload>;
}

/** The part of `R2MultipartUpload` seeding uses. */
export interface SeedMultipartUpload {
  uploadPart(partNumber: number, value: Blob): Promise<{ partNumber: number; etag: string }>;
  complete(parts: { partNumber: number; etag: string }[]): Promise<unknown>;
  abort(): Promise<void>;
}

/** Largest file sent in one put: below the local proxy's 128 MiB body limit. */
export const MAX_PUT_BYTES = 120 * 1024 * 1024;
/** Multipart part size (R2: ≥ 5 MiB, all parts equal but the last). */
export const PART_BYTES = 64 * 1024 * 1024;

export interface SeededFile {
  file: string;
  key: string;
  bytes: number;
  md5: string;
  action: "uploaded" | "skipped";
}

export interface SeedReport {
  modelId: string;
  /** `models/<id>/` */
  prefix: string;
  files: SeededFile[];
  uploadedBytes: number;
  skippedBytes: number;
  /** Files in the directory that are not model files (README.md, .gitattributes, …). */
  ignored: string[];
  ms: number;
}

/** Model ids become one R2 key segment: no slashes, nothing a URL path would mangle. */
const MODEL_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Files the serving path reads; anything else in a snapshot (README, original/ weights) stays local. */
const MODEL_FILE_RE = /^(?:.+\.json|.+\.safetensors|tokenizer\.model|.+\.jinja|merges\.txt|vocab\.txt)$/;

export function validateModelId(modelId: string): string {
  if (!MODEL_ID_RE.test(modelId)) {
    throw new Error(
      'model id must be 1–128 characters of letters, digits, ".", "_" or "-" (no "/"), ' +
        `starting with a letter or digit; got ${JSON.stringify(modelId)}`,
    );
  }
  return modelId;
}

export function modelKeyPrefix(modelId: string): string {
  return `models/${validateModelId(modelId)}/`;
}

export function contentTypeFor(file: string): string {
  return file.endsWith(".json")
    ? "application/json"
    : file.endsWith(".jinja") || file.endsWith(".txt")
      ? "text/plain; charset=utf-8"
      : "application/octet-stream";
}

/**
 * The files of `dir` to upload, in upload order: weights first, then the small JSON files, and
 * config.json last, so a reader that sees config.json finds everything it points to.
 * Throws if the directory is not a model directory or the index names a missing shard.
 */
export function listModelFiles(
  dir: string,
  skip: (file: string) => boolean = () => false,
): { files: string[]; ignored: string[] } {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new Error(
      `${dir} is not a directory; pass a model directory ` +
        "(e.g. demo-model/, made by `tsx scripts/make-demo-model.ts`)",
    );
  }
  const files: string[] = [];
  const ignored: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const isFile = statSync(join(dir, name)).isFile();
    // A manifest in the directory is an old upload's: the seed writes a fresh one after the files.
    const ok = isFile && !name.startsWith(".") && name !== UPLOAD_MANIFEST && MODEL_FILE_RE.test(name);
    if (ok && !skip(name)) files.push(name);
    else ignored.push(isFile ? name : `${name}/`);
  }
  if (!files.includes("config.json"))
    throw new Error(`${dir} has no config.json; is it a Hugging Face model directory?`);
  const index = "model.safetensors.index.json";
  if (files.includes(index)) {
    const parsed = JSON.parse(readFileSync(join(dir, index), "utf8")) as { weight_map?: Record<string, string> };
    if (!parsed.weight_map || typeof parsed.weight_map !== "object") throw new Error(`${index}: missing weight_map`);
    const missing = [...new Set(Object.values(parsed.weight_map))].filter((f) => !files.includes(f));
    if (missing.length > 0) throw new Error(`${index} names shards that are not in ${dir}: ${missing.join(", ")}`);
  } else if (!files.some((f) => f.endsWith(".safetensors"))) {
    throw new Error(`${dir} has no *.safetensors weights`);
  }
  const rank = (f: string) => (f === "config.json" ? 2 : f.endsWith(".safetensors") ? 0 : 1);
  files.sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
  return { files, ignored };
}

export async function md5File(path: string): Promise<string> {
  const hash = createHash("md5");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

function hex(buf: ArrayBuffer): string {
  return Buffer.from(buf).toString("hex");
}

export interface SeedOptions {
  /** Leave out files this returns true for (e.g. a test's `golden.json`); they are reported as ignored. */
  skip?: (file: string) => boolean;
  /** Progress lines, one per file. */
  log?: (line: string) => void;
  /** Files above this many bytes go up as multipart uploads (default MAX_PUT_BYTES). */
  maxPutBytes?: number;
  /** Part size of those uploads (default PART_BYTES). */
  partBytes?: number;
}

/** Uploads `path` in equal parts read from disk as they are sent; aborts the upload on a failure. */
async function putMultipart(
  bucket: SeedBucket,
  key: string,
  path: string,
  bytes: number,
  md5: string,
  partBytes: number,
  contentType: string,
): Promise<number> {
  const blob = await openAsBlob(path);
  const upload = await bucket.createMultipartUpload(key, {
    httpMetadata: { contentType },
    customMetadata: { md5 },
  });
  try {
    const parts: { partNumber: number; etag: string }[] = [];
    for (let at = 0, n = 1; at < bytes; at += partBytes, n++) {
      const part = await upload.uploadPart(n, blob.slice(at, Math.min(bytes, at + partBytes)));
      parts.push({ partNumber: part.partNumber, etag: part.etag });
    }
    await upload.complete(parts);
    return parts.length;
  } catch (e) {
    await upload.abort().catch(() => {});
    throw e;
  }
}

/**
 * Uploads every model file of `dir` to `bucket` under `models/<modelId>/`. A file whose object
 * already has the same size and MD5 (R2's `checksums.md5`, or the single-part ETag) is skipped.
 */
export async function seedModelDir(
  bucket: SeedBucket,
  dir: string,
  modelId: string,
  opts: SeedOptions = {},
): Promise<SeedReport> {
  const started = performance.now();
  const log = opts.log ?? (() => {});
  const prefix = modelKeyPrefix(modelId);
  const { files, ignored } = listModelFiles(dir, opts.skip);
  const report: SeedReport = { modelId, prefix, files: [], uploadedBytes: 0, skippedBytes: 0, ignored, ms: 0 };
  for (const file of files) {
    const path = join(dir, file);
    const key = prefix + file;
    const bytes = statSync(path).size;
    const md5 = await md5File(path);
    const existing = await bucket.head(key);
    const existingMd5 =
      existing?.customMetadata?.md5 ?? (existing?.checksums?.md5 ? hex(existing.checksums.md5) : existing?.etag);
    if (existing && existing.size === bytes && existingMd5 === md5) {
      report.files.push({ file, key, bytes, md5, action: "skipped" });
      report.skippedBytes += bytes;
      log(`  = ${key} (${bytes} B, unchanged)`);
      continue;
    }
    const t = performance.now();
    let how = "";
    if (bytes > (opts.maxPutBytes ?? MAX_PUT_BYTES)) {
      const n = await putMultipart(bucket, key, path, bytes, md5, opts.partBytes ?? PART_BYTES, contentTypeFor(file));
      how = `, ${n} parts`;
    } else {
      // A Blob streams from disk; R2 checks the MD5 we send and refuses a corrupted upload.
      await bucket.put(key, await openAsBlob(path), { md5, httpMetadata: { contentType: contentTypeFor(file) } });
    }
    report.files.push({ file, key, bytes, md5, action: "uploaded" });
    report.uploadedBytes += bytes;
    log(`  ↑ ${key} (${bytes} B${how}, ${((performance.now() - t) / 1000).toFixed(1)} s)`);
  }
  const etags: Record<string, string> = {};
  for (const f of report.files) {
    const h = await bucket.head(f.key);
    if (!h) throw new Error(`${f.key} is missing right after its upload; re-run the seed`);
    etags[f.file] = h.etag;
  }
  // Last: readers that find it read exactly these files (a reader that opened the model before
  // sees its pinned reads refused and reopens it whole).
  await bucket.put(prefix + UPLOAD_MANIFEST, new TextEncoder().encode(uploadManifestJson(etags)), {
    httpMetadata: { contentType: "application/json" },
  });
  log(`  ↑ ${prefix}${UPLOAD_MANIFEST} (the upload's ${report.files.length} etags)`);
  report.ms = performance.now() - started;
  return report;
}

/** `upload.json` for files with these etags (R2's etag, without quotes). */
export function uploadManifestJson(etags: Record<string, string>): string {
  const m: UploadManifest = { format: UPLOAD_MANIFEST_FORMAT, files: etags };
  return `${JSON.stringify(m, null, 2)}\n`;
}
