/**
 * @module Hostile requests for `npm run fuzz`, drawn from a seeded generator: valid bodies of every
 * POST route with one field mutated (wrong types, huge or empty strings, huge / negative /
 * fractional / infinite numbers, deep nesting, long arrays, unknown or missing fields), whole-body
 * damage (truncated JSON, invalid UTF-8, stray bytes, oversize and chunked bodies), and transport
 * damage (content types, methods, paths, auth headers, request ids). Each case says which field a
 * 400 must name when one applies.
 */
import { createRng } from "../../src/serving/sampling";
import { ADMIN_TOKEN_FOR_TESTS } from "./local-worker";
import { hostileValue, int, pick, randomText, type Json, type Rng } from "./fuzz-values";

export interface FuzzCase {
  /** Short kind, for the per-kind counts. */
  kind: string;
  method: string;
  path: string;
  headers: Record<string, string>;
  /** Raw body: text, bytes, or a chunked stream of `chunkedBytes` bytes. */
  body?: string | Uint8Array;
  chunkedBytes?: number;
  /** The top-level field a 400 must name (its param equal to it or inside it), when one applies. */
  field?: string;
}

export const FUZZ_KEY = "fuzz-api-key-0123456789";
/** The harness sets ADMIN_TOKEN to this (local-worker.ts). */
export const FUZZ_ADMIN_TOKEN = ADMIN_TOKEN_FOR_TESTS;

interface Base {
  path: string;
  admin: boolean;
  body: { [k: string]: Json };
}

/** Valid requests of every POST route, against the fuzz server's two models ("tiny", "chat"). */
const BASES: Base[] = [
  { path: "/v1/completions", admin: false, body: { model: "tiny", prompt: [1, 2, 3], max_tokens: 4, temperature: 0 } },
  {
    path: "/v1/completions",
    admin: false,
    body: {
      model: "chat",
      prompt: "Once upon a time",
      max_tokens: 3,
      stop: ["\n", "."],
      seed: 7,
      temperature: 0.8,
      top_p: 0.9,
    },
  },
  {
    path: "/v1/chat/completions",
    admin: false,
    body: {
      model: "chat",
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: [{ type: "text", text: "Hi there" }] },
      ],
      max_tokens: 3,
      seed: 42,
      stream: false,
    },
  },
  {
    path: "/v1/chat/completions",
    admin: false,
    body: {
      model: "chat",
      messages: [{ role: "user", content: "Hello" }],
      max_completion_tokens: 2,
      stream: true,
      stream_options: { include_usage: true },
    },
  },
  {
    path: "/admin/forward",
    admin: true,
    body: { model: "tiny", tokens: [1, 2, 3, 4], positions: "last", top_k: 5, greedy: 2 },
  },
  {
    path: "/admin/moe",
    admin: true,
    body: { model: "tiny", layer: 1, input: [Array.from({ length: 64 }, (_, i) => (i % 7) / 10)] },
  },
  { path: "/admin/fault", admin: true, body: { model: "tiny", instance: 0, layer: 0, expert: 1, ms: 10 } },
];

const GET_PATHS = [
  "/health",
  "/",
  "/v1/models",
  "/v1/placement",
  "/v1/placement?model=tiny",
  "/admin/hosts?model=tiny",
  "/admin/placement?model=tiny",
];

const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;

/** JSON text of `body` with the placeholder string replaced by a raw token. */
function withRaw(body: Json, raw: string | undefined): string {
  const text = JSON.stringify(body);
  return raw === undefined ? text : text.replace('"__RAW__"', raw);
}

