/**
 * @module Worker-level admission control for the generation routes: at most MAX_INFLIGHT_REQUESTS
 * generations run in one isolate at a time; up to MAX_QUEUED_REQUESTS more wait in a FIFO queue,
 * each for at most ADMISSION_QUEUE_TIMEOUT_MS. Past the queue a request is refused with 429
 * `too_many_concurrent_requests`, and one whose wait runs out with 503 `queue_timeout`, both with
 * `Retry-After` and an OpenAI-style body. Everything here happens before the response starts:
 * the slot is taken before the handler runs, and a stream's headers wait for its first token
 * (`firstEventBeforeHeaders`), so what can still be refused never becomes a 200 carrying an
 * in-band server error. A slot is held until the response body ends (or the client goes away).
 * Isolates share no memory, so the cap is per isolate; the current values go to /metrics as the
 * `edge_moe_worker_inflight_requests` / `_queued_requests` gauges (`observability/isolate-loads.ts`).
 */
import type { Context, MiddlewareHandler } from "hono";
import { ApiError } from "../errors";
import { intVar } from "../platform/env";
import { flushIfLoadDue, setWorkerLoad } from "../observability/recorder";

export interface AdmissionConfig {
  maxInflight: number;
  maxQueued: number;
  queueTimeoutMs: number;
}

export function readAdmission(env: object): AdmissionConfig {
  return {
    maxInflight: intVar(env, "MAX_INFLIGHT_REQUESTS", 32, { min: 1 }),
    maxQueued: intVar(env, "MAX_QUEUED_REQUESTS", 128, { min: 0 }),
    queueTimeoutMs: intVar(env, "ADMISSION_QUEUE_TIMEOUT_MS", 20_000, { min: 1 }),
  };
}

/** Gives a slot back; calling it again does nothing. */
export type Release = () => void;

interface Waiter {
  grant(): void;
  fail(err: unknown): void;
}

/** Weight of the newest hold time in the running mean behind Retry-After. */
const HOLD_EMA_ALPHA = 0.2;
/** Longest Retry-After this gate suggests, whatever the estimate. */
const MAX_RETRY_AFTER_S = 60;

/** A counting semaphore with a bounded FIFO queue whose waiters have a deadline. */
export class AdmissionGate {
  #inflight = 0;
  #queue: Waiter[] = [];
  /** Running mean of how long a request holds its slot (ms): the base of the Retry-After estimate. */
  #holdMs = 1000;

  constructor(
    public config: AdmissionConfig,
    private readonly onChange: (inflight: number, queued: number) => void = () => {},
  ) {}

  get inflight(): number {
    return this.#inflight;
  }

  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Resolves with the slot's release once one is free; throws an ApiError (429 queue full, 503
   * wait over) with Retry-After, or the signal's reason when the client leaves while waiting.
   */
  async acquire(signal?: AbortSignal): Promise<Release> {
    if (this.#inflight < this.config.maxInflight && this.#queue.length === 0) return this.#take();
    if (this.#queue.length >= this.config.maxQueued) {
      throw new ApiError(
        429,
        `this server is running ${this.#inflight} generations with ${this.#queue.length} waiting ` +
          `(MAX_INFLIGHT_REQUESTS ${this.config.maxInflight}, MAX_QUEUED_REQUESTS ${this.config.maxQueued}); ` +
          "retry later",
        "rate_limit_error",
        null,
        "too_many_concurrent_requests",
        ApiError.retryIn(this.retryAfterSeconds()),
      );
    }
    signal?.throwIfAborted();
    return await new Promise<Release>((resolve, reject) => {
      const leave = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        const i = this.#queue.indexOf(waiter);
        if (i >= 0) this.#queue.splice(i, 1);
        this.#changed();
      };
      const waiter: Waiter = {
        grant: () => {
          leave();
          resolve(this.#take());
        },
        fail: (err) => {
          leave();
          reject(err);
        },
      };
      const onAbort = () => waiter.fail(signal?.reason);
      const timer = setTimeout(
        () =>
          waiter.fail(
            new ApiError(
              503,
              `waited ${this.config.queueTimeoutMs} ms for a generation slot (ADMISSION_QUEUE_TIMEOUT_MS); retry later`,
              "service_unavailable",
              null,
              "queue_timeout",
              ApiError.retryIn(this.retryAfterSeconds()),
            ),
          ),
        this.config.queueTimeoutMs,
      );
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(waiter);
      this.#changed();
    });
  }

  /** Seconds until a slot is likely free for one more request: mean hold × queue ahead ÷ slots. */
  retryAfterSeconds(): number {
    const ahead = this.#queue.length + 1;
    const s = (this.#holdMs * ahead) / this.config.maxInflight / 1000;
    return Math.min(MAX_RETRY_AFTER_S, Math.max(1, Math.ceil(s)));
  }

  #take(): Release {
    this.#inflight++;
    this.#changed();
    const t0 = Date.now();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#inflight--;
      this.#holdMs += HOLD_EMA_ALPHA * (Date.now() - t0 - this.#holdMs);
      // A slot freed while others wait goes to the oldest waiter (no barging by new arrivals).
      if (this.#queue.length > 0 && this.#inflight < this.config.maxInflight) this.#queue[0].grant();
      else this.#changed();
    };
  }

  #changed(): void {
    this.onChange(this.#inflight, this.#queue.length);
  }
}

