/**
 * The session driver's token stream (src/serving/decode-loop.ts): int32 ids, and a failure record
 * that ends a stream whose loop failed — read back whatever the chunk boundaries (an id or the
 * record split anywhere), the failure thrown with its code and message.
 */
import { describe, expect, it } from "vitest";
import { decodeTokenStream, encodeFailure, encodeToken } from "../../../src/serving/decode-loop";
import type { StageFailure } from "../../../src/serving/stage-protocol";

class Failed extends Error {
  constructor(readonly f: StageFailure) {
    super(f.message);
  }
}

/** The bytes as a stream cut into pieces of the given sizes (cycled). */
function streamOf(bytes: Uint8Array, sizes: number[]): ReadableStream<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const n = sizes[i % sizes.length];
    chunks.push(bytes.slice(at, at + n));
    at += n;
  }
  return new ReadableStream({
    pull(c) {
      const next = chunks.shift();
      if (next) c.enqueue(next);
      else c.close();
    },
  });
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const IDS = [0, 5, 49154, 2 ** 31 - 1, 17];
const FAILURE: StageFailure = { ok: false, code: "upstream_timeout", message: "StageHost m/s0-12 did not answer — ü" };

describe("session driver stream", () => {
  it.each([[[1]], [[3, 5]], [[4]], [[7, 1, 2]], [[1000]]])("reads ids whatever the chunking (%j)", async (sizes) => {
    const got: number[] = [];
    for await (const id of decodeTokenStream(streamOf(concat(IDS.map(encodeToken)), sizes), (f) => new Failed(f)))
      got.push(id);
    expect(got).toEqual(IDS);
  });

  it.each([[[1]], [[2, 9]], [[4]], [[6]], [[1000]]])(
    "throws the failure record after the ids before it (%j)",
    async (sizes) => {
      const bytes = concat([...IDS.map(encodeToken), encodeFailure(FAILURE)]);
      const got: number[] = [];
      let thrown: unknown = null;
      try {
        for await (const id of decodeTokenStream(streamOf(bytes, sizes), (f) => new Failed(f))) got.push(id);
      } catch (err) {
        thrown = err;
      }
      expect(got).toEqual(IDS);
      expect(thrown).toBeInstanceOf(Failed);
      expect((thrown as Failed).f).toEqual(FAILURE);
    },
  );

  it("a stream cut inside an id is an error, not a short answer", async () => {
    const bytes = concat(IDS.map(encodeToken)).subarray(0, 10);
    const run = async () => {
      for await (const _ of decodeTokenStream(streamOf(bytes, [3]), (f) => new Failed(f))) {
      }
    };
    await expect(run()).rejects.toThrow(/ended inside a record/);
  });
});
