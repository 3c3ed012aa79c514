/**
 * @module Request-body validation at the boundary: strict UTF-8 JSON, zod schemas, and one mapping
 * from a zod issue to an OpenAI-style 400 that names the field (`messages[1].content: expected
 * string`). Size caps run before this (guards.ts) and right after it (limits.ts).
 */
import type { Context } from "hono";
import type { z } from "zod";
import { ApiError } from "../errors";

export function fieldPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out;
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

export async function readJson(c: Context): Promise<unknown> {
  let text: string;
  try {
    text = utf8.decode(await c.req.arrayBuffer());
  } catch {
    throw new ApiError(400, "request body is not valid UTF-8", "invalid_request_error", null, "invalid_json");
  }
  if (text.length === 0)
    throw new ApiError(400, "request body is empty; send a JSON object", "invalid_request_error", null, "invalid_json");
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(400, "request body is not valid JSON", "invalid_request_error", null, "invalid_json");
  }
}

export async function parseBody<S extends z.ZodType>(c: Context, schema: S): Promise<z.infer<S>> {
  const raw = await readJson(c);
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new ApiError(400, "request body must be a JSON object", "invalid_request_error", null, "invalid_json");
  }
  const r = schema.safeParse(raw);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const param = fieldPath(issue.path);
  if (issue.code === "unrecognized_keys") {
    const key = issue.keys[0];
    throw ApiError.invalid(param ? `${param}.${key}` : key, "is not a supported parameter", "unsupported_parameter");
  }
  throw ApiError.invalid(param || "body", issue.message);
}