/** One gate per isolate (module state): the isolate's share of the deployment's generations. */
let gate: AdmissionGate | null = null;

function gateFor(env: Env): AdmissionGate {
  const config = readAdmission(env);
  gate ??= new AdmissionGate(config, setWorkerLoad);
  gate.config = config; // the same in every request of an isolate; read each time so a bad value is loud
  return gate;
}

type AnyContext = Context<{ Bindings: Env }>;

function waitUntilOf(c: AnyContext): ((p: Promise<unknown>) => void) | undefined {
  try {
    const ctx = c.executionCtx;
    return (p) => ctx.waitUntil(p);
  } catch {
    return undefined;
  }
}

/**
 * The middleware on POST /v1/completions and /v1/chat/completions, after auth, rate limit and body
 * guards. A JSON answer releases its slot when the handler returns; a stream's slot is released
 * when its body ends or is cancelled by the client.
 */
export function admission(): MiddlewareHandler<{ Bindings: Env }> {
  return async (c, next) => {
    if (c.req.method !== "POST") return next();
    const release = await gateFor(c.env).acquire(c.req.raw.signal);
    flushIfLoadDue(c.env, waitUntilOf(c));
    let handedToBody = false;
    try {
      await next();
      const body = c.res.body;
      if (body && (c.res.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
        c.res = new Response(releasingAtEnd(body, release), c.res);
        handedToBody = true;
      }
    } finally {
      if (!handedToBody) release();
      flushIfLoadDue(c.env, waitUntilOf(c));
    }
  };
}

/** The same bytes; `release` runs when the stream ends, fails or the reader cancels it. */
function releasingAtEnd(body: ReadableStream<Uint8Array>, release: Release): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await reader.read();
        if (done) {
          release();
          controller.close();
        } else controller.enqueue(value);
      } catch (err) {
        release();
        controller.error(err);
      }
    },
    async cancel(reason) {
      release();
      await reader.cancel(reason);
    },
  });
}

/**
 * Runs a generation to its first event (the prefill and first token: expert loads, RPCs, KV) before
 * the caller starts a 200 stream, so a failure there is an error response (429/503 with
 * Retry-After where the error carries one) rather than an in-band error in a 200. Returns a
 * generator yielding that event and then the rest; ending it early ends the original.
 */
export async function firstEventBeforeHeaders<T>(gen: AsyncGenerator<T>): Promise<AsyncGenerator<T>> {
  const first = await gen.next();
  return (async function* () {
    try {
      if (first.done) return;
      yield first.value;
      yield* gen;
    } finally {
      await gen.return(undefined);
    }
  })();
}
