/**
 * wrangler.toml against the code and the docs: no [vars] name is also a secret (a deploy with both
 * is refused), every secret the docs tell users to create is one the Worker reads, the rate-limit
 * binding matches the Retry-After the Worker sends, and the shipped caps are the code's defaults.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { unstable_readConfig } from "wrangler";
import { ROOT } from "../../scripts/lib/local-worker";
import { SECRET_NAMES } from "../../src/platform/env";
import { LIMIT_DEFAULTS, LIMIT_VARS } from "../../src/routes/limits";
import { RATE_LIMIT_PERIOD_S } from "../../src/routes/guards";

const config = unstable_readConfig({ config: join(ROOT, "wrangler.toml") });
const vars = config.vars as Record<string, unknown>;

/** Every `wrangler secret put NAME` in the README and the doc snippets waiting to be merged into it. */
function documentedSecrets(): Set<string> {
  const files = [join(ROOT, "README.md")];
  const snippets = join(ROOT, "docs-snippets");
  if (existsSync(snippets)) for (const f of readdirSync(snippets)) if (f.endsWith(".md")) files.push(join(snippets, f));
  const names = new Set<string>();
  for (const f of files)
    for (const m of readFileSync(f, "utf8").matchAll(/wrangler secret put ([A-Z][A-Z0-9_]*)/g)) names.add(m[1]);
  return names;
}

describe("deploy config", () => {
  it("declares no [vars] name that is also a secret", () => {
    const secrets = new Set<string>([...SECRET_NAMES, ...documentedSecrets()]);
    expect(Object.keys(vars).filter((v) => secrets.has(v))).toEqual([]);
  });

  it("documents only secrets the Worker reads, and documents ADMIN_TOKEN", () => {
    const docs = documentedSecrets();
    expect(docs.has("ADMIN_TOKEN")).toBe(true);
    for (const name of docs) expect(SECRET_NAMES as readonly string[]).toContain(name);
  });

  it("binds the rate limiter with the period the Worker's Retry-After assumes", () => {
    const limiters = config.ratelimits as { name: string; simple: { limit: number; period: number } }[];
    const rl = limiters.find((r) => r.name === "RATE_LIMITER");
    expect(rl).toBeDefined();
    expect(rl?.simple.period).toBe(RATE_LIMIT_PERIOD_S);
    expect(rl?.simple.limit).toBeGreaterThan(0);
  });

  it("ships the code's default caps and keeps risky switches off", () => {
    for (const [k, name] of Object.entries(LIMIT_VARS))
      expect(vars[name], name).toBe(String(LIMIT_DEFAULTS[k as keyof typeof LIMIT_DEFAULTS]));
    expect(vars.ADMIN_FAULTS_ENABLED).toBe("false");
    expect(vars.CORS_ORIGINS).toBe("");
    expect(vars.RATE_LIMIT_ENABLED).toBe("true");
  });
});
