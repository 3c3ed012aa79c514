/**
 * @module `config.json` `rope_scaling` → YarnSpec, validated where it enters. Only YaRN with
 * DeepSeek's keys is implemented; any other type, or a key we would silently ignore (`truncate`,
 * `attention_factor`), is refused with the field named, so a model is never served with the wrong
 * positions. Defaults are those of DeepSeek's modeling code (beta 32 / 1, mscale 1, mscale_all_dim 0).
 */
import { ModelFormatError } from "./errors";
import type { YarnSpec } from "./rope";

const KNOWN_KEYS = new Set([
  "type",
  "rope_type",
  "factor",
  "original_max_position_embeddings",
  "beta_fast",
  "beta_slow",
  "mscale",
  "mscale_all_dim",
]);

function fail(file: string, field: string, message: string): never {
  throw new ModelFormatError(`${file}: ${field} ${message}`, file, undefined, field);
}

function show(v: unknown): string {
  if (v === undefined) return "nothing";
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/**
 * null/undefined → null (plain RoPE). A YaRN object → its YarnSpec. Anything else throws a
 * ModelFormatError naming `rope_scaling.<key>`.
 */
export function parseYarnScaling(raw: unknown, file: string): YarnSpec | null {
  if (raw === undefined || raw === null) return null;
  if (typeof raw !== "object" || Array.isArray(raw))
    fail(file, "rope_scaling", `must be an object or null, got ${show(raw)}`);
  const o = raw as Record<string, unknown>;
  const type = o.type ?? o.rope_type;
  if (o.type !== undefined && o.rope_type !== undefined && o.type !== o.rope_type) {
    fail(file, "rope_scaling.rope_type", `${show(o.rope_type)} disagrees with rope_scaling.type ${show(o.type)}`);
  }
  if (type !== "yarn") {
    const key = o.type !== undefined ? "type" : "rope_type";
    fail(file, `rope_scaling.${key}`, `${show(type)} is not supported (only "yarn" with DeepSeek semantics)`);
  }
  for (const key of Object.keys(o)) {
    if (!KNOWN_KEYS.has(key)) fail(file, `rope_scaling.${key}`, `is not supported for YaRN (got ${show(o[key])})`);
  }
  const num = (key: string, fallback: number | null, ok: (v: number) => boolean, want: string): number => {
    const v = o[key] ?? null;
    if (v === null) {
      if (fallback === null) fail(file, `rope_scaling.${key}`, `is missing (required: ${want})`);
      return fallback;
    }
    if (typeof v !== "number" || !Number.isFinite(v) || !ok(v))
      fail(file, `rope_scaling.${key}`, `must be ${want}, got ${show(v)}`);
    return v;
  };
  const yarn: YarnSpec = {
    factor: num("factor", null, (v) => v >= 1, "a number ≥ 1"),
    originalMaxPositions: num(
      "original_max_position_embeddings",
      null,
      (v) => Number.isSafeInteger(v) && v > 0,
      "an integer > 0",
    ),
    betaFast: num("beta_fast", 32, (v) => v > 0, "a number > 0"),
    betaSlow: num("beta_slow", 1, (v) => v > 0, "a number > 0"),
    mscale: num("mscale", 1, (v) => v >= 0, "a number ≥ 0"),
    mscaleAllDim: num("mscale_all_dim", 0, (v) => v >= 0, "a number ≥ 0"),
  };
  if (yarn.betaFast <= yarn.betaSlow) {
    fail(file, "rope_scaling.beta_fast", `must be > beta_slow (${yarn.betaSlow}), got ${yarn.betaFast}`);
  }
  return yarn;
}
