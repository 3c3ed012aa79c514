/**
 * @module Uploads a model directory to the `MODELS` R2 bucket under `models/<id>/`.
 *
 *   tsx scripts/seed.ts [DIR] [--model ID] [--remote] [--dry-run] [--part-mb N] [--tokenizer FAMILY]
 *
 * Local (default): writes through `getPlatformProxy` into `.wrangler/state`, the store
 * `wrangler dev` reads; unchanged files (same size and MD5) are skipped, so re-running is cheap.
 * `--remote` with S3 credentials in the environment (scripts/lib/s3-upload.ts): R2's S3 API,
 * multipart for large files, unchanged files (size + SHA-256 in metadata) skipped, byte progress.
 * `--remote` without them: `wrangler r2 object put … --remote` per file (needs `wrangler login`;
 * at most 300 MiB a file); `--dry-run` prints those commands without running them.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, dirname, join, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { progressBar } from "./lib/progress.ts";
import {
  DEFAULT_PART_BYTES,
  S3_ENV_HELP,
  s3Client,
  s3TargetFromEnv,
  uploadFiles,
  writeUploadManifest,
  type S3Target,
} from "./lib/s3-upload.ts";
import {
  contentTypeFor,
  listModelFiles,
  modelKeyPrefix,
  seedModelDir,
  UPLOAD_MANIFEST,
  validateModelId,
} from "./lib/seed-lib.ts";
import { TOKENIZER_FAMILIES, attachTokenizer, type TokenizerFamily } from "./lib/tokenizer-files.ts";

const CONFIG_PATH = "wrangler.toml";
const BINDING = "MODELS";
/** `wrangler r2 object put` uploads in one request, which R2 caps at 300 MiB. */
const WRANGLER_PUT_LIMIT = 300 * 1024 * 1024;
/** The directory `make-demo-model.ts` writes, and the id the Worker serves by default. */
const DEMO_DIR = "demo-model";
const DEMO_MODEL_ID = "demo-mixtral";

const USAGE = `usage: tsx scripts/seed.ts [DIR] [--model ID] [--remote] [--dry-run] [--part-mb N] [--tokenizer FAMILY]
  DIR          model directory (default ${DEMO_DIR}/)
  --model      model id, the R2 key prefix models/<ID>/ (default: the directory's name; ${DEMO_DIR}/ → ${DEMO_MODEL_ID})
  --remote     upload to the real bucket. With S3 credentials in the environment — ${S3_ENV_HELP} —
               through R2's S3 API: multipart for large files, unchanged files (size + SHA-256) skipped,
               a re-run after an interruption sends only what is missing. Without them:
               \`wrangler r2 object put … --remote\` per file (at most 300 MiB a file)
  --dry-run    with --remote and no S3 credentials: print the wrangler commands only
  --part-mb N  multipart part size in MiB (default ${DEFAULT_PART_BYTES >> 20}, at least 5)
  --tokenizer  copy a family's real tokenizer files into DIR first, keeping any it has
               (${TOKENIZER_FAMILIES.join(", ")})`;

function mib(n: number): string {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

/** The bucket_name bound as MODELS in wrangler.toml. */
async function bucketName(): Promise<string> {
  const { unstable_readConfig } = await import("wrangler");
  const config = unstable_readConfig({ config: CONFIG_PATH }, { hideWarnings: true });
  const bucket = (config.r2_buckets as { binding: string; bucket_name?: string }[]).find((b) => b.binding === BINDING);
  if (!bucket?.bucket_name)
    throw new Error(`${CONFIG_PATH} has no [[r2_buckets]] entry with binding = "${BINDING}" and a bucket_name`);
  return bucket.bucket_name;
}

/** A wrangler config holding only wrangler.toml's R2 bucket binding (in .wrangler/, gitignored). */
function r2OnlyConfig(): string {
  const toml = readFileSync(CONFIG_PATH, "utf8");
  const bucket = toml.match(/\[\[r2_buckets\]\][^[]*?bucket_name\s*=\s*"([^"]+)"/)?.[1];
  const date = toml.match(/^compatibility_date\s*=\s*"([^"]+)"/m)?.[1];
  if (!bucket || !date) throw new Error(`${CONFIG_PATH}: could not find the R2 bucket binding or compatibility_date`);
  mkdirSync(".wrangler", { recursive: true });
  const path = resolve(".wrangler/seed.wrangler.json");
  writeFileSync(
    path,
    JSON.stringify(
      { name: "edge-moe-seed", compatibility_date: date, r2_buckets: [{ binding: BINDING, bucket_name: bucket }] },
      null,
      2,
    ),
  );
  return path;
}

