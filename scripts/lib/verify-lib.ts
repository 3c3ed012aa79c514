/**
 * Golden-fixture verification through the real serving path (shared by `npm run verify` and
 * the integration tests), optionally with the layers forced onto StageHost pipeline stages and the
 * experts forced into slices.
 */
import { readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { startLocalWorker, ADMIN_TOKEN_FOR_TESTS } from "./local-worker";
import { seedModelDir } from "./seed-lib";

export const LOGITS_ATOL = 1e-4;
export const MOE_ATOL = 1e-5;

/** A fixture's golden.json (../shared/fixtures/README.md): reference logits, greedy ids, routing. */
export interface Golden {
  prompt_ids: number[];
  logits: number[][];
  greedy_ids: number[];
  moe_layer: {
    layer: number;
    input: number[][] | number[][][];
    expert_ids: number[][];
    expert_weights: number[][];
    output: number[][] | number[][][];
  };
  extra?: { routing_all_layers?: Record<string, number[][]>; greedy_logits?: number[][] };
}

export interface VerifyReport {
  pass: boolean;
  maxLogitDiff: number;
  maxGreedyLogitDiff: number | null;
  greedyMatch: boolean;
  apiGreedyMatch: boolean;
  routingAgreement: { layer: number; agree: number; total: number }[];
  moeOutputDiff: number;
  moeWeightDiff: number;
  moeIdsMatch: boolean;
  hosts: number;
  /** Slices per expert in the placement (1: whole experts). */
  expertSlices: number;
  rpcsPerLayer: number[];
  /** StageHosts that ran the layers (from /admin/hosts), with their layer ranges. */
  stageHosts: {
    name: string;
    first: number | null;
    end: number | null;
    bytesHeld: number;
    budgetBytes: number;
    /** Must be "f32" here: verify forces DENSE_QUANT = "f32" (1e-4 logits). */
    denseFormat: string | null;
  }[];
  /** HeadHost shards that ran the output head (from /admin/hosts). */
  headHosts: { name: string; rowStart: number; rowEnd: number; bytesLoaded: number; budgetBytes: number }[];
}

export interface VerifyOptions {
  /** ExpertHost instances (MIN_EXPERT_HOSTS). */
  hosts: number;
  /** Force the dense layers onto this many StageHost pipeline stages (0 = as deployed). */
  stages?: number;
  /** Force the output head onto this many HeadHost vocabulary shards (0 = as deployed). */
  headShards?: number;
  /** Force every expert into this many slices over the ExpertHosts (EXPERT_SLICES; 0 = as deployed). */
  expertSlices?: number;
  log?: (line: string) => void;
}

export async function verifyFixture(dir: string, opts: VerifyOptions): Promise<VerifyReport> {
  const log = opts.log ?? (() => {});
  const golden = JSON.parse(readFileSync(join(dir, "golden.json"), "utf8")) as Golden;
  const model = `verify-${basename(dir).replace(/[^A-Za-z0-9._-]/g, "-")}`.slice(0, 100);
  const stages = opts.stages ?? 0;
  const worker = await startLocalWorker({
    vars: {
      MIN_EXPERT_HOSTS: String(opts.hosts),
      DEFAULT_MODEL: model,
      PIPELINE_STAGES: String(stages),
      HEAD_SHARDS: String(opts.headShards ?? 0),
      EXPERT_SLICES: String(opts.expertSlices ?? 0),
      // Golden logits need 1e-4: stages hold f32 here whatever the deployment's DENSE_QUANT.
      DENSE_QUANT: "f32",
    },
  });
  try {
    await seedModelDir(await worker.bucket(), dir, model, { skip: (f) => f === "golden.json" });
    const auth = { authorization: `Bearer ${ADMIN_TOKEN_FOR_TESTS}`, "content-type": "application/json" };
    const post = async (path: string, body: unknown) => {
      const res = await worker.fetch(path, { method: "POST", headers: auth, body: JSON.stringify(body) });
      const json = (await res.json()) as Record<string, unknown>;
      if (!res.ok) throw new Error(`${path} → ${res.status}: ${JSON.stringify(json)}`);
      return json;
    };

    // 1. Logits of every prompt position, greedy decode over the KV cache, routing of every layer.
    const fwd = (await post("/admin/forward", {
      model,
      tokens: golden.prompt_ids,
      greedy: golden.greedy_ids.length,
    })) as {
      logits: number[][];
      greedy_ids: number[];
      greedy_logits: number[][];
      routing: Record<string, { expert_ids: number[][]; expert_weights: number[][] }>;
      rpcs_per_layer: number[];
    };
    const maxLogitDiff = maxAbsDiff(fwd.logits, golden.logits);
    const greedyMatch = sameIds(fwd.greedy_ids, golden.greedy_ids);
    const gl = golden.extra?.greedy_logits;
    const maxGreedyLogitDiff = gl ? maxAbsDiff(fwd.greedy_logits, gl) : null;

    // 2. The same greedy tokens through the public API (temperature 0).
    const api = (await post("/v1/completions", {
      model,
      prompt: golden.prompt_ids,
      max_tokens: golden.greedy_ids.length,
      temperature: 0,
    })) as {
      choices: { token_ids: number[]; finish_reason: string }[];
    };
    const apiIds = api.choices[0].token_ids;
    // The API stops at EOS; compare what it produced against the golden prefix.
    const apiGreedyMatch =
      apiIds.length > 0 &&
      sameIds(apiIds, golden.greedy_ids.slice(0, apiIds.length)) &&
      (apiIds.length === golden.greedy_ids.length || api.choices[0].finish_reason === "stop");

    // 3. Expert ids per token, every MoE layer (as sets: top-k order may differ between engines).
    const goldenRouting = golden.extra?.routing_all_layers ?? { [golden.moe_layer.layer]: golden.moe_layer.expert_ids };
    const routingAgreement = Object.entries(goldenRouting).map(([layer, ids]) => {
      const ours = fwd.routing[layer]?.expert_ids ?? [];
      const agree = ids.filter((g, t) => sameSet(g, ours[t] ?? [])).length;
      return { layer: Number(layer), agree, total: ids.length };
    });

    // 4. One MoE block fed the golden block input: output and (id, weight) pairs.
    const moe = (await post("/admin/moe", {
      model,
      layer: golden.moe_layer.layer,
      input: rows(golden.moe_layer.input),
    })) as {
      output: number[][];
      expert_ids: number[][];
      expert_weights: number[][];
    };
    const moeOutputDiff = maxAbsDiff(moe.output, rows(golden.moe_layer.output));
    let moeWeightDiff = 0;
    let moeIdsMatch = true;
    golden.moe_layer.expert_ids.forEach((gIds, t) => {
      const g = byId(gIds, golden.moe_layer.expert_weights[t]);
      const o = byId(moe.expert_ids[t], moe.expert_weights[t]);
      if (
        !sameIds(
          g.map((p) => p[0]),
          o.map((p) => p[0]),
        )
      )
        moeIdsMatch = false;
      else g.forEach((p, i) => (moeWeightDiff = Math.max(moeWeightDiff, Math.abs(p[1] - o[i][1]))));
    });

    const placement = (await (await worker.fetch(`/v1/placement?model=${model}`)).json()) as {
      instances: unknown[];
      expert_slices?: number;
    };
    const expertSlices = placement.expert_slices ?? 1;
    const hostsRes = (await (await worker.fetch(`/admin/hosts?model=${model}`, { headers: auth })).json()) as {
      stages?: VerifyReport["stageHosts"];
      heads?: VerifyReport["headHosts"];
    };
    const stageHosts = hostsRes.stages ?? [];
    const headHosts = hostsRes.heads ?? [];
    const pass =
      maxLogitDiff <= LOGITS_ATOL &&
      (maxGreedyLogitDiff === null || maxGreedyLogitDiff <= LOGITS_ATOL) &&
      greedyMatch &&
      apiGreedyMatch &&
      routingAgreement.every((r) => r.agree === r.total) &&
      moeIdsMatch &&
      moeOutputDiff <= MOE_ATOL &&
      moeWeightDiff <= MOE_ATOL &&
      stageHosts.every((s) => s.denseFormat === "f32");
    const ok = (b: boolean) => (b ? "ok  " : "FAIL");
    log(
      `model ${model}: ${placement.instances.length} ExpertHost instances, ` +
        `${expertSlices === 1 ? "whole experts" : `${expertSlices} slices per expert`}, ` +
        `RPCs per layer (prompt pass): ${fwd.rpcs_per_layer.join(", ")}`,
    );
    const stageList = stageHosts
      .map((s) => `${s.name} [${s.first}, ${s.end}) ${(s.bytesHeld / 1024).toFixed(0)} KiB ${s.denseFormat}`)
      .join("; ");
    log(
      `pipeline: ${
        stageHosts.length === 0 ? "the Worker runs every layer" : `${stageHosts.length} StageHosts — ${stageList}`
      }`,
    );
    const headList = headHosts.map((h) => `${h.name} rows [${h.rowStart}, ${h.rowEnd})`).join("; ");
    log(`head: ${headHosts.length === 0 ? "in the Worker" : `${headHosts.length} HeadHost shards — ${headList}`}`);
    log(
      `${ok(maxLogitDiff <= LOGITS_ATOL)} logits, ${golden.logits.length} positions: ` +
        `max |Δ| = ${maxLogitDiff.toExponential(2)} (atol ${LOGITS_ATOL})`,
    );
    if (maxGreedyLogitDiff !== null)
      log(
        `${ok(maxGreedyLogitDiff <= LOGITS_ATOL)} greedy-step logits (KV-cache decode): ` +
          `max |Δ| = ${maxGreedyLogitDiff.toExponential(2)}`,
      );
    log(
      `${ok(greedyMatch)} greedy tokens (KV cache): ours [${fwd.greedy_ids.join(", ")}] ` +
        `golden [${golden.greedy_ids.join(", ")}]`,
    );
    log(
      `${ok(apiGreedyMatch)} greedy tokens via POST /v1/completions: [${apiIds.join(", ")}] ` +
        `(${api.choices[0].finish_reason})`,
    );
    for (const r of routingAgreement)
      log(`${ok(r.agree === r.total)} routing layer ${r.layer}: ${r.agree}/${r.total} tokens with the same expert ids`);
    log(
      `${ok(moeIdsMatch && moeWeightDiff <= MOE_ATOL)} MoE layer ${golden.moe_layer.layer} ids/weights: ` +
        `max |Δw| = ${moeWeightDiff.toExponential(2)} (atol ${MOE_ATOL})`,
    );
    log(
      `${ok(moeOutputDiff <= MOE_ATOL)} MoE layer ${golden.moe_layer.layer} output: ` +
        `max |Δ| = ${moeOutputDiff.toExponential(2)} (atol ${MOE_ATOL})`,
    );
    return {
      pass,
      maxLogitDiff,
      maxGreedyLogitDiff,
      greedyMatch,
      apiGreedyMatch,
      routingAgreement,
      moeOutputDiff,
      moeWeightDiff,
      moeIdsMatch,
      hosts: placement.instances.length,
      expertSlices,
      rpcsPerLayer: fwd.rpcs_per_layer,
      stageHosts,
      headHosts,
    };
  } finally {
    await worker.dispose();
  }
}

/** Max |a − b| over two equal-shape 2-D arrays, with `b` rounded to f32 (goldens are f32). */
export function maxAbsDiff(a: number[][], b: number[][]): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i].length !== b[i].length) return Infinity;
    for (let j = 0; j < a[i].length; j++) m = Math.max(m, Math.abs(a[i][j] - Math.fround(b[i][j])));
  }
  return m;
}

/** [n, d] rows of a [n, d] or [batch, n, d] array (the oracles keep a batch dimension). */
function rows(a: number[][] | number[][][]): number[][] {
  return Array.isArray(a[0]?.[0]) ? (a as number[][][]).flat() : (a as number[][]);
}

function sameIds(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function sameSet(a: number[], b: number[]): boolean {
  return a.length === b.length && [...a].sort((x, y) => x - y).every((x, i) => x === [...b].sort((p, q) => p - q)[i]);
}

function byId(ids: number[], weights: number[]): [number, number][] {
  return ids.map((id, i) => [id, weights[i]] as [number, number]).sort((p, q) => p[0] - q[0]);
}
