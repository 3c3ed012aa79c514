/**
 * @module Upload through the S3 API against a local S3-compatible server (s3rver, started here):
 * a file larger than one part goes up as a multipart upload, a re-run uploads nothing, and a
 * one-byte change re-uploads that file only. Also the credentials and part-size rules.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GetObjectCommand, HeadObjectCommand } from "@aws-sdk/client-s3";
import S3rver from "s3rver";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MIN_PART_BYTES, partSizeFor, s3Client, s3TargetFromEnv, uploadFiles } from "../../../scripts/lib/s3-upload";

const BUCKET = "edge-moe-test";
const root = mkdtempSync(join(tmpdir(), "edge-moe-s3-"));
const modelDir = join(root, "model");
let server: S3rver;
let endpoint = "";

beforeAll(async () => {
  server = new S3rver({
    port: 0,
    address: "127.0.0.1",
    silent: true,
    directory: join(root, "store"),
    configureBuckets: [{ name: BUCKET }],
  });
  const addr = await server.run();
  endpoint = `http://127.0.0.1:${addr.port}`;
});
afterAll(async () => {
  await server?.close();
  rmSync(root, { recursive: true, force: true });
});

describe("uploadFiles (S3 multipart, idempotent)", () => {
  it("uploads multipart, skips unchanged files, re-uploads only a changed one", async () => {
    const { mkdirSync } = await import("node:fs");
    mkdirSync(modelDir);
    const big = new Uint8Array(MIN_PART_BYTES + (1 << 20) + 123).map((_, i) => (i * 2654435761) >>> 24);
    writeFileSync(join(modelDir, "model.safetensors"), big);
    writeFileSync(join(modelDir, "config.json"), '{"model_type":"mixtral"}');
    const client = s3Client({ endpoint, accessKeyId: "S3RVER", secretAccessKey: "S3RVER", region: "auto" });
    const commands: string[] = [];
    client.middlewareStack.add(
      (next, ctx) => async (args) => {
        commands.push(String(ctx.commandName));
        return next(args);
      },
      { step: "initialize" },
    );
    const files = ["model.safetensors", "config.json"];
    const progress: number[] = [];
    const run = () =>
      uploadFiles(client, BUCKET, modelDir, "models/t/", files, {
        partBytes: MIN_PART_BYTES,
        onProgress: (d) => progress.push(d),
      });

    const first = await run();
    expect(first.map((f) => [f.file, f.action, f.parts])).toEqual([
      ["model.safetensors", "uploaded", 2],
      ["config.json", "uploaded", 1],
    ]);
    expect(progress.at(-1)).toBe(big.length + 24);
    expect(progress.some((p) => p > 0 && p < big.length)).toBe(true); // byte-level, not per file
    const sent = commands.filter((c) => c !== "HeadObjectCommand");
    expect(sent).toEqual([
      "CreateMultipartUploadCommand",
      "UploadPartCommand",
      "UploadPartCommand",
      "CompleteMultipartUploadCommand",
      "PutObjectCommand",
    ]);
    const head = await client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: "models/t/model.safetensors" }));
    expect(head.Metadata?.sha256).toBe(first[0].sha256);
    const body = await (
      await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: "models/t/model.safetensors" }))
    ).Body?.transformToByteArray();
    expect(body && Buffer.compare(Buffer.from(body), Buffer.from(big))).toBe(0);

    commands.length = 0;
    expect((await run()).map((f) => f.action)).toEqual(["skipped", "skipped"]);
    expect(commands).toEqual(["HeadObjectCommand", "HeadObjectCommand"]); // nothing uploaded

    big[big.length - 7] ^= 1;
    writeFileSync(join(modelDir, "model.safetensors"), big);
    const third = await run();
    expect(third.map((f) => [f.file, f.action])).toEqual([
      ["model.safetensors", "uploaded"],
      ["config.json", "skipped"],
    ]);
    const again = await (
      await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: "models/t/model.safetensors" }))
    ).Body?.transformToByteArray();
    expect(again && Buffer.compare(Buffer.from(again), readFileSync(join(modelDir, "model.safetensors")))).toBe(0);
  }, 60_000);

  it("reads credentials from R2_* or AWS_* and refuses half of them", () => {
    expect(s3TargetFromEnv({})).toBeNull();
    expect(s3TargetFromEnv({ R2_ACCESS_KEY_ID: "a", R2_SECRET_ACCESS_KEY: "b", R2_ACCOUNT_ID: "acc" })).toEqual({
      endpoint: "https://acc.r2.cloudflarestorage.com",
      accessKeyId: "a",
      secretAccessKey: "b",
      region: "auto",
    });
    expect(
      s3TargetFromEnv({ AWS_ACCESS_KEY_ID: "a", AWS_SECRET_ACCESS_KEY: "b", AWS_ENDPOINT_URL: "http://x" })?.endpoint,
    ).toBe("http://x");
    expect(() => s3TargetFromEnv({ R2_ACCESS_KEY_ID: "a" })).toThrow(/both keys/);
    expect(() => s3TargetFromEnv({ R2_ACCESS_KEY_ID: "a", R2_SECRET_ACCESS_KEY: "b" })).toThrow(/R2_ACCOUNT_ID/);
  });

  it("keeps parts within S3's limits", () => {
    expect(partSizeFor(1)).toBe(64 << 20);
    expect(partSizeFor(1, 1)).toBe(MIN_PART_BYTES);
    expect(partSizeFor(1e12)).toBe(Math.ceil(1e12 / 10_000));
  });
});