async function seedLocal(dir: string, modelId: string): Promise<void> {
  const { getPlatformProxy } = await import("wrangler");
  console.log(`seeding ${dir.replace(/\/$/, "")}/ → ${BINDING} (local, .wrangler/state) as ${modelKeyPrefix(modelId)}`);
  // getPlatformProxy cannot host this Worker's own Durable Objects and warns about them at length;
  // seeding only needs the R2 binding, so it gets a config with just that binding, persisting to
  // the same .wrangler/state that `wrangler dev` reads.
  // Large models (GBs through the local proxy) have seen the proxy drop its connection mid-run
  // ("fetch failed"); a fresh proxy picks up where it stopped, since finished files are skipped.
  const ATTEMPTS = 3;
  for (let attempt = 1; ; attempt++) {
    const proxy = await getPlatformProxy<{ MODELS: R2Bucket }>({
      configPath: r2OnlyConfig(),
      persist: { path: resolve(".wrangler/state/v3") },
      remoteBindings: false,
    });
    try {
      const r = await seedModelDir(proxy.env.MODELS, dir, modelId, { log: (l) => console.log(l) });
      const uploaded = r.files.filter((f) => f.action === "uploaded").length;
      console.log(
        `done in ${(r.ms / 1000).toFixed(1)} s: ${uploaded} uploaded (${mib(r.uploadedBytes)}), ` +
          `${r.files.length - uploaded} unchanged (${mib(r.skippedBytes)})` +
          (r.ignored.length > 0 ? `; not model files, left out: ${r.ignored.join(", ")}` : ""),
      );
      return;
    } catch (e) {
      if (attempt >= ATTEMPTS || !/fetch failed|ECONNRESET|EPIPE|socket/i.test(String(e))) throw e;
      console.log(`  (the local proxy dropped the connection: ${String(e)}; resuming, attempt ${attempt + 1})`);
    } finally {
      await proxy.dispose().catch(() => {});
    }
  }
}

function seedRemote(dir: string, modelId: string, bucket: string, dryRun: boolean): void {
  const { files, ignored } = listModelFiles(dir);
  const tooBig = files.filter((f) => statSync(join(dir, f)).size > WRANGLER_PUT_LIMIT);
  if (tooBig.length > 0) {
    throw new Error(
      `\`wrangler r2 object put\` uploads at most 300 MiB per object; too big: ` +
        tooBig.map((f) => `${f} (${mib(statSync(join(dir, f)).size)})`).join(", ") +
        `. Set S3 credentials (${S3_ENV_HELP}) and re-run: seed then uploads through R2's S3 API, multipart.`,
    );
  }
  const wranglerBin = join(
    dirname(createRequire(import.meta.url).resolve("wrangler/package.json")),
    "bin",
    "wrangler.js",
  );
  console.log(
    `${dryRun ? "would upload" : "uploading"} ${files.length} files to ${bucket}/${modelKeyPrefix(modelId)} (remote)`,
  );
  // This path cannot read back the etags, so it writes no upload manifest, and an older one
  // (from an S3 seed) must go first: readers then pin each file to the etag one listing shows.
  const manifest = ["r2", "object", "delete", `${bucket}/${modelKeyPrefix(modelId)}${UPLOAD_MANIFEST}`, "--remote"];
  console.log(`  npx wrangler ${manifest.join(" ")}`);
  if (!dryRun) {
    const r = spawnSync(process.execPath, [wranglerBin, ...manifest], { stdio: "inherit" });
    if (r.status !== 0) throw new Error(`wrangler r2 object delete failed (exit ${r.status ?? r.signal})`);
  }
  for (const file of files) {
    const path = relative(".", join(dir, file));
    const args = [
      "r2",
      "object",
      "put",
      `${bucket}/${modelKeyPrefix(modelId)}${file}`,
      "--file",
      path,
      "--content-type",
      contentTypeFor(file),
      "--remote",
    ];
    console.log(`  npx wrangler ${args.map((a) => (/[\s;"']/.test(a) ? JSON.stringify(a) : a)).join(" ")}`);
    if (dryRun) continue;
    const r = spawnSync(process.execPath, [wranglerBin, ...args], { stdio: "inherit" });
    if (r.status !== 0)
      throw new Error(
        `wrangler r2 object put failed for ${file} (exit ${r.status ?? r.signal}); ` +
          "fix the cause above and re-run (files already uploaded are simply uploaded again)",
      );
  }
  if (ignored.length > 0) console.log(`not model files, left out: ${ignored.join(", ")}`);
}

