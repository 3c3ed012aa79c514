/**
 * @module API keys for /v1/*: the `API_KEY_HASHES` secret holds SHA-256 digests (hex, comma
 * separated) of the accepted bearer keys, so the Worker never stores a key itself. A presented key
 * is hashed and compared against every digest in constant time. With the secret unset or empty the
 * API is open (local development); deployments set it (see the README).
 */
import type { MiddlewareHandler } from "hono";
import { ApiError } from "../errors";
import { ConfigError, perEnv, secretVar } from "../platform/env";

export const API_KEY_HASHES = "API_KEY_HASHES";
/** Keys longer than this are refused before hashing (bounded work for a hostile header). */
const MAX_KEY_CHARS = 512;

/** The digests of the accepted keys, or [] when keys are off. */
export const parseKeyHashes: (env: object) => Uint8Array[] = perEnv((env) => {
  const raw = secretVar(env, API_KEY_HASHES);
  if (!raw) return [];
  return raw
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map((hex, i) => {
      // The value is a secret: name the entry, never echo it.
      if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
        const allowed = "comma-separated SHA-256 digests (64 hex characters each)";
        throw new ConfigError(API_KEY_HASHES, allowed, `entry ${i + 1} (not shown: a secret)`);
      }
      const out = new Uint8Array(32);
      for (let b = 0; b < 32; b++) out[b] = parseInt(hex.slice(2 * b, 2 * b + 2), 16);
      return out;
    });
});

/** Equal-length byte strings compared without an early exit. */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** Index of the digest that `key` hashes to, or -1; every digest is compared, match or not. */
export async function matchKey(key: string, hashes: readonly Uint8Array[]): Promise<number> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key)));
  let found = -1;
  hashes.forEach((h, i) => {
    if (constantTimeEqual(digest, h) && found < 0) found = i;
  });
  return found;
}

export function hex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

export interface AuthVariables {
  /** Who a request counts against for rate limiting: `key:<digest prefix>` or `ip:<address>`. */
  rateKey: string;
}

function unauthorized(message: string, code: string): ApiError {
  return new ApiError(401, message, "authentication_error", null, code, {
    "WWW-Authenticate": 'Bearer realm="edge-moe"',
  });
}

/** Requires `Authorization: Bearer <key>` matching API_KEY_HASHES (when set); records the rate key. */
export function apiKeyAuth(): MiddlewareHandler<{ Bindings: Env; Variables: AuthVariables }> {
  return async (c, next) => {
    const hashes = parseKeyHashes(c.env);
    if (hashes.length === 0) {
      c.set("rateKey", `ip:${c.req.header("cf-connecting-ip") ?? "unknown"}`);
      return next();
    }
    const header = c.req.header("authorization");
    if (!header) throw unauthorized("no API key: send Authorization: Bearer <key>", "missing_api_key");
    const m = /^Bearer +(\S+) *$/i.exec(header);
    if (!m || m[1].length > MAX_KEY_CHARS)
      throw unauthorized("malformed Authorization header: expected Bearer <key>", "invalid_api_key");
    const i = await matchKey(m[1], hashes);
    if (i < 0) throw unauthorized("invalid API key", "invalid_api_key");
    // The digest prefix identifies the key to the rate limiter without handing it the key.
    c.set("rateKey", `key:${hex(hashes[i]).slice(0, 32)}`);
    return next();
  };
}
