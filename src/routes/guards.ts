/**
 * @module Request guards shared by the sub-apps, run before any handler reads a body: the rate
 * limit (Cloudflare's Rate Limiting binding, per API key or per client IP), `Content-Type:
 * application/json` on POSTs (so a page in a browser cannot drive the API with a "simple" text/plain
 * request), and the body-size cap, enforced on Content-Length and again while the body streams in,
 * so a chunked body cannot slip past it.
 */
import type { MiddlewareHandler } from "hono";
import { ApiError } from "../errors";
import type { AuthVariables } from "./api-keys";
import { rateLimitEnabled, readLimits } from "./limits";

/**
 * The `[[ratelimits]]` binding's period (seconds). The binding does not say when its window ends,
 * so Retry-After is the whole period: a client that waits that long is never refused again for the
 * same burst. The deploy-config test keeps this equal to wrangler.toml's `simple.period`.
 */
export const RATE_LIMIT_PERIOD_S = 60;

export function rateLimit(): MiddlewareHandler<{ Bindings: Env; Variables: AuthVariables }> {
  return async (c, next) => {
    if (!rateLimitEnabled(c.env)) return next();
    const key = c.get("rateKey") ?? `ip:${c.req.header("cf-connecting-ip") ?? "unknown"}`;
    let allowed = true;
    try {
      allowed = (await c.env.RATE_LIMITER.limit({ key })).success;
    } catch (err) {
      // The limiter is a guard, not a dependency: when it fails, serve (and say so in the logs).
      console.error("rate limiter failed; request allowed", err);
    }
    if (!allowed) {
      throw new ApiError(
        429,
        `rate limit reached for this ${key.startsWith("key:") ? "API key" : "client"}; ` +
          `retry after ${RATE_LIMIT_PERIOD_S} s`,
        "rate_limit_error",
        null,
        "rate_limit_exceeded",
        {
          "Retry-After": String(RATE_LIMIT_PERIOD_S),
        },
      );
    }
    return next();
  };
}

/** POSTs must say `Content-Type: application/json` (parameters such as charset allowed). */
export function requireJson(): MiddlewareHandler<{ Bindings: Env }> {
  return async (c, next) => {
    if (c.req.method !== "POST") return next();
    const ct = c.req.header("content-type") ?? "";
    if (ct.split(";")[0].trim().toLowerCase() !== "application/json") {
      const got = ct ? `"${ct.length > 80 ? `${ct.slice(0, 80)}…` : ct}"` : "none";
      throw new ApiError(
        415,
        `Content-Type must be application/json, got ${got}`,
        "invalid_request_error",
        null,
        "unsupported_media_type",
      );
    }
    return next();
  };
}

/**
 * Past the cap a body is still read (and dropped) up to this many bytes before the 413 goes out:
 * answering while the client is still sending makes workerd drop the connection, and the client
 * would see a reset instead of the 413. Beyond this a client gets the reset. Only a request that
 * passed the key check (the 413 comes after it) is worth that much reading.
 */
export const DRAIN_LIMIT_BYTES = 64 * 1024 * 1024;

/**
 * What any other early refusal (401, 404, 415, …) reads of a body before answering. Answering
 * before the body is read drops the connection (locally the proxy turns that into a 500), so the
 * refusal of a body up to a few MiB — a client that forgot its key — still arrives as a 401;
 * past that an unauthenticated client gets the dropped connection rather than 64 MiB of reading.
 */
export const REFUSAL_DRAIN_BYTES = 4 * 1024 * 1024;

/**
 * Reads and drops what is left of a request body (at most `limit` bytes) before an early
 * answer — a refusal sent while the client is still uploading would otherwise reach it as a
 * dropped connection. A body announced larger than `limit` is not read at all.
 */
export async function drainBody(req: Request, limit = REFUSAL_DRAIN_BYTES): Promise<void> {
  if (!req.body || req.bodyUsed) return;
  if (Number(req.headers.get("content-length") ?? NaN) > limit) return;
  await drain(req.body.getReader(), 0, limit);
}

async function drain(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  alreadyRead: number,
  limit: number,
): Promise<void> {
  let size = alreadyRead;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      size += value.byteLength;
      if (size > limit) {
        await reader.cancel();
        return;
      }
    }
  } catch {
    // The client went away mid-body: nothing left to drain.
  }
}

/** 413 above MAX_BODY_BYTES, checked on Content-Length and while reading a chunked body. */
export function bodyCap(): MiddlewareHandler<{ Bindings: Env }> {
  return async (c, next) => {
    const raw = c.req.raw;
    if (!raw.body || c.req.method === "GET" || c.req.method === "HEAD") return next();
    const max = readLimits(c.env).maxBodyBytes;
    const tooLarge = () =>
      new ApiError(
        413,
        `request body exceeds ${max} bytes (this server's MAX_BODY_BYTES)`,
        "invalid_request_error",
        null,
        "request_too_large",
      );
    // Refused on its declared length: nothing is kept (onError drains what is still arriving).
    if (Number(raw.headers.get("content-length") ?? NaN) > max) throw tooLarge();
    // Otherwise the cap is applied to what actually arrives, so a chunked (or lying) body cannot
    // get past it either.
    const reader = raw.body.getReader();
    const chunks: Uint8Array[] = [];
    let size = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > max) {
        chunks.length = 0;
        await drain(reader, size, DRAIN_LIMIT_BYTES);
        throw tooLarge();
      }
      chunks.push(value);
    }
    const body = new Uint8Array(size);
    let at = 0;
    for (const ch of chunks) {
      body.set(ch, at);
      at += ch.byteLength;
    }
    c.req.raw = new Request(raw, { body });
    return next();
  };
}
