/**
 * @module Sizing plan for a model config under a deployment's vars, computed by the functions that
 * place a real deployment — `deploymentShape` (src/stages/deployment.ts: the pipeline stages of
 * `planPipeline`, the head shards of `planHeadShards`, the first expert placement of
 * `initialPlacement` with the slices ExpertHosts choose, the KV-bound longest request) and
 * `countRpcs` / `worstCaseRpcs` (src/stages/rpc-count.ts) — so the plan is what a deployment of
 * these vars would do today, not a model of it. What this module adds: bytes streamed per token,
 * the longest generation within the subrequest limit, a projected decode latency, and the table.
 * Pure: the CLI (scripts/plan.ts) reads files and prints.
 */
import { parseConfig, type ModelSpec } from "../../src/model/config";
import { ModelFormatError } from "../../src/model/errors";
import { denseLayerBytes } from "../../src/model/architectures";
import { maxSliceBytes } from "../../src/experts/slices";
import type { ExpertDtype } from "../../src/kernels/packing";
import type { Vars } from "../../src/platform/env";
import { deploymentShape, expertDeployment, type DeploymentShape } from "../../src/stages/deployment";
import { countRpcs, worstCaseRpcs, type RpcCount } from "../../src/stages/rpc-count";

/** Expert formats as `EXPERT_QUANT` / `convert --quant` name them. */
export type PlanDtype = "f32" | "int8" | "int8-group" | "int4";
export const PLAN_DTYPES: readonly PlanDtype[] = ["f32", "int8", "int8-group", "int4"];
const HELD: Record<PlanDtype, ExpertDtype> = { f32: "f32", int8: "q8", "int8-group": "q8g", int4: "q4" };

export interface PlanOptions {
  /** The deployment's vars (wrangler.toml [vars] with the CLI's overrides). */
  vars: Vars;
  /** How the ExpertHosts hold experts (the checkpoint's format after `convert`). */
  expertDtype: PlanDtype;
  /** Subrequests one invocation may make (wrangler.toml [limits], else the Workers Paid 1000). */
  subrequestLimit: number;
  /** The generation counted against it: prompt tokens and tokens generated. */
  promptTokens: number;
  tokens: number;
}

export interface LatencyCosts {
  /** One in-region RPC round trip (Worker ↔ DO), ms. */
  rpcMs: number;
  /** User ↔ region round trip, ms (paid once per request, before the first token). */
  userRttMs: number;
  /** Decode-time kernel cost per weight, ns. */
  nsPerWeight: number;
  /** Where nsPerWeight came from. */
  kernelSource: string;
}

export interface ExpertPlan {
  instances: number;
  /** One whole expert as the hosts hold it (dtype's real bytes). */
  bytesPerExpert: number;
  /** One placement unit: the expert, or its largest slice. */
  unitBytes: number;
  slicesPerExpert: number;
  /** Most units the first placement puts on one ExpertHost. */
  unitsPerInstance: number;
  totalBytes: number;
}

export interface Plan {
  name: string;
  modelType: string;
  nLayers: number;
  moeLayers: number;
  nExperts: number;
  topK: number;
  /** The shipped functions' result; null when they refused (see `blockers`). */
  shape: DeploymentShape | null;
  /** Pipeline stages (0: the Worker runs every layer) and the largest one's dense bytes. */
  stage: { instances: number; maxBytesPerInstance: number; maxBytesPerLayer: number } | null;
  /** Head shards (0: the Worker holds the head) and the largest one's bytes. */
  head: { instances: number; bytesPerInstance: number } | null;
  expert: ExpertPlan | null;
  /** Longest prompt + generation one request may have. */
  maxLen: number | null;
  /** RPCs per decoded token: from the Worker, and inside the model's region (the stage chain). */
  rpcsPerToken: { worker: number; inRegion: number } | null;
  bytesStreamedPerToken: number | null;
  subrequests: {
    /** The generation of promptTokens + tokens, per invocation. */
    generation: RpcCount;
    /** The invocation with the most subrequests, and how many. */
    busiest: { invocation: "Worker" | "StageHost call" | "session driver"; count: number };
    limit: number;
    /** Longest generation after promptTokens within the limit (and maxLen). */
    maxTokens: number;
    /** The worst request the KV budgets admit. */
    worst: RpcCount;
  } | null;
  decodeMsPerToken: number | null;
  firstTokenExtraMs: number;
  /** Why it cannot be served now, in the shipped functions' words (empty = servable). */
  blockers: string[];
  notes: string[];
}

export interface Refusal {
  name: string;
  modelType: string;
  field: string;
  message: string;
}

const MIB = 1 << 20;

/**
 * A config as the planner takes it: an fp8 `quantization_config` is dropped (convert dequantizes
 * DeepSeek's fp8 blocks), every other refusal of parseConfig is returned with its field.
 */
