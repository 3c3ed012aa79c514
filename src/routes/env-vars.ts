/**
 * @module Parsing of the HTTP surface's env vars and optional secrets: one small function per
 * kind, shaped `(env, name) -> value`, each throwing an `EnvVarError` whose message names the
 * variable and quotes what it got (`MAX_BODY_BYTES must be an integer ≥ 1, got "1e9x"`).
 * An absent or empty var takes the documented default, so a config that predates a var still works.
 */

/**
 * The Worker's secrets (`wrangler secret put NAME`; `.dev.vars` locally). None may also be a
 * `[vars]` name: a deploy with both is refused (the deploy-config test checks wrangler.toml).
 */
export const SECRET_NAMES = ["ADMIN_TOKEN", "API_KEY_HASHES"] as const;

/** A misconfigured var or secret: an operator's mistake, reported by name (never a client's fault). */
export class EnvVarError extends Error {
  override name = "EnvVarError";
}

/** Reads a binding by name without widening `Env`: vars, secrets and absent names alike. */
export function rawVar(env: object, name: string): string | undefined {
  const v = (env as Record<string, unknown>)[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw new EnvVarError(`${name} must be a string var, got a ${typeof v}`);
  return v;
}

/** An optional secret (`wrangler secret put NAME`, or `.dev.vars` locally): undefined when unset or empty. */
export function secretVar(env: object, name: string): string | undefined {
  const v = rawVar(env, name)?.trim();
  return v ? v : undefined;
}

/** An integer var in [min, max]; the default when absent or empty. */
export function intVar(env: object, name: string, dflt: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const raw = rawVar(env, name)?.trim();
  if (!raw) return dflt;
  const n = /^[0-9]+$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `in [${min}, ${max}]`;
    throw new EnvVarError(`${name} must be an integer ${range}, got "${clip(raw)}"`);
  }
  return n;
}

/** "true" / "false" (any case); the default when absent or empty. */
export function boolVar(env: object, name: string, dflt: boolean): boolean {
  const raw = rawVar(env, name)?.trim().toLowerCase();
  if (!raw) return dflt;
  if (raw === "true") return true;
  if (raw === "false") return false;
  throw new EnvVarError(`${name} must be "true" or "false", got "${clip(raw)}"`);
}

/** A comma-separated list, entries trimmed, empty entries dropped; [] when absent or empty. */
export function listVar(env: object, name: string): string[] {
  const raw = rawVar(env, name);
  if (!raw) return [];
  return raw
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/** Quotes at most 64 characters of a bad value: enough to recognise it, never a log flood. */
function clip(s: string): string {
  return s.length > 64 ? `${s.slice(0, 64)}…` : s;
}
