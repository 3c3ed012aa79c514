/**
 * @module Uploads a model directory to R2 through its S3-compatible API (`wrangler r2 object put`
 * stops at 300 MiB; HF shards are 4–5 GB). Files of more than one part go up as multipart uploads
 * (`@aws-sdk/lib-storage` Upload: parts sent concurrently, the upload aborted on failure), smaller
 * ones in one PUT. Idempotent and resumable at file level: each object carries its file's SHA-256 in
 * metadata (`x-amz-meta-sha256`); a HEAD before each upload skips files whose object has the same
 * size and hash, so a re-run after an interruption uploads only what is missing or changed.
 *
 * Credentials come from the environment: R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY (or
 * AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), and the endpoint from R2_ACCOUNT_ID
 * (https://<id>.r2.cloudflarestorage.com) or R2_ENDPOINT / AWS_ENDPOINT_URL.
 */
import { createHash } from "node:crypto";
import { createReadStream, statSync } from "node:fs";
import { join } from "node:path";
import { HeadObjectCommand, PutObjectCommand, S3Client, S3ServiceException } from "@aws-sdk/client-s3";
import { UPLOAD_MANIFEST, uploadManifestJson } from "./seed-lib.ts";
import { Upload } from "@aws-sdk/lib-storage";

/** S3 multipart limits: parts of 5 MiB–5 GiB, at most 10,000 of them. */
export const MIN_PART_BYTES = 5 << 20;
export const MAX_PARTS = 10_000;
/** Default part size: a 5 GB shard in ~75 parts, 4 in flight ≈ 256 MiB of buffers. */
export const DEFAULT_PART_BYTES = 64 << 20;

export interface S3Target {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

/** Names of the variables read, for messages and --help. */
export const S3_ENV_HELP =
  "R2_ACCESS_KEY_ID + R2_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY), and R2_ACCOUNT_ID " +
  "(or R2_ENDPOINT / AWS_ENDPOINT_URL for another S3-compatible endpoint)";

/** The S3 target from the environment, or null when no credentials are set. Throws when half-set. */
export function s3TargetFromEnv(env: Record<string, string | undefined> = process.env): S3Target | null {
  const accessKeyId = env.R2_ACCESS_KEY_ID ?? env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = env.R2_SECRET_ACCESS_KEY ?? env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId && !secretAccessKey) return null;
  if (!accessKeyId || !secretAccessKey) throw new Error(`incomplete S3 credentials: set both keys (${S3_ENV_HELP})`);
  const endpoint =
    env.R2_ENDPOINT ??
    env.AWS_ENDPOINT_URL ??
    (env.R2_ACCOUNT_ID ? `https://${env.R2_ACCOUNT_ID}.r2.cloudflarestorage.com` : undefined);
  if (!endpoint) throw new Error(`no S3 endpoint: set R2_ACCOUNT_ID (or R2_ENDPOINT / AWS_ENDPOINT_URL)`);
  return { endpoint, accessKeyId, secretAccessKey, region: env.AWS_REGION ?? "auto" };
}

