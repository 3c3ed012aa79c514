/**
 * API keys, CORS and the rate limit on the real runtime: /v1/* (placement included) needs a key
 * when API_KEY_HASHES is set, /health does not; allowed origins get CORS headers; Cloudflare's
 * Rate Limiting binding (simulated by local workerd) answers 429 with Retry-After per key, or per
 * client IP when keys are off.
 */
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startLocalWorker, type LocalWorker } from "../../scripts/lib/local-worker";
import { unstable_readConfig } from "wrangler";
import { join } from "node:path";
import { ROOT } from "../../scripts/lib/local-worker";

const sha = (s: string) => createHash("sha256").update(s).digest("hex");
const KEYS = ["key-one-abcdef", "key-two-ghijkl"];
/** Used only by the rate-limit test, so that its count starts at zero. */
const LIMITED_KEY = "key-three-mnopqr";
const limiters = unstable_readConfig({ config: join(ROOT, "wrangler.toml") }).ratelimits as {
  name: string;
  simple: { limit: number };
}[];
const LIMIT = limiters.find((r) => r.name === "RATE_LIMITER")!.simple.limit;

/** Sends GET path until a 429 (the window may roll over once, so up to two windows' worth). */
async function untilLimited(
  w: LocalWorker,
  path: string,
  headers: Record<string, string>,
): Promise<{ sent: number; res: Response | null }> {
  for (let sent = 1; sent <= 2 * LIMIT + 1; sent++) {
    const res = await w.fetch(path, { headers });
    if (res.status === 429) return { sent, res };
    expect(res.status).toBe(200);
    await res.arrayBuffer();
  }
  return { sent: 2 * LIMIT + 1, res: null };
}

describe("API keys on (API_KEY_HASHES set), CORS for one origin", () => {
  let w: LocalWorker;
  beforeAll(async () => {
    w = await startLocalWorker({
      vars: { CORS_ORIGINS: "https://app.example.com" },
      secrets: { API_KEY_HASHES: [...KEYS, LIMITED_KEY].map(sha).join(",") },
    });
  });
  afterAll(() => w?.dispose());

  it("refuses /v1 without a key, with a wrong or malformed one, with an OpenAI-style 401", async () => {
    for (const auth of [
      undefined,
      "Bearer nope",
      "Basic a2V5",
      `Bearer ${sha(KEYS[0])}`,
      `Bearer ${"k".repeat(600)}`,
    ]) {
      const res = await w.fetch("/v1/models", { headers: auth ? { authorization: auth } : {} });
      expect(res.status).toBe(401);
      expect(res.headers.get("www-authenticate")).toMatch(/^Bearer/);
      const body = (await res.json()) as { error: { type: string; code: string } };
      expect(body.error.type).toBe("authentication_error");
      expect(body.error.code).toMatch(/^(missing|invalid)_api_key$/);
    }
  });

  it("serves /v1 with any configured key, and keeps /v1/placement behind the key", async () => {
    for (const key of KEYS)
      expect((await w.fetch("/v1/models", { headers: { authorization: `Bearer ${key}` } })).status).toBe(200);
    expect((await w.fetch("/v1/placement")).status).toBe(401);
    expect((await w.fetch("/health")).status).toBe(200);
  });

  it("answers a large upload without a key with a 401, not a dropped connection", async () => {
    const res = await w.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "x".repeat(3_000_000) }),
    });
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("missing_api_key");
  });

  it("checks the key before the body: 401 then 415", async () => {
    const post = (auth: Record<string, string>) =>
      w.fetch("/v1/completions", { method: "POST", headers: { "content-type": "text/plain", ...auth }, body: "{}" });
    expect((await post({})).status).toBe(401);
    expect((await post({ authorization: `Bearer ${KEYS[0]}` })).status).toBe(415);
  });

  it("answers preflights and responses for the allowed origin only", async () => {
    const pre = await w.fetch("/v1/chat/completions", {
      method: "OPTIONS",
      headers: {
        origin: "https://app.example.com",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
      },
    });
    expect(pre.status).toBe(204);
    expect(pre.headers.get("access-control-allow-origin")).toBe("https://app.example.com");
    expect(pre.headers.get("access-control-allow-headers")?.toLowerCase()).toContain("authorization");
    const ok = await w.fetch("/v1/models", {
      headers: { origin: "https://app.example.com", authorization: `Bearer ${KEYS[0]}` },
    });
    expect(ok.headers.get("access-control-allow-origin")).toBe("https://app.example.com");
    expect(ok.headers.get("access-control-expose-headers")).toContain("X-Request-Id");
    const other = await w.fetch("/v1/models", {
      headers: { origin: "https://evil.example", authorization: `Bearer ${KEYS[0]}` },
    });
    expect(other.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("limits each key separately: 429 with Retry-After and a JSON body, the other key still served", async () => {
    const { sent, res } = await untilLimited(w, "/v1/models", { authorization: `Bearer ${LIMITED_KEY}` });
    console.log(`rate limit: one key refused after ${sent} requests (limit ${LIMIT} per window)`);
    expect(res).not.toBeNull();
    expect(sent).toBeGreaterThan(LIMIT);
    expect(res!.headers.get("retry-after")).toBe("60");
    expect(res!.headers.get("x-request-id")).toBeTruthy();
    const body = (await res!.json()) as { error: { type: string; code: string; param: null } };
    expect(body.error).toMatchObject({ type: "rate_limit_error", code: "rate_limit_exceeded", param: null });
    for (const key of KEYS)
      expect((await w.fetch("/v1/models", { headers: { authorization: `Bearer ${key}` } })).status).toBe(200);
    expect((await w.fetch("/health")).status).toBe(200);
  });
});

describe("API keys off: open /v1, rate limited per client IP", () => {
  let w: LocalWorker;
  beforeAll(async () => {
    w = await startLocalWorker();
  });
  afterAll(() => w?.dispose());

  it("serves /v1 without a key and limits by CF-Connecting-IP", async () => {
    const { sent, res } = await untilLimited(w, "/v1/models", { "cf-connecting-ip": "203.0.113.7" });
    console.log(`rate limit: client 203.0.113.7 refused after ${sent} requests`);
    expect(res?.status).toBe(429);
    expect(res!.headers.get("retry-after")).toBe("60");
    expect((await w.fetch("/v1/models", { headers: { "cf-connecting-ip": "203.0.113.8" } })).status).toBe(200);
  });
});
