/**
 * @module Deployment variables (wrangler.toml `[vars]`, secrets, `.dev.vars`), read one way
 * everywhere: an unset or empty variable takes its default; a set one must parse, or a
 * `ConfigError` names the variable, what it allows, and what it got. No reader silently falls
 * back on a bad value — a typo in a deploy config must be loud, not a different behaviour.
 */

/**
 * The Worker's secrets (`wrangler secret put NAME`; `.dev.vars` locally). None may also be a
 * `[vars]` name: a deploy with both is refused (the deploy-config test checks wrangler.toml).
 */
export const SECRET_NAMES = ["ADMIN_TOKEN", "API_KEY_HASHES"] as const;

/** A deployment variable holds a value it does not allow: an operator's mistake, reported by name. */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(
    readonly variable: string,
    allowed: string,
    got: string,
  ) {
    // At most 64 characters of a bad value: enough to recognise it, never a log flood.
    super(`${variable} must be ${allowed}, got "${got.length > 64 ? `${got.slice(0, 64)}…` : got}"`);
  }
}

/** The variables of a deployment: `Env`, or a plain object of strings in tests and scripts. */
export type Vars = object;

function raw(vars: Vars, name: string): string | undefined {
  const v = (vars as Record<string, unknown>)[name];
  if (v === undefined || v === null) return undefined;
  // wrangler.toml may hold an unquoted number or boolean; anything else is not a var's value.
  if (typeof v !== "string" && typeof v !== "number" && typeof v !== "boolean") {
    throw new ConfigError(name, "a string", `a ${typeof v}`);
  }
  const s = String(v).trim();
  return s === "" ? undefined : s;
}

export interface NumberRule {
  /** Inclusive lower bound. */
  min?: number;
  /** Exclusive lower bound. */
  above?: number;
  /** Inclusive upper bound. */
  max?: number;
}

function describe(kind: string, rule: NumberRule): string {
  const parts = [kind];
  if (rule.above !== undefined) parts.push(`> ${rule.above}`);
  if (rule.min !== undefined) parts.push(`≥ ${rule.min}`);
  if (rule.max !== undefined) parts.push(`≤ ${rule.max}`);
  return parts.join(" ");
}

function check(name: string, s: string, v: number, kind: string, rule: NumberRule): number {
  const ok =
    Number.isFinite(v) &&
    (rule.min === undefined || v >= rule.min) &&
    (rule.above === undefined || v > rule.above) &&
    (rule.max === undefined || v <= rule.max);
  if (!ok) throw new ConfigError(name, describe(kind, rule), s);
  return v;
}

/** A finite number within `rule`; `fallback` when unset (null fallback = "off"). */
export function numberVar<F extends number | null>(
  vars: Vars,
  name: string,
  fallback: F,
  rule: NumberRule = {},
): number | F {
  const s = raw(vars, name);
  if (s === undefined) return fallback;
  return check(name, s, Number(s), "a number", rule);
}

/** An integer within `rule`; `fallback` when unset. */
export function intVar(vars: Vars, name: string, fallback: number, rule: NumberRule = {}): number {
  const s = raw(vars, name);
  if (s === undefined) return fallback;
  // Digits only: "1e3", "1.0" and values past 2^53 are refused rather than read loosely.
  const v = /^-?[0-9]+$/.test(s) ? Number(s) : Number.NaN;
  if (!Number.isSafeInteger(v)) throw new ConfigError(name, describe("an integer", rule), s);
  return check(name, s, v, "an integer", rule);
}

/** One of `allowed`; `fallback` when unset. */
export function enumVar<T extends string>(vars: Vars, name: string, allowed: readonly T[], fallback: T): T {
  const s = raw(vars, name);
  if (s === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(s))
    throw new ConfigError(name, `one of ${allowed.map((a) => `"${a}"`).join(", ")}`, s);
  return s as T;
}

/** "true" or "false" (any case); `fallback` when unset. */
export function boolVar(vars: Vars, name: string, fallback: boolean): boolean {
  const s = raw(vars, name);
  if (s === undefined) return fallback;
  if (s.toLowerCase() === "true") return true;
  if (s.toLowerCase() === "false") return false;
  throw new ConfigError(name, `"true" or "false"`, s);
}

/** A comma-separated list, entries trimmed, empty entries dropped; [] when unset. */
export function listVar(vars: Vars, name: string): string[] {
  const s = raw(vars, name);
  if (s === undefined) return [];
  return s
    .split(",")
    .map((x) => x.trim())
    .filter((x) => x.length > 0);
}

/** An optional secret (`wrangler secret put NAME`, or `.dev.vars` locally): undefined when unset or empty. */
export function secretVar(vars: Vars, name: string): string | undefined {
  return raw(vars, name);
}

const MIB = 1024 * 1024;

/** A size given in MiB (may be fractional), returned in whole bytes; `fallbackMiB` when unset. */
export function mibVar(vars: Vars, name: string, fallbackMiB: number, rule: NumberRule = { above: 0 }): number {
  const s = raw(vars, name);
  if (s === undefined) return Math.floor(fallbackMiB * MIB);
  return Math.floor(check(name, s, Number(s), "a number of MiB", rule) * MIB);
}

/**
 * BATCHING: "on" (default) coalesces concurrent requests' work — batched decode steps for a model
 * the Worker runs, else one fan-out per MoE layer per Worker isolate; one kernel pass per expert
 * per ExpertHost, one head pass — or "off"
 * (every request alone; `npm run bench:load` compares the two in one run).
 */
export function batchingEnabled(vars: Vars): boolean {
  return enumVar(vars, "BATCHING", ["on", "off"], "on") === "on";
}

/**
 * SESSION_DRIVERS: how many session drivers a pipelined model's generations are spread over (by
 * session id) when they share decode steps (BATCHING on). 1 (default) puts every generation in one
 * driver's steps — the largest batches, but that driver's one thread runs every step's embedding
 * lookups, sampling and stream writes; N > 1 spreads that CPU over N instances, each batching its
 * share (the StageHosts still merge calls that reach them together). Ignored with BATCHING off
 * (one driver per stage, as before).
 */
export function sessionDrivers(vars: Vars): number {
  return intVar(vars, "SESSION_DRIVERS", 1, { min: 1, max: 64 });
}

/**
 * PREFIX_SHARING: "on" (default) lets a prompt joining the batched decode steps take the K/V of
 * the prompt positions it shares with a live generation of the same model, or a finished one kept
 * within the KV budget, instead of running them (src/serving/prefix-share.ts); "off" runs every
 * prompt whole and keeps nothing. Only where the steps are batched.
 */
export function prefixSharingEnabled(vars: Vars): boolean {
  return enumVar(vars, "PREFIX_SHARING", ["on", "off"], "on") === "on";
}

/**
 * `parse` memoized per env object: a Worker isolate gets the same `env` on every request, so the
 * vars are parsed (and a ConfigError found) once, not on every request. A throw is not cached.
 */
export function perEnv<T>(parse: (env: object) => T): (env: object) => T {
  const cache = new WeakMap<object, T>();
  return (env) => {
    if (cache.has(env)) return cache.get(env) as T;
    const value = parse(env);
    cache.set(env, value);
    return value;
  };
}