export function specForPlan(
  name: string,
  cfg: Record<string, unknown>,
): { spec: ModelSpec; notes: string[] } | Refusal {
  const notes: string[] = [];
  const copy = { ...cfg };
  const q = copy.quantization_config as Record<string, unknown> | undefined | null;
  if (q && q.quant_method === "fp8") {
    delete copy.quantization_config;
    notes.push("fp8 checkpoint: `convert` dequantizes its 128×128 blocks");
  }
  try {
    return { spec: parseConfig(copy, name), notes };
  } catch (e) {
    if (!(e instanceof ModelFormatError)) throw e;
    // Name every blocker we know of, not only the first the parser met.
    const quant =
      q && q.quant_method !== "fp8" ? `; also quantization_config.quant_method ${JSON.stringify(q.quant_method)}` : "";
    const extra = quant && e.field !== "quantization_config" ? `${quant} (convert dequantizes fp8 only)` : "";
    return { name, modelType: String(cfg.model_type), field: e.field ?? "config", message: e.message + extra };
  }
}

export function isRefusal(x: unknown): x is Refusal {
  return typeof x === "object" && x !== null && "field" in x && "message" in x;
}

function expertPlan(spec: ModelSpec, dtype: PlanDtype, placement: DeploymentShape["experts"], slices: number) {
  const perInstance = new Array<number>(placement.instances.length).fill(0);
  for (const row of placement.replicas) for (const reps of row) for (const r of reps) perInstance[r.instance]++;
  const bytesPerExpert = maxSliceBytes(HELD[dtype], spec.dModel, spec.dFf, 1);
  return {
    instances: placement.instances.length,
    bytesPerExpert,
    unitBytes: maxSliceBytes(HELD[dtype], spec.dModel, spec.dFf, slices),
    slicesPerExpert: slices,
    unitsPerInstance: Math.max(...perInstance),
    totalBytes: bytesPerExpert * spec.moeLayers.length * spec.nExperts,
  };
}

const busiestOf = (c: RpcCount) => {
  const all = [
    ["Worker", c.worker],
    ["StageHost call", c.stageCall],
    ["session driver", c.driverCall],
  ] as const;
  const [invocation, count] = all.reduce((a, b) => (b[1] > a[1] ? b : a));
  return { invocation, count };
};

/** The plan of one parsed config; the shipped functions' refusals become blockers. */
export function planModel(
  name: string,
  spec: ModelSpec,
  o: PlanOptions,
  costs: LatencyCosts,
  notesIn: string[] = [],
): Plan {
  const blockers: string[] = [];
  const notes = [...notesIn];
  const base = {
    name,
    modelType: spec.modelType,
    nLayers: spec.nLayers,
    moeLayers: spec.moeLayers.length,
    nExperts: spec.nExperts,
    topK: spec.topK,
    firstTokenExtraMs: costs.userRttMs,
    notes,
  };
  let shape: DeploymentShape;
  try {
    shape = deploymentShape(spec, o.vars, HELD[o.expertDtype], name);
  } catch (e) {
    blockers.push((e as Error).message);
    // The experts' part alone, for what it tells (their own refusal is a blocker too).
    let expert: ExpertPlan | null = null;
    try {
      const x = expertDeployment(spec, o.vars, HELD[o.expertDtype], name);
      expert = expertPlan(spec, o.expertDtype, x.placement, x.slices);
    } catch (e2) {
      if ((e2 as Error).message !== (e as Error).message) blockers.push((e2 as Error).message);
    }
    const none = { stage: null, head: null, maxLen: null, rpcsPerToken: null, bytesStreamedPerToken: null };
    return { ...base, ...none, shape: null, expert, subrequests: null, decodeMsPerToken: null, blockers };
  }
  const stages = shape.pipeline.stages;
  const layerBytes = spec.layers.map((_, l) => denseLayerBytes(spec, l));
  const shards = shape.head?.shards ?? [];
  const expert = expertPlan(spec, o.expertDtype, shape.experts, shape.expertSlices);
  const r = shape.rpcInput;
  const prompt = Math.min(o.promptTokens, shape.maxLen - 1);
  const tokens = Math.min(o.tokens, shape.maxLen - prompt);
  if (prompt + o.tokens > shape.maxLen)
    notes.push(
      `${o.promptTokens} + ${o.tokens} tokens exceed the longest request (${shape.maxLen}): counted as ${tokens}`,
    );
  const generation = countRpcs(r, prompt, tokens);
  const busiest = busiestOf(generation);
  // Counts grow with the tokens generated: the longest generation within the limit by bisection.
  let lo = 0;
  let hi = shape.maxLen - prompt;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (busiestOf(countRpcs(r, prompt, mid)).count <= o.subrequestLimit) lo = mid;
    else hi = mid - 1;
  }
  const promptOnly = busiestOf(countRpcs(r, prompt, 0));
  if (promptOnly.count > o.subrequestLimit)
    notes.push(
      `the prompt alone (${prompt} tokens) needs ${promptOnly.count} subrequests in one ${promptOnly.invocation} ` +
        `invocation > the limit ${o.subrequestLimit}: no generation fits`,
    );
  else if (busiest.count > o.subrequestLimit)
    notes.push(
      `${prompt} + ${tokens} tokens need ${busiest.count} subrequests in one ${busiest.invocation} invocation > the ` +
        `limit ${o.subrequestLimit}: at most ${lo} tokens a request`,
    );
  const perToken = generation.perToken;
  // Bytes per decoded token: f32 activations in and out of every stage hop and expert row, the
  // hidden state to every head shard and its logits back.
  const d = spec.dModel;
  const act = 4 * d;
  const fanOutRows = spec.moeLayers.length * r.topK;
  const headBytes = shards.length > 0 ? shards.length * act + 4 * spec.vocabSize : 0;
  const bytesStreamed = stages.length * 2 * act + fanOutRows * 2 * act + headBytes;
  // Latency: the stage hops, one parallel fan-out per MoE layer and one head round are sequential;
  // kernel time counts the weights one token touches (a unit's slice runs beside its siblings).
  const hops = stages.length + spec.moeLayers.length + (shards.length > 0 ? 1 : 0);
  const denseWeights = layerBytes.reduce((s, x) => s + x, 0) / 4;
  const unitWeights = (3 * d * spec.dFf) / shape.expertSlices;
  const headWeights = (spec.vocabSize * d) / Math.max(1, shards.length);
  const kernelMs = ((denseWeights + spec.moeLayers.length * unitWeights + headWeights) * costs.nsPerWeight) / 1e6;
  return {
    ...base,
    shape,
    stage: {
      instances: stages.length,
      maxBytesPerInstance: stages.length > 0 ? Math.max(...stages.map((s) => s.bytes)) : 0,
      maxBytesPerLayer: Math.max(...layerBytes),
    },
    head: {
      instances: shards.length,
      bytesPerInstance: shards.length > 0 ? Math.max(...shards.map((s) => s.bytes)) : 0,
    },
    expert,
    maxLen: shape.maxLen,
    rpcsPerToken: perToken,
    bytesStreamedPerToken: bytesStreamed,
    subrequests: {
      generation,
      busiest,
      limit: o.subrequestLimit,
      maxTokens: lo,
      worst: worstCaseRpcs(r, shape.maxLen),
    },
    decodeMsPerToken: hops * costs.rpcMs + kernelMs,
    blockers,
  };
}

