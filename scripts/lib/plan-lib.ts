/**
 * @module Sizing plan for a model config under the instance budgets: how many StageHosts (dense
 * layers), HeadHosts (embedding + output head) and ExpertHosts (routed experts) it needs, bytes per
 * instance, RPCs and bytes per decoded token, subrequests per generation against the limit, and a
 * projected decode latency. Pure: the CLI (scripts/plan.ts) reads files and prints.
 *
 * Byte counts follow the formats the hosts hold: dense weights in the stage format (int8, groups of
 * 64: 1 + 4/64 bytes a weight; f32 norms), experts as f32 (4), int8 per output channel (1 + one f32
 * scale a row) or int4 (0.5 + one bf16 scale per 32 weights).
 */
import { parseConfig, type ModelSpec } from "../../src/model/config";
import { ModelFormatError } from "../../src/model/errors";

export type ExpertDType = "f32" | "int8" | "int4";

export interface PlanBudgets {
  /** MiB of dense weights one StageHost holds. */
  stageMb: number;
  /** MiB of head/embedding rows one HeadHost holds. */
  headMb: number;
  /** MiB of expert weights one ExpertHost holds. */
  expertMb: number;
  expertDtype: ExpertDType;
  /** Subrequests one Worker invocation may make (Workers Paid default 1000). */
  subrequestLimit: number;
  /** Tokens generated in the generation the subrequest count is for. */
  tokens: number;
}

export interface LatencyCosts {
  /** One in-region RPC round trip (Worker ↔ DO), ms. */
  rpcMs: number;
  /** User ↔ region round trip, ms (paid once per request, before the first token). */
  userRttMs: number;
  /** Decode-time kernel cost per weight, ns (int8 dense / experts). */
  nsPerWeight: number;
  /** Where nsPerWeight came from. */
  kernelSource: string;
}

