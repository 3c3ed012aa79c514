/**
 * The deployable bundle (`wrangler deploy --dry-run`, built by `npm run build`) stays small: weights
 * live in R2, never in the script.
 */
import { describe, expect, it } from "vitest";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../../scripts/lib/local-worker";

describe("worker bundle", () => {
  it("is under 2 MiB and holds no weights", () => {
    const dist = join(ROOT, "dist");
    const files = readdirSync(dist);
    expect(files).toContain("index.js");
    expect(files.filter((f) => /\.(safetensors|bin|gguf)$/.test(f))).toEqual([]);
    // What deploys is index.js and the modules it imports: `--outdir` is not cleared between
    // builds, so Wasm modules of earlier builds (other content hashes) stay beside them.
    const script = readFileSync(join(dist, "index.js"), "utf8");
    const modules = files.filter((f) => f.endsWith(".wasm") && script.includes(f));
    const total = ["index.js", ...modules].reduce((s, f) => s + statSync(join(dist, f)).size, 0);
    expect(total).toBeLessThan(2 * 1024 * 1024);
    expect(modules.length).toBeGreaterThanOrEqual(2);
  });
});
