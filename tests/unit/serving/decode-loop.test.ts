/** A session driver's token stream stops at once when the client's signal aborts. */
import { describe, expect, it } from "vitest";
import { decodeTokenStream, encodeToken } from "../../../src/serving/decode-loop";
import type { StageFailure } from "../../../src/serving/stage-protocol";

/** What the runtime passes: a failure record becomes an error (none is sent in these streams). */
const fail = (f: StageFailure) => new Error(`${f.code}: ${f.message}`);

describe("decodeTokenStream", () => {
  it("reads ids split across chunks", async () => {
    const bytes = new Uint8Array([...encodeToken(7), ...encodeToken(70000)]);
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(bytes.subarray(0, 3));
        c.enqueue(bytes.subarray(3));
        c.close();
      },
    });
    const ids: number[] = [];
    for await (const id of decodeTokenStream(stream, fail)) ids.push(id);
    expect(ids).toEqual([7, 70000]);
  });

  it("cancels the driver's stream while a read waits, when the signal aborts", async () => {
    let cancelled: unknown = null;
    // One token, then nothing: the driver is busy computing the next one.
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(encodeToken(5));
      },
      cancel(reason) {
        cancelled = reason ?? "cancelled";
      },
    });
    const ctl = new AbortController();
    const ids: number[] = [];
    const run = (async () => {
      for await (const id of decodeTokenStream(stream, fail, ctl.signal)) ids.push(id);
    })();
    await new Promise((r) => setTimeout(r, 20));
    ctl.abort(new DOMException("gone", "AbortError"));
    await expect(run).rejects.toThrow("gone");
    expect(ids).toEqual([5]);
    expect(cancelled).not.toBeNull();
  });

  it("does not start reading when the signal has already aborted", async () => {
    const ctl = new AbortController();
    ctl.abort(new DOMException("gone", "AbortError"));
    const stream = new ReadableStream<Uint8Array>({ start: (c) => c.enqueue(encodeToken(1)) });
    await expect(decodeTokenStream(stream, fail, ctl.signal).next()).rejects.toThrow("gone");
  });
});