/** The `[vars]` table of a wrangler.toml as strings (its flat KEY = "value" lines). */
export function parseWranglerVars(toml: string): Record<string, string> {
  const at = toml.search(/^\[vars\]\s*$/m);
  if (at < 0) return {};
  const body = toml.slice(at).split(/^\[/m)[1] ?? "";
  const vars: Record<string, string> = {};
  for (const m of body.matchAll(/^([A-Z0-9_]+)\s*=\s*"([^"]*)"/gm)) vars[m[1]] = m[2];
  return vars;
}

export function mib(bytes: number): string {
  return bytes >= 1 << 30 ? `${(bytes / (1 << 30)).toFixed(1)} GiB` : `${(bytes / MIB).toFixed(1)} MiB`;
}

/** One markdown row per plan or refusal. */
export function tableRows(items: (Plan | Refusal)[]): string[] {
  const head = [
    "| config | StageHosts | HeadHosts | ExpertHosts (units/host) | expert (slices) | RPCs/token | KiB/token | " +
      "subreq. busiest (max tokens) | decode ms/token | servable? |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ];
  const esc = (s: string) => s.replace(/\|/g, "\\|");
  return head.concat(
    items.map((p) => {
      if (isRefusal(p))
        return `| ${p.name} | — | — | — | — | — | — | — | — | refused: \`${p.field}\` — ${esc(p.message)} |`;
      const e = p.expert;
      const experts = e ? `${e.instances} (${e.unitsPerInstance})` : "—";
      const size = e
        ? `${mib(e.bytesPerExpert)}${e.slicesPerExpert > 1 ? ` (${e.slicesPerExpert} × ≤${mib(e.unitBytes)})` : ""}`
        : "—";
      const ok = p.blockers.length === 0 ? "yes" : `no: ${esc(p.blockers.join("; "))}`;
      if (!p.stage || !p.head || !p.rpcsPerToken || !p.subrequests || p.decodeMsPerToken === null)
        return `| ${p.name} | — | — | ${experts} | ${size} | — | — | — | — | ${ok} |`;
      const stages =
        p.stage.instances === 0 ? "0 (Worker)" : `${p.stage.instances} × ≤${mib(p.stage.maxBytesPerInstance)}`;
      const heads = p.head.instances === 0 ? "0 (Worker)" : `${p.head.instances} × ${mib(p.head.bytesPerInstance)}`;
      const rpcs = p.rpcsPerToken.worker + p.rpcsPerToken.inRegion;
      const s = p.subrequests;
      return (
        `| ${p.name} | ${stages} | ${heads} | ${experts} | ${size} | ${rpcs} | ` +
        `${((p.bytesStreamedPerToken ?? 0) / 1024).toFixed(1)} | ` +
        `${s.busiest.count} ${s.busiest.invocation} (${s.maxTokens}) | ` +
        `${p.decodeMsPerToken.toFixed(1)} | ${ok} |`
      );
    }),
  );
}