export interface Plan {
  name: string;
  modelType: string;
  nLayers: number;
  moeLayers: number;
  nExperts: number;
  topK: number;
  stage: { instances: number; bytesPerLayer: number; maxBytesPerInstance: number; layersPerInstance: number };
  head: { instances: number; bytes: number; bytesPerInstance: number };
  expert: {
    instances: number;
    bytesPerExpert: number;
    expertsPerInstance: number;
    /** > 1 when one expert is larger than a host: it must be sliced along its intermediate dim. */
    slicesPerExpert: number;
    totalBytes: number;
  };
  rpcsPerToken: number;
  bytesStreamedPerToken: number;
  subrequests: { perGeneration: number; limit: number; maxTokens: number };
  decodeMsPerToken: number;
  firstTokenExtraMs: number;
  /** Why it cannot be served now (empty = servable; the subrequest limit only caps tokens per request). */
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
const STAGE_BYTES_PER_WEIGHT = 1 + 4 / 64;

/** Bytes of one expert's three matrices in a host's format. */
export function expertBytes(dModel: number, dFf: number, dtype: ExpertDType): number {
  const weights = 3 * dModel * dFf;
  if (dtype === "f32") return 4 * weights;
  // Rows of w1/w3 are dFf outputs of dModel inputs; w2 has dModel rows of dFf.
  if (dtype === "int8") return weights + 4 * (2 * dFf + dModel);
  // int4 (src/kernels/q4g-format.ts): two weights a byte, one bf16 scale per 32 inputs.
  return weights / 2 + (2 * weights) / 32;
}

/** Dense weights of layer L in the stage format (attention, dense MLP or shared experts + router, norms). */
export function denseLayerBytes(spec: ModelSpec, L: number): number {
  const d = spec.dModel;
  const a = spec.attention;
  let w: number;
  if (a.kind === "gqa") {
    w = d * a.nHeads * a.headDim * 2 + d * a.nKvHeads * a.headDim * 2;
  } else {
    const qk = a.qkNopeHeadDim + a.qkRopeHeadDim;
    const q = a.qLoraRank === null ? d * a.nHeads * qk : d * a.qLoraRank + a.qLoraRank * a.nHeads * qk;
    w = q + d * (a.kvLoraRank + a.qkRopeHeadDim) + a.kvLoraRank * a.nHeads * (a.qkNopeHeadDim + a.vHeadDim);
    w += a.nHeads * a.vHeadDim * d;
  }
  const layer = spec.layers[L];
  if (layer.kind === "dense") w += 3 * d * layer.dFf;
  else {
    w += spec.nExperts * d;
    if (spec.sharedExperts) w += 3 * d * spec.sharedExperts.dFf + (spec.sharedExperts.gated ? d : 0);
  }
  const norms = 4 * 2 * d;
  return Math.ceil(w * STAGE_BYTES_PER_WEIGHT) + norms;
}

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

/**
 * Subrequests are counted as if the Worker's one invocation issued every RPC of the generation (the
 * conservative case); RPCs a StageHost issues itself count against that host's own invocation.
 */
export function planModel(
  name: string,
  spec: ModelSpec,
  b: PlanBudgets,
  costs: LatencyCosts,
  notesIn: string[] = [],
): Plan {
  const blockers: string[] = [];
  const notes = [...notesIn];
  const d = spec.dModel;
  // StageHosts: consecutive layers packed greedily under the budget.
  const stageBudget = b.stageMb * MIB;
  const perLayer = spec.layers.map((_, L) => denseLayerBytes(spec, L));
  let stages = 0;
  let fill = 0;
  let maxFill = 0;
  const tooBig = perLayer.filter((bytes) => bytes > stageBudget);
  if (tooBig.length > 0) {
    blockers.push(
      `${tooBig.length} layers' dense weights (up to ${mib(Math.max(...tooBig))}) exceed a StageHost ` +
        `(${b.stageMb} MiB); a layer split over StageHosts is not implemented`,
    );
  }
  for (const bytes of perLayer) {
    if (stages === 0 || fill + bytes > stageBudget) {
      stages++;
      fill = 0;
    }
    fill += bytes;
    maxFill = Math.max(maxFill, fill);
  }
  // HeadHosts: embedding rows and lm_head rows (one matrix when tied), split by rows.
  const headBytes = Math.ceil(spec.vocabSize * d * STAGE_BYTES_PER_WEIGHT) * (spec.tieEmbeddings ? 1 : 2);
  const headHosts = Math.max(1, Math.ceil(headBytes / (b.headMb * MIB)));
  // ExpertHosts.
  const eBytes = expertBytes(d, spec.dFf, b.expertDtype);
  const eBudget = b.expertMb * MIB;
  const nMoe = spec.moeLayers.length;
  const totalExperts = nMoe * spec.nExperts;
  const slices = Math.max(1, Math.ceil(eBytes / eBudget));
  const perHost = slices > 1 ? 1 : Math.floor(eBudget / eBytes);
  const expertHosts = slices > 1 ? totalExperts * slices : Math.ceil(totalExperts / perHost);
  if (slices > 1)
    blockers.push(
      `one ${b.expertDtype} expert (${mib(eBytes)}) exceeds an ExpertHost (${b.expertMb} MiB): ` +
        `needs ${slices} slices (sliced experts are not implemented yet)`,
    );
  // Per decoded token: one hop per stage, one fan-out per MoE layer (top-k experts, each slice a call,
  // at most one call per host), one call per head shard.
  const fanOut = Math.min(spec.topK * slices, expertHosts);
  const rpcs = stages + nMoe * fanOut + headHosts;
  const act = 4 * d;
  const bytesPerToken =
    stages * 2 * act + nMoe * fanOut * 2 * act + headHosts * (act + 4 * Math.ceil(spec.vocabSize / headHosts));
  const perGeneration = rpcs * b.tokens;
  const maxTokens = Math.floor(b.subrequestLimit / rpcs);
  if (perGeneration > b.subrequestLimit) {
    notes.push(
      `${b.tokens} tokens need ${perGeneration} subrequests > the limit ${b.subrequestLimit}: ` +
        `at most ${maxTokens} tokens per request`,
    );
  }
  // Latency: hops are sequential; a layer's experts run in parallel on different hosts.
  const denseWeights = perLayer.reduce((s, x) => s + x, 0) / STAGE_BYTES_PER_WEIGHT;
  const expertWeightsPerCall = (3 * d * spec.dFf) / slices;
  const kernelMs =
    ((denseWeights +
      nMoe * expertWeightsPerCall +
      headBytes / STAGE_BYTES_PER_WEIGHT / (spec.tieEmbeddings ? 1 : 2) / headHosts) *
      costs.nsPerWeight) /
    1e6;
  const decodeMs = (stages + nMoe + 1) * costs.rpcMs + kernelMs;
  return {
    name,
    modelType: spec.modelType,
    nLayers: spec.nLayers,
    moeLayers: nMoe,
    nExperts: spec.nExperts,
    topK: spec.topK,
    stage: {
      instances: stages,
      bytesPerLayer: Math.max(...perLayer),
      maxBytesPerInstance: maxFill,
      layersPerInstance: Math.ceil(spec.nLayers / stages),
    },
    head: { instances: headHosts, bytes: headBytes, bytesPerInstance: Math.ceil(headBytes / headHosts) },
    expert: {
      instances: expertHosts,
      bytesPerExpert: eBytes,
      expertsPerInstance: perHost,
      slicesPerExpert: slices,
      totalBytes: eBytes * totalExperts,
    },
    rpcsPerToken: rpcs,
    bytesStreamedPerToken: bytesPerToken,
    subrequests: { perGeneration, limit: b.subrequestLimit, maxTokens },
    decodeMsPerToken: decodeMs,
    firstTokenExtraMs: costs.userRttMs,
    blockers,
    notes,
  };
}

export function mib(bytes: number): string {
  return bytes >= 1 << 30 ? `${(bytes / (1 << 30)).toFixed(1)} GiB` : `${(bytes / MIB).toFixed(1)} MiB`;
}

/** One markdown row per plan or refusal. */
export function tableRows(items: (Plan | Refusal)[]): string[] {
  const head = [
    "| config | StageHosts | HeadHosts | ExpertHosts (experts/host) | expert | RPCs/token | KiB/token | " +
      "subreq. (max tokens) | decode ms/token | fits the budgets? |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ];
  return head.concat(
    items.map((p) => {
      if (isRefusal(p)) {
        const why = p.message.replace(/\|/g, "\\|");
        return `| ${p.name} | — | — | — | — | — | — | — | — | refused: \`${p.field}\` — ${why} |`;
      }
      const e =
        p.expert.slicesPerExpert > 1
          ? `${p.expert.instances} (${p.expert.slicesPerExpert} slices/expert)`
          : `${p.expert.instances} (${p.expert.expertsPerInstance})`;
      const ok = p.blockers.length === 0 ? "yes" : `no: ${p.blockers.join("; ")}`;
      return (
        `| ${p.name} | ${p.stage.instances} × ≤${mib(p.stage.maxBytesPerInstance)} | ` +
        `${p.head.instances} × ${mib(p.head.bytesPerInstance)} | ${e} | ` +
        `${mib(p.expert.bytesPerExpert)} | ${p.rpcsPerToken} | ${(p.bytesStreamedPerToken / 1024).toFixed(1)} | ` +
        `${p.subrequests.perGeneration} (${p.subrequests.maxTokens}) | ${p.decodeMsPerToken.toFixed(1)} | ${ok} |`
      );
    }),
  );
}
