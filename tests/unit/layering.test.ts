/**
 * @module The layering of `src/`: lower folders never import higher ones. Read from the import
 * statements of every source file, so a new backwards import fails here with its file and line.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const SRC = resolve(__dirname, "../../src");

/** What each top-level part of src/ may import (besides itself and packages). */
const MAY_IMPORT: Record<string, readonly string[]> = {
  kernels: [],
  platform: ["kernels", "model", "gating"],
  gating: ["platform"],
  model: ["kernels", "gating", "platform"],
  experts: ["kernels", "gating", "model", "platform", "coordinator", "errors"],
  coordinator: ["kernels", "gating", "model", "platform", "experts", "errors"],
  head: ["kernels", "model", "platform", "coordinator", "errors"],
  serving: ["kernels", "gating", "model", "platform", "experts", "coordinator", "head", "errors"],
  // Metrics, aggregation and the dashboard read the experts' and Coordinator's RPC types; only
  // routes (and app.ts, which mounts its middleware) import it.
  observability: ["kernels", "gating", "model", "platform", "experts", "coordinator", "head", "errors"],
  routes: [
    "kernels",
    "gating",
    "model",
    "platform",
    "experts",
    "coordinator",
    "head",
    "serving",
    "observability",
    "errors",
  ],
  // The StageHost DO runs the serving forward pass on its layer range (a surface, like routes);
  // the Worker's side of the pipeline (client, protocol, KV admission) lives in serving.
  stages: ["kernels", "gating", "model", "platform", "experts", "coordinator", "head", "serving", "errors"],
  errors: [],
  app: ["*"],
  index: ["*"],
};

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : p.endsWith(".ts") ? [p] : [];
  });
}

/** `src/experts/x.ts` → "experts"; `src/app.ts` → "app". */
function part(file: string): string {
  const rel = relative(SRC, file).split(/[\\/]/);
  return rel.length === 1 ? rel[0].replace(/\.ts$/, "") : rel[0];
}

function violations(): string[] {
  const out: string[] = [];
  for (const file of files(SRC)) {
    const from = part(file);
    const allowed = MAY_IMPORT[from];
    readFileSync(file, "utf8")
      .split("\n")
      .forEach((line, i) => {
        const m = /^\s*(?:import|export)\b[^"']*from\s+["']([^"']+)["']/.exec(line);
        if (!m?.[1].startsWith(".")) return;
        const target = resolve(dirname(file), m[1]);
        if (!target.startsWith(SRC)) return; // build outputs (.wasm)
        const to = part(target.endsWith(".ts") ? target : `${target}.ts`);
        if (to === from || allowed === undefined || allowed.includes("*") || allowed.includes(to)) return;
        out.push(`${relative(SRC, file)}:${i + 1} (${from}) imports ${m[1]} (${to})`);
      });
  }
  return out;
}

describe("src/ layering", () => {
  it("knows every top-level part of src/", () => {
    const parts = new Set(files(SRC).map(part));
    expect([...parts].filter((p) => !(p in MAY_IMPORT))).toEqual([]);
  });

  it("has no import from a lower part to a higher one", () => {
    expect(violations()).toEqual([]);
  });
});
