/**
 * @module The [vars] a local run of a real-shape model needs beyond wrangler.toml's defaults, for
 * `npm start -- --config …` and `npm run bench:e2e -- --dir …`. StageHosts hold dense weights in the
 * format DENSE_QUANT names (default int8 groups: one Qwen3-30B-A3B layer is about 19 MiB; as f32 it
 * is 73 MiB, over the default 64 MiB STAGE_HOST_BUDGET_MB). When one layer in that format is larger
 * than the stage budget, rather than refuse, the budget grows to one layer and the KV budget shrinks
 * so weights + KV + scratch still fit the Wasm cap; the caller prints the change. A model that fits
 * the defaults gets no change.
 *
 * `localRuntimeVars`: what one local workerd process needs to serve such a model at all. Every
 * ExpertHost, HeadHost and StageHost runs on the same thread there, so the first placement of the
 * Qwen3-30B-A3B slice (35 hosts, 2.2 GiB of experts) loads host after host for minutes, and a cold
 * host's first call waits behind the others' loads: past the production deadlines (15 s an expert
 * call) and past the 60 s keep-alive, which let the hosts warmed first be evicted before the rest
 * had loaded — every request then found cold hosts and answered 503.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { layerHeldBytes } from "../../src/model/dense-layers";
import type { ModelSpec } from "../../src/model/config";
import { WASM_MAX_BYTES } from "../../src/kernels/index";
import {
  DEFAULT_DENSE_QUANT,
  DENSE_QUANTS,
  denseFormatOf,
  STAGE_SCRATCH_BYTES,
  type DenseQuant,
} from "../../src/serving/stage-budgets";

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
 * The vars that let `spec` be served with its stage weights in DENSE_QUANT's format (from
 * `defaults`, else the code's default): none when its largest dense layer in that format fits
 * STAGE_HOST_BUDGET_MB, else that budget raised to the layer (whole MiB) and STAGE_KV_BUDGET_MB
 * lowered to what the Wasm cap leaves. Throws when even that leaves less than MIN_STAGE_KV_MB.
 */
export function serveVarsFor(spec: ModelSpec, defaults: Record<string, string>): ServeVars {
  const stageMb = Number(defaults.STAGE_HOST_BUDGET_MB ?? 64);
  const kvMb = Number(defaults.STAGE_KV_BUDGET_MB ?? 24);
  const quant = (defaults.DENSE_QUANT ?? DEFAULT_DENSE_QUANT) as DenseQuant;
  if (!DENSE_QUANTS.includes(quant)) throw new Error(`DENSE_QUANT "${quant}": one of ${DENSE_QUANTS.join(", ")}`);
  const format = denseFormatOf(quant);
  let layer = 0;
  for (let l = 0; l < spec.nLayers; l++) layer = Math.max(layer, layerHeldBytes(spec, l, format));
  const needMb = Math.ceil(layer / MIB);
  if (needMb <= stageMb) return { vars: {}, reasons: [] };
  const capMb = Math.floor((WASM_MAX_BYTES - STAGE_SCRATCH_BYTES) / MIB);
  const newKv = Math.min(kvMb, capMb - needMb);
  if (newKv < MIN_STAGE_KV_MB) {
    throw new Error(
      `one dense layer needs ${needMb} MiB as ${quant}, which leaves ${capMb - needMb} MiB of KV under the ` +
        `${WASM_MAX_BYTES / MIB} MiB Wasm cap (at least ${MIN_STAGE_KV_MB} needed)`,
    );
  }
  return {
    vars: { STAGE_HOST_BUDGET_MB: String(needMb), STAGE_KV_BUDGET_MB: String(newKv) },
    reasons: [
      `STAGE_HOST_BUDGET_MB=${needMb} (default ${stageMb}): one dense layer is ${(layer / MIB).toFixed(1)} MiB ` +
        `as ${quant} (DENSE_QUANT)`,
      `STAGE_KV_BUDGET_MB=${newKv} (default ${kvMb}): weights + KV + ${STAGE_SCRATCH_BYTES / MIB} MiB scratch ` +
        `≤ the ${WASM_MAX_BYTES / MIB} MiB Wasm cap`,
    ],
  };
}

/** Hosts stay loaded this long after their last call in a local run (HOST_KEEPALIVE_MS). */
export const LOCAL_KEEPALIVE_MS = 900_000;
/** An expert call's deadline in a local run: a cold host loads behind the others on one thread. */
export const LOCAL_EXPERT_RPC_TIMEOUT_MS = 120_000;
/** A stage / head / driver call's deadline: it waits for every expert call of its layers. */
export const LOCAL_PIPELINE_RPC_TIMEOUT_MS = 600_000;

/**
 * The deadlines and keep-alive a real-shape model needs in one local workerd process (`npm start --
 * --config`, `bench:e2e --dir`); a deployment keeps wrangler.toml's (each host is its own isolate).
 */
export function localRuntimeVars(): ServeVars {
  return {
    vars: {
      HOST_KEEPALIVE_MS: String(LOCAL_KEEPALIVE_MS),
      EXPERT_RPC_TIMEOUT_MS: String(LOCAL_EXPERT_RPC_TIMEOUT_MS),
      PIPELINE_RPC_TIMEOUT_MS: String(LOCAL_PIPELINE_RPC_TIMEOUT_MS),
    },
    reasons: [
      `HOST_KEEPALIVE_MS=${LOCAL_KEEPALIVE_MS} (default 60000): every host shares one local thread, so loading ` +
        "the placement takes minutes; hosts warmed first must still be loaded when the last one is",
      `EXPERT_RPC_TIMEOUT_MS=${LOCAL_EXPERT_RPC_TIMEOUT_MS}, ` +
        `PIPELINE_RPC_TIMEOUT_MS=${LOCAL_PIPELINE_RPC_TIMEOUT_MS} (defaults 15000, 120000): ` +
        "a cold host's first call waits behind the other hosts' loads",
    ],
  };
}