/** One field of a valid body mutated; returns the JSON text and the top-level field named. */
function mutateField(rng: Rng, base: Base): { text: string; field: string | undefined; kind: string } {
  const body = clone(base.body);
  const keys = Object.keys(body);
  const roll = rng();
  if (roll < 0.08) {
    const key = pick(rng, ["foo", "logit_bias", "tools", "__proto__x", "n_probs", "x".repeat(300)]);
    body[key] = 1;
    return { text: JSON.stringify(body), field: key, kind: "unknown-field" };
  }
  // Dropping `model` switches to the default model: a different request, not a broken field.
  const droppable = keys.filter((k) => k !== "model");
  if (roll < 0.16 && droppable.length > 0) {
    const key = pick(rng, droppable);
    delete body[key];
    return { text: JSON.stringify(body), field: key, kind: "missing-field" };
  }
  const key = pick(rng, keys);
  const h = hostileValue(rng);
  const target = body[key];
  // Inside an array or object value half of the time: messages[1].content, prompt[2], ...
  if (rng() < 0.5 && Array.isArray(target) && target.length > 0) {
    const i = int(rng, 0, target.length - 1);
    const el = target[i];
    if (el && typeof el === "object" && !Array.isArray(el) && rng() < 0.7) {
      const sub = pick(rng, [...Object.keys(el), "extra"]);
      (el as Record<string, Json>)[sub] = h.raw === undefined ? (h.value as Json) : "__RAW__";
    } else target[i] = h.raw === undefined ? (h.value as Json) : "__RAW__";
    return { text: withRaw(body, h.raw), field: key, kind: "nested-value" };
  }
  body[key] = h.raw === undefined ? (h.value as Json) : "__RAW__";
  // Another served model is a valid choice, not a bad field: what it refuses (a text prompt for a
  // model without a tokenizer, say) is named by the server as the field it cannot serve.
  if (key === "model" && (h.value === "tiny" || h.value === "chat"))
    return { text: JSON.stringify(body), field: undefined, kind: "other-model" };
  return { text: withRaw(body, h.raw), field: key, kind: "field-value" };
}

function authFor(base: Base): Record<string, string> {
  return base.admin ? { authorization: `Bearer ${FUZZ_ADMIN_TOKEN}` } : { authorization: `Bearer ${FUZZ_KEY}` };
}

const JSON_CT = { "content-type": "application/json" };

