/**
 * @module Where a request's tokens come from: the prefill + sample + forward loop, run by whoever
 * holds the loop — the Worker (a model it runs itself) or a session driver in the model's region
 * (pipeline stages: the loop runs next to the stages and streams token ids back, so a token costs
 * no Worker↔region round trip; scripts/simulate-pipeline.ts measured the choice). One loop, two
 * places; the Worker turns the ids into text, stop strings and SSE either way.
 */
import type { ModelRuntime, RuntimeSession } from "./model-runtime";
import { createRng, sampleToken, type SamplingParams } from "./sampling";
import type { StageFailure } from "./stage-protocol";

/** What the loop needs to produce tokens (text handling stays with the Worker). */
export interface DecodeRequest {
  model: string;
  /** The Worker's upload of the model: the driver runs the loop only on that upload. */
  version?: string;
  /** Session id already opened on every stage (admission done by the Worker). */
  session: string;
  promptIds: number[];
  maxTokens: number;
  sampling: SamplingParams;
  seed: number;
}

/**
 * Samples up to maxTokens ids, stopping after an EOS id. The forward pass for the next token runs
 * only when the consumer asks for it, so a consumer that stops (stop string, abort) costs nothing more.
 */
export async function* sampledTokens(
  env: Env,
  rt: ModelRuntime,
  session: RuntimeSession,
  req: Pick<DecodeRequest, "promptIds" | "maxTokens" | "sampling" | "seed">,
  signal?: AbortSignal,
): AsyncGenerator<number> {
  const rng = createRng(req.seed);
  const eos = new Set(rt.spec.eosTokenIds);
  if (rt.stepsBatched(env)) {
    // Continuous batching: the same tokens, from decode steps shared with the isolate's others.
    const spec = { promptIds: req.promptIds, maxTokens: req.maxTokens, sampling: req.sampling, rng, eos };
    yield* rt.stepTokens(env, session, spec, signal);
    return;
  }
  let logits = await rt.forward(env, session, req.promptIds, rng, { signal });
  for (let produced = 1; ; produced++) {
    const id = sampleToken(logits, req.sampling, rng);
    // No forward pass follows the last token: other requests need not wait for this one.
    if (eos.has(id) || produced >= req.maxTokens) session.leaveBatch();
    yield id;
    if (eos.has(id) || produced >= req.maxTokens) return;
    logits = await rt.forward(env, session, [id], rng, { signal });
  }
}

/** Token ids as they cross the RPC: little-endian int32, one per token. */
export function encodeToken(id: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, id, true);
  return b;
}

/** In place of a token id: the loop failed; a length-prefixed UTF-8 JSON StageFailure follows. */
const FAILED = -1;

/**
 * The end of a stream whose loop failed: FAILED, the byte length, the failure as JSON. The driver
 * writes it and closes the stream normally — an aborted RPC stream reaches the reader only as
 * "ReadableStream received over RPC disconnected prematurely", without its reason, so the failure
 * travels in band.
 */
export function encodeFailure(f: StageFailure): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(f));
  const b = new Uint8Array(8 + json.length);
  const view = new DataView(b.buffer);
  view.setInt32(0, FAILED, true);
  view.setInt32(4, json.length, true);
  b.set(json, 8);
  return b;
}

/**
 * Reads the ids of a driver's stream; chunk boundaries may split an id or a failure record. A
 * failure record throws `fail(failure)`. When `signal` aborts, the stream is cancelled at once (the
 * driver stops between two tokens) and the read rejects.
 */
export async function* decodeTokenStream(
  stream: ReadableStream<Uint8Array>,
  fail: (f: StageFailure) => Error,
  signal?: AbortSignal,
): AsyncGenerator<number> {
  const reader = stream.getReader();
  const onAbort = () => reader.cancel(signal?.reason).catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  let pending = new Uint8Array(0);
  try {
    signal?.throwIfAborted();
    for (;;) {
      const { done, value } = await reader.read();
      signal?.throwIfAborted();
      if (done) {
        if (pending.length > 0)
          throw new Error(`session driver stream ended inside a record (${pending.length} bytes)`);
        return;
      }
      const buf = new Uint8Array(pending.length + value.length);
      buf.set(pending);
      buf.set(value, pending.length);
      const view = new DataView(buf.buffer);
      let at = 0;
      for (; at + 4 <= buf.length; at += 4) {
        const id = view.getInt32(at, true);
        if (id !== FAILED) {
          yield id;
          continue;
        }
        if (at + 8 > buf.length) break; // the length has not arrived yet
        const len = view.getInt32(at + 4, true);
        if (at + 8 + len > buf.length) break; // nor the whole record
        throw fail(JSON.parse(new TextDecoder().decode(buf.subarray(at + 8, at + 8 + len))) as StageFailure);
      }
      pending = buf.slice(at);
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    // The consumer stopped early (stop string, abort): tell the driver to stop generating.
    await reader.cancel().catch(() => {});
  }
}