async function seedS3(
  dir: string,
  modelId: string,
  bucket: string,
  target: S3Target,
  partBytes: number,
): Promise<void> {
  const { files, ignored } = listModelFiles(dir);
  const prefix = modelKeyPrefix(modelId);
  console.log(`uploading ${files.length} files to ${bucket}/${prefix} through ${target.endpoint} (S3 API)`);
  const t0 = performance.now();
  let bar: ReturnType<typeof progressBar> | null = null;
  const client = s3Client(target);
  const r = await uploadFiles(client, bucket, dir, prefix, files, {
    partBytes,
    contentType: contentTypeFor,
    log: (l) => console.log(l),
    onProgress: (done, total) => {
      bar ??= progressBar("MiB", Math.max(1, Math.ceil(total / 2 ** 20)));
      bar.update(Math.floor(done / 2 ** 20));
    },
  });
  (bar as ReturnType<typeof progressBar> | null)?.stop();
  await writeUploadManifest(client, bucket, prefix, files);
  const up = r.filter((f) => f.action === "uploaded");
  console.log(
    `done in ${((performance.now() - t0) / 1000).toFixed(1)} s: ` +
      `${up.length} uploaded (${mib(up.reduce((s, f) => s + f.bytes, 0))}), ${r.length - up.length} unchanged` +
      (ignored.length > 0 ? `; not model files, left out: ${ignored.join(", ")}` : ""),
  );
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      model: { type: "string" },
      remote: { type: "boolean", default: false },
      "dry-run": { type: "boolean", default: false },
      "part-mb": { type: "string" },
      tokenizer: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length > 1)
    throw new Error(
      `expected at most one model directory, got ${positionals.length}: ${positionals.join(" ")}\n${USAGE}`,
    );
  if (values["dry-run"] && !values.remote)
    throw new Error("--dry-run only applies to --remote (local seeding skips unchanged files anyway)");
  const dir = positionals[0] ?? DEMO_DIR;
  const name = basename(resolve(dir));
  const modelId = validateModelId(values.model ?? (name === DEMO_DIR ? DEMO_MODEL_ID : name));
  try {
    statSync(dir);
  } catch {
    throw new Error(
      `${positionals[0] ?? DEMO_DIR} does not exist` +
        (positionals[0] ? "" : "; run `tsx scripts/make-demo-model.ts` first"),
    );
  }
  if (values.tokenizer !== undefined) {
    if (!TOKENIZER_FAMILIES.includes(values.tokenizer as TokenizerFamily)) {
      const known = TOKENIZER_FAMILIES.join(", ");
      throw new Error(`--tokenizer must be one of ${known}, got ${JSON.stringify(values.tokenizer)}`);
    }
    const written = attachTokenizer(dir, values.tokenizer as TokenizerFamily);
    console.log(
      written.length > 0
        ? `added ${values.tokenizer} tokenizer files: ${written.join(", ")}`
        : `${dir} already has its tokenizer files; kept them`,
    );
  }
  const partMb = values["part-mb"] === undefined ? DEFAULT_PART_BYTES / 2 ** 20 : Number(values["part-mb"]);
  if (!(partMb >= 5)) throw new Error(`--part-mb must be ≥ 5 (S3's smallest part), got ${values["part-mb"]}`);
  const target = values.remote ? s3TargetFromEnv() : null;
  if (target && values["dry-run"]) {
    throw new Error("--dry-run prints wrangler commands; unset the S3 credentials to use it");
  }
  if (target) await seedS3(dir, modelId, await bucketName(), target, partMb * 2 ** 20);
  else if (values.remote) seedRemote(dir, modelId, await bucketName(), values["dry-run"]);
  else await seedLocal(dir, modelId);
}

main().catch((e: unknown) => {
  console.error(`seed: ${e instanceof Error ? e.message : String(e)}`);
  process.exitCode = 1;
});