export function s3Client(t: S3Target): S3Client {
  return new S3Client({
    endpoint: t.endpoint,
    region: t.region,
    credentials: { accessKeyId: t.accessKeyId, secretAccessKey: t.secretAccessKey },
    forcePathStyle: true,
    // R2 (and local stand-ins) take plain payloads; the SDK's default trailing CRC32 chunks are not needed.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** A part size ≥ 5 MiB that keeps the file within 10,000 parts. */
export function partSizeFor(bytes: number, wanted = DEFAULT_PART_BYTES): number {
  return Math.max(MIN_PART_BYTES, wanted, Math.ceil(bytes / MAX_PARTS));
}

export interface UploadedFile {
  file: string;
  key: string;
  bytes: number;
  sha256: string;
  action: "uploaded" | "skipped";
  /** Parts sent (1 = a single PUT). */
  parts: number;
}

export interface UploadOptions {
  partBytes?: number;
  /** Parts in flight per file. */
  queueSize?: number;
  contentType?: (file: string) => string;
  /** Bytes uploaded so far, of the bytes that need uploading (known after the HEADs). */
  onProgress?: (done: number, total: number) => void;
  log?: (line: string) => void;
}

async function headObject(
  client: S3Client,
  bucket: string,
  key: string,
): Promise<{ size: number; sha256: string | undefined } | null> {
  try {
    const h = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return { size: h.ContentLength ?? -1, sha256: h.Metadata?.sha256 };
  } catch (e) {
    if (e instanceof S3ServiceException && (e.$metadata.httpStatusCode === 404 || e.name === "NotFound")) return null;
    throw e;
  }
}

/**
 * Uploads `files` (names in `dir`, in the order given) to `bucket` under `prefix`. Files whose
 * object already has the same size and SHA-256 metadata are skipped.
 */
export async function uploadFiles(
  client: S3Client,
  bucket: string,
  dir: string,
  prefix: string,
  files: string[],
  opts: UploadOptions = {},
): Promise<UploadedFile[]> {
  const log = opts.log ?? (() => {});
  const todo: { file: string; key: string; bytes: number; sha256: string }[] = [];
  const out: UploadedFile[] = [];
  for (const file of files) {
    const path = join(dir, file);
    const bytes = statSync(path).size;
    const sha256 = await sha256File(path);
    const key = prefix + file;
    const existing = await headObject(client, bucket, key);
    if (existing && existing.size === bytes && existing.sha256 === sha256) {
      out.push({ file, key, bytes, sha256, action: "skipped", parts: 0 });
      log(`  = ${key} (${bytes} B, unchanged)`);
    } else {
      todo.push({ file, key, bytes, sha256 });
    }
  }
  const total = todo.reduce((s, f) => s + f.bytes, 0);
  let before = 0;
  opts.onProgress?.(0, total);
  for (const f of todo) {
    const partSize = partSizeFor(f.bytes, opts.partBytes);
    const upload = new Upload({
      client,
      partSize,
      queueSize: opts.queueSize ?? 4,
      leavePartsOnError: false,
      params: {
        Bucket: bucket,
        Key: f.key,
        Body: createReadStream(join(dir, f.file), { highWaterMark: 1 << 20 }),
        ContentLength: f.bytes,
        ContentType: opts.contentType?.(f.file),
        Metadata: { sha256: f.sha256 },
      },
    });
    const base = before;
    upload.on("httpUploadProgress", (p) => opts.onProgress?.(base + Math.min(p.loaded ?? 0, f.bytes), total));
    const t = performance.now();
    await upload.done();
    before += f.bytes;
    opts.onProgress?.(before, total);
    const parts = f.bytes <= partSize ? 1 : Math.ceil(f.bytes / partSize);
    out.push({ ...f, action: "uploaded", parts });
    log(
      `  ↑ ${f.key} (${f.bytes} B${parts > 1 ? `, ${parts} parts` : ""}, ` +
        `${((performance.now() - t) / 1000).toFixed(1)} s)`,
    );
  }
  const order = new Map(files.map((f, i) => [f, i]));
  return out.sort((a, b) => (order.get(a.file) ?? 0) - (order.get(b.file) ?? 0));
}

/**
 * Writes `<prefix>upload.json` listing each file's ETag as R2 reports it now (quotes dropped, as
 * the Workers binding shows it): the manifest that pins readers to this one upload. Call it after
 * every file is uploaded.
 */
export async function writeUploadManifest(
  client: S3Client,
  bucket: string,
  prefix: string,
  files: string[],
): Promise<void> {
  const etags: Record<string, string> = {};
  for (const file of files) {
    const h = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: prefix + file }));
    if (!h.ETag) throw new Error(`${prefix}${file}: the S3 API answered no ETag; re-run the seed`);
    etags[file] = h.ETag.replace(/^"|"$/g, "");
  }
  await client.send(
    new PutObjectCommand({
      Bucket: bucket,
      Key: prefix + UPLOAD_MANIFEST,
      Body: uploadManifestJson(etags),
      ContentType: "application/json",
    }),
  );
}
