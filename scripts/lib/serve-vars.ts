/**
 * @module The [vars] a local run of a real-shape model needs beyond wrangler.toml's defaults, for
 * `npm start -- --config …` and `npm run bench:e2e -- --dir …`. StageHosts hold dense weights as
 * f32 today: one Qwen3-30B-A3B layer (attention 2048 → 32 × 128 / 4 × 128 heads, router) is
 * 73 MiB, over the default 64 MiB STAGE_HOST_BUDGET_MB. Rather than refuse, the stage budget grows
 * to one layer and the KV budget shrinks so weights + KV + scratch still fit the Wasm cap; the
 * caller prints the change. A model that fits the defaults gets no change.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { denseLayerBytes } from "../../src/model/architectures";
import type { ModelSpec } from "../../src/model/config";
import { WASM_MAX_BYTES } from "../../src/kernels/index";
import { STAGE_SCRATCH_BYTES } from "../../src/serving/stage-budgets";

const MIB = 1024 * 1024;
/** Below this a stage's KV budget would admit too short a request to be worth serving. */
const MIN_STAGE_KV_MB = 8;

/** wrangler.toml's [vars] (string values, as the Worker sees them). */
export function tomlVars(root: string): Record<string, string> {
  const toml = readFileSync(join(root, "wrangler.toml"), "utf8");
  return Object.fromEntries([...toml.matchAll(/^([A-Z_]+)\s*=\s*"([^"]*)"/gm)].map((m) => [m[1], m[2]]));
}

export interface ServeVars {
  vars: Record<string, string>;
  /** Why each var was set, for the operator. */
  reasons: string[];
}

/**
 * The vars that let `spec` be served with f32 stage weights: none when its largest dense layer fits
 * STAGE_HOST_BUDGET_MB, else that budget raised to the layer (whole MiB) and STAGE_KV_BUDGET_MB
 * lowered to what the Wasm cap leaves. Throws when even that leaves less than MIN_STAGE_KV_MB.
 */
export function serveVarsFor(spec: ModelSpec, defaults: Record<string, string>): ServeVars {
  const stageMb = Number(defaults.STAGE_HOST_BUDGET_MB ?? 64);
  const kvMb = Number(defaults.STAGE_KV_BUDGET_MB ?? 24);
  let layer = 0;
  for (let l = 0; l < spec.nLayers; l++) layer = Math.max(layer, denseLayerBytes(spec, l));
  const needMb = Math.ceil(layer / MIB);
  if (needMb <= stageMb) return { vars: {}, reasons: [] };
  const capMb = Math.floor((WASM_MAX_BYTES - STAGE_SCRATCH_BYTES) / MIB);
  const newKv = Math.min(kvMb, capMb - needMb);
  if (newKv < MIN_STAGE_KV_MB) {
    throw new Error(
      `one dense layer needs ${needMb} MiB as f32, which leaves ${capMb - needMb} MiB of KV under the ` +
        `${WASM_MAX_BYTES / MIB} MiB Wasm cap (at least ${MIN_STAGE_KV_MB} needed)`,
    );
  }
  return {
    vars: { STAGE_HOST_BUDGET_MB: String(needMb), STAGE_KV_BUDGET_MB: String(newKv) },
    reasons: [
      `STAGE_HOST_BUDGET_MB=${needMb} (default ${stageMb}): one dense layer is ${(layer / MIB).toFixed(1)} MiB ` +
        "as f32 (StageHosts hold f32 dense weights)",
      `STAGE_KV_BUDGET_MB=${newKv} (default ${kvMb}): weights + KV + ${STAGE_SCRATCH_BYTES / MIB} MiB scratch ` +
        `≤ the ${WASM_MAX_BYTES / MIB} MiB Wasm cap`,
    ],
  };
}
