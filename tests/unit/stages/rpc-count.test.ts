/**
 * Platform limits designed in: the worst request each deployment admits (longest generation,
 * largest prompt) stays within wrangler.toml's `[limits] subrequests`, for the demo model (the
 * Worker runs every layer) and for granite-3.1-1b-a400m (pipeline stages).
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../../../src/model/config";
import { expertBytesF32 } from "../../../src/model/architectures";
import { countRpcs, worstCaseLeaderRpcs, worstCaseRpcs } from "../../../src/stages/rpc-count";
import { LEAD_FOR_OTHERS_STEPS, MAX_STEP_ROWS } from "../../../src/serving/step-batcher";
import { PREFILL_CHUNK } from "../../../src/serving/stage-budgets";
import { deploymentShape } from "../../../src/stages/deployment";
import { demoModelConfig, DEMO_MODEL_SIZE } from "../../../scripts/lib/demo-model";

const ROOT = join(__dirname, "..", "..", "..");
const toml = readFileSync(join(ROOT, "wrangler.toml"), "utf8");

/** A number under `[limits]` or a string under `[vars]` in wrangler.toml. */
function tomlValue(section: string, key: string): string {
  const body = toml.split(/^\[/m).find((s) => s.startsWith(`${section}]`)) ?? "";
  const m = body.match(new RegExp(`^${key}\\s*=\\s*"?([^"\\n]*)"?`, "m"));
  if (!m) throw new Error(`wrangler.toml has no ${section}.${key}`);
  return m[1].trim();
}

const vars = Object.fromEntries(
  [
    "EXPERT_HOST_BUDGET_MB",
    "WORKER_BUDGET_MB",
    "MIN_EXPERT_HOSTS",
    "SPARE_SLOT_FRACTION",
    "STAGE_HOST_BUDGET_MB",
    "STAGE_KV_BUDGET_MB",
    "WORKER_KV_BUDGET_MB",
    "PIPELINE_STAGES",
    "HEAD_HOST_BUDGET_MB",
    "DENSE_QUANT",
    "MAX_EXPERT_HOSTS",
  ].map((k) => [k, tomlValue("vars", k)]),
);
const SUBREQUESTS = Number(tomlValue("limits", "subrequests"));
// The published config.json (a copy of ../shared/configs/granite-3.1-1b-a400m.json).
const GRANITE = join(ROOT, "tests", "fixtures", "configs", "granite-3.1-1b-a400m.json");

describe("RPC count per invocation", () => {
  it("counts the session driver's calls and none per token for the Worker when stages run the layers", () => {
    const i = {
      moeLayers: [0, 1, 2, 3],
      topK: 2,
      expertHosts: 4,
      stages: [
        { first: 0, end: 2 },
        { first: 2, end: 4 },
      ],
      prefillChunk: 128,
      attempts: 3,
      headShards: 0,
      embeddings: "worker" as const,
    };
    const r = countRpcs(i, 300, 10);
    expect(r.forwards).toBe(3 + 9);
    // The Worker: first load, open + end on 2 stages, one decode call to the session driver.
    expect(r.worker).toBe(1 + 2 * 2 + 1);
    // The driver: first load, one chain call per forward, end on 2 stages.
    expect(r.driverCall).toBe(1 + 12 + 2);
    expect(r.perToken.worker).toBe(0);
    // Per token in region: the driver's chain call, then per stage 2 MoE layers × 3 attempts ×
    // min(4 hosts, 1 × top-2) + placement/load, + 1 hop from stage 0 to stage 1.
    expect(r.perToken.inRegion).toBe(1 + 2 * (2 * 3 * 2 + 2) + 1);
    // With the head on 3 HeadHosts that also serve the tied embeddings: + 3 head + 1 embedding per token.
    const h = countRpcs({ ...i, headShards: 3, embeddings: "head-hosts" }, 300, 10);
    expect(h.perToken.inRegion - r.perToken.inRegion).toBe(3 + 1);
  });

  it("the demo's worst request fits [limits] subrequests (the Worker runs every layer)", () => {
    const spec = parseConfig(demoModelConfig(DEMO_MODEL_SIZE));
    const d = deploymentShape(spec, vars, expertBytesF32(spec), "demo-mixtral");
    expect(d.pipeline.stages).toEqual([]);
    expect(d.maxLen).toBe(4096);
    const w = worstCaseRpcs(d.rpcInput, d.maxLen);
    expect(w.forwards).toBe(4095);
    expect(w.worker).toBeLessThanOrEqual(SUBREQUESTS);
    // Without the raised limit the default (10,000) would cut a long generation off.
    expect(w.worker).toBeGreaterThan(10_000);
    // BATCHING on: a request leading shared steps — each step's fan-out reaching every ExpertHost,
    // one step per position of its own and LEAD_FOR_OTHERS_STEPS for the others — still fits.
    // The placement may grow to MAX_EXPERT_HOSTS: a step of many rows can reach every instance.
    expect(d.rpcInput.maxExpertHosts).toBe(Number(vars.MAX_EXPERT_HOSTS));
    const lead = worstCaseLeaderRpcs(d.rpcInput, d.maxLen, LEAD_FOR_OTHERS_STEPS, MAX_STEP_ROWS);
    expect(lead.perStep).toBe(d.rpcInput.moeLayers.length * Number(vars.MAX_EXPERT_HOSTS) * d.rpcInput.attempts + 2);
    expect(lead.worker).toBeGreaterThan(w.worker);
    expect(lead.worker).toBeLessThanOrEqual(SUBREQUESTS);
    // Unbounded steps for the others would not: a few times the bound overflows.
    const unbounded = worstCaseLeaderRpcs(d.rpcInput, d.maxLen, 8 * LEAD_FOR_OTHERS_STEPS, MAX_STEP_ROWS);
    expect(unbounded.worker).toBeGreaterThan(SUBREQUESTS);
  });

  it("granite-3.1-1b-a400m's worst request fits (stages; the KV budget bounds the length)", () => {
    const spec = parseConfig(JSON.parse(readFileSync(GRANITE, "utf8")));
    const d = deploymentShape(spec, vars, expertBytesF32(spec), "granite");
    expect(d.pipeline.stages.length).toBeGreaterThan(1);
    expect(d.head?.shards.length).toBeGreaterThan(1);
    expect(d.maxLen).toBeLessThan(spec.maxPositions);
    const w = worstCaseRpcs(d.rpcInput, d.maxLen);
    expect(w.worker).toBeLessThanOrEqual(SUBREQUESTS);
    expect(w.stageCall).toBeLessThanOrEqual(SUBREQUESTS);
    expect(w.driverCall).toBeLessThanOrEqual(SUBREQUESTS);
    // The decode loop runs in the region: no Worker↔region round trip per token.
    expect(w.perToken.worker).toBe(0);
    // BATCHING on: the driver's `decode` call leading shared steps (one runMany + the ends a step).
    const lead = worstCaseLeaderRpcs(d.rpcInput, d.maxLen, LEAD_FOR_OTHERS_STEPS, PREFILL_CHUNK);
    expect(lead.driverCall).toBeGreaterThan(w.driverCall);
    expect(lead.driverCall).toBeLessThanOrEqual(SUBREQUESTS);
    expect(lead.worker).toBe(w.worker);
  });

  it("cpu_ms is set to the platform maximum (long generations on the Worker's fast path)", () => {
    expect(Number(tomlValue("limits", "cpu_ms"))).toBe(300_000);
  });
});