/** Whole-body damage: the request is well addressed, its body is not a usable JSON object. */
function damagedBody(rng: Rng, base: Base): { body: string | Uint8Array; kind: string; chunkedBytes?: number } {
  const text = JSON.stringify(base.body);
  switch (int(rng, 0, 11)) {
    case 0:
      return { body: text.slice(0, int(rng, 0, text.length - 1)), kind: "truncated-json" };
    case 1: {
      const bytes = new TextEncoder().encode(text);
      bytes[int(rng, 0, bytes.length - 1)] = pick(rng, [0xff, 0xc0, 0x80, 0xfe]);
      return { body: bytes, kind: "invalid-utf8" };
    }
    case 2:
      return { body: "", kind: "empty-body" };
    case 3:
      return { body: pick(rng, ["null", "[]", "1", '"str"', "true", "{}", "[{}]"]), kind: "non-object-json" };
    case 4:
      return { body: `\ufeff${text}`, kind: "bom" };
    case 5:
      return { body: "[".repeat(int(rng, 1000, 400_000)), kind: "deep-nesting" };
    case 6:
      return { body: `${'{"a":'.repeat(int(rng, 1000, 100_000))}1${"}".repeat(10)}`, kind: "deep-objects" };
    case 7: {
      const at = int(rng, 0, text.length);
      return { body: text.slice(0, at) + randomText(rng, int(rng, 1, 8)) + text.slice(at), kind: "stray-bytes" };
    }
    case 8:
      return { body: text.replace(/^\{/, `{"model":"tiny",`), kind: "duplicate-key" };
    case 9:
      return {
        body: JSON.stringify({ ...base.body, pad: "x".repeat(int(rng, 1_100_000, 3_000_000)) }),
        kind: "oversize-body",
      };
    case 10:
      return { body: "", chunkedBytes: int(rng, 1_100_000, 4_000_000), kind: "oversize-chunked" };
    default:
      return { body: text, chunkedBytes: -1, kind: "valid-chunked" };
  }
}

/** Transport damage: method, path, content type, auth header, request id. */
function damagedTransport(rng: Rng, base: Base): FuzzCase {
  const text = JSON.stringify(base.body);
  const headers = { ...JSON_CT, ...authFor(base) };
  switch (int(rng, 0, 9)) {
    case 0: {
      const ct = pick(rng, [
        "text/plain",
        "",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "json",
        "text/json",
        "application/json-patch+json",
        "*/*",
      ]);
      const h: Record<string, string> = { ...authFor(base) };
      if (ct) h["content-type"] = ct;
      return { kind: "content-type", method: "POST", path: base.path, headers: h, body: text };
    }
    case 1:
      return {
        kind: "method",
        method: pick(rng, ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
        path: base.path,
        headers,
        body: undefined,
      };
    case 2: {
      const path = pick(rng, [
        "/v1/completions/",
        "//v1/completions",
        "/v1/Completions",
        "/v1/%00",
        "/v1/completions%2F..%2F",
        "/admin/../v1/models",
        "/v2/models",
        "/v1/chat",
        `/v1/${"a".repeat(int(rng, 100, 2000))}`,
        "/v1/models?model=%ff%fe",
        "/%ZZ",
      ]);
      return { kind: "path", method: rng() < 0.5 ? "GET" : "POST", path, headers, body: text };
    }
    case 3: {
      const auth = pick(rng, [
        "",
        "Bearer",
        "Bearer ",
        "Basic Zm9vOmJhcg==",
        "Bearer wrong-key",
        `Bearer ${"k".repeat(int(rng, 600, 6000))}`,
        `bearer ${FUZZ_KEY}x`,
        "Bearer \u00ff\u00fe",
        `Bearer ${FUZZ_KEY} extra`,
      ]);
      const h: Record<string, string> = { ...JSON_CT };
      if (auth) h.authorization = auth;
      // Sometimes a large upload too: the refusal must still arrive as a 401, not a reset.
      const body = rng() < 0.2 ? JSON.stringify({ ...base.body, pad: "p".repeat(int(rng, 500_000, 3_000_000)) }) : text;
      return { kind: "auth", method: "POST", path: base.path, headers: h, body };
    }
    case 4: {
      const id = pick(rng, [
        "",
        "ok-id_1=",
        "has space",
        "<script>",
        "x".repeat(int(rng, 129, 4000)),
        "é",
        "a,b",
        "../../etc",
      ]);
      return {
        kind: "request-id",
        method: "POST",
        path: base.path,
        headers: { ...headers, "x-request-id": id },
        body: text,
      };
    }
    case 5: {
      const q = pick(rng, [
        "model=",
        "model=nope",
        "model=%00",
        `model=${"m".repeat(500)}`,
        "model=tiny&model=chat",
        "model=../../x",
        "model=%ff",
      ]);
      const path = pick(rng, ["/v1/placement", "/admin/hosts", "/admin/placement", "/v1/models"]);
      const h = path.startsWith("/admin")
        ? { authorization: `Bearer ${FUZZ_ADMIN_TOKEN}` }
        : { authorization: `Bearer ${FUZZ_KEY}` };
      return { kind: "query", method: "GET", path: `${path}?${q}`, headers: h };
    }
    case 6: {
      const path = pick(rng, GET_PATHS);
      const h = path.startsWith("/admin")
        ? { authorization: `Bearer ${FUZZ_ADMIN_TOKEN}` }
        : { authorization: `Bearer ${FUZZ_KEY}` };
      return { kind: "get", method: "GET", path, headers: h };
    }
    case 7:
      return {
        kind: "cors-preflight",
        method: "OPTIONS",
        path: base.path,
        headers: {
          origin: pick(rng, ["https://app.example.com", "https://evil.example", "null"]),
          "access-control-request-method": "POST",
        },
      };
    case 8:
      return {
        kind: "big-header",
        method: "POST",
        path: base.path,
        headers: { ...headers, "x-pad": "y".repeat(int(rng, 0, 4000)) },
        body: text,
      };
    default:
      return { kind: "valid", method: "POST", path: base.path, headers, body: text };
  }
}

/** The i-th case of the stream seeded by `seed` (cases are independent of each other). */
export function fuzzCase(seed: number, i: number): FuzzCase {
  const rng = createRng((seed * 0x9e3779b1 + i) >>> 0);
  const base = pick(rng, BASES);
  const roll = rng();
  if (roll < 0.6) {
    const m = mutateField(rng, base);
    return {
      kind: m.kind,
      method: "POST",
      path: base.path,
      headers: { ...JSON_CT, ...authFor(base) },
      body: m.text,
      field: m.field,
    };
  }
  if (roll < 0.8) {
    const d = damagedBody(rng, base);
    return {
      kind: d.kind,
      method: "POST",
      path: base.path,
      headers: { ...JSON_CT, ...authFor(base) },
      body: d.body,
      chunkedBytes: d.chunkedBytes,
    };
  }
  return damagedTransport(rng, base);
}
