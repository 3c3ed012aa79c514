/**
 * @module bench-accuracy — what expert quantization costs in greedy agreement, with its uncertainty,
 * and whether any 4-bit format could reach issue 14's 98% on a model (README "Expert accuracy"):
 *
 *   agreement  the product's paths (ExpertStores quantizing at load, Wasm kernels: int8 per row,
 *              int8 groups, int4) vs f32, teacher-forced greedy agreement with a 95% Wilson interval,
 *              for each prompt count (the first seeded prompts of a larger set are the smaller set);
 *   weights    are the expert weights i.i.d. Gaussian (kurtosis, tails, correlations, row variances),
 *              and each TS weight format's relative RMS weight error next to the rate–distortion bound;
 *   noise      agreement vs f32 when every expert matrix gets i.i.d. Gaussian noise of a set relative
 *              RMS (JS reference experts, f32 activations): the weight error a target needs;
 *   formats    the same measurement for TS weight formats (scripts/lib/accuracy-formats.ts): int8
 *              absmax vs searched scales, int4 variants, Q4_0/Q4_1, NF4.
 *
 * Bounded: ≤ 256 prompts × ≤ 128 steps per measurement; fixtures take seconds, the demo minutes.
 */
import { basename, resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadExpertWeights, openModel } from "../src/model/architectures";
import type { ModelSpec } from "../src/model/config";
import type { Checkpoint } from "../src/model/safetensors";
import { measureInt8Accuracy, randomPrompts, type AccuracyReport } from "./lib/bench-accuracy";
import { GaussianCheck, gaussianNoise, sqError, WEIGHT_FORMATS, wilson } from "./lib/accuracy-formats";
import { dirFileStore } from "./lib/dir-store";

const FIXTURES = ["mixtral-tiny", "mixtral-tiny-bf16", "deepseek-v3-tiny"].map((f) => `tests/fixtures/${f}`);
/** bf16: weights rounded to bf16 by the JS reference (the yardstick); the rest are ExpertStore paths. */
const QUANTS = ["bf16", "int8", "int8-relaxed", "int8-group", "int4"] as const;
type Quant = (typeof QUANTS)[number];

const USAGE = `usage: npm run bench:accuracy -- [<model-dir>...] [--sections agreement,weights,noise,formats]
                       [--prompts 8,32] [--len 16] [--steps 32] [--quant bf16,int8,int8-group,int4]
                       [--noise 0,0.005,0.01,0.015,0.02,0.03,0.04,0.06,0.08] [--noise-seeds 1] [--formats <names>]
  Greedy agreement of quantized experts vs f32 (teacher-forced on f32's greedy tokens) with 95% Wilson
  intervals, the expert weights' Gaussian statistics and each format's weight error, and agreement vs
  injected Gaussian weight noise. Models default to the three golden fixtures.
  --sections  which parts to run (default all four)
  --prompts   seeded prompt counts for "agreement" (each a prefix of the next); noise and formats use
              the largest (default 8,32; ≤ 256)
  --len       prompt tokens (default 16)      --steps  greedy steps per prompt (default 32; ≤ 128)
  --quant     for "agreement": bf16 (the yardstick: JS reference on bf16-rounded weights) and product
              paths; int8-relaxed is per-row int8 on relaxed_dot (default bf16,int8,int8-group,int4)
  --noise     relative RMS noise levels for "noise" (default 0,0.005,0.01,0.015,0.02,0.03,0.04,0.06,0.08)
  --noise-seeds  independent noise draws per level, pooled (default 1; ≤ 16)
  --formats   TS formats for "formats" (default all: ${WEIGHT_FORMATS.map((f) => f.name).join(", ")})`;

function pct(x: number, digits = 1): string {
  return `${(x * 100).toFixed(digits)}%`;
}

/** "99.2% [98.1, 99.7] (254/256) · RMS 1.14%" */
function agreementCell(r: AccuracyReport): string {
  const k = Math.round(r.greedyAgreement * r.decoded);
  const [lo, hi] = wilson(k, r.decoded);
  return (
    `${pct(r.greedyAgreement)} [${(lo * 100).toFixed(1)}, ${(hi * 100).toFixed(1)}] (${k}/${r.decoded}) · ` +
    `logit RMS ${pct(r.relLogitRms, 2)}`
  );
}

/** Every expert matrix of the model, f32, with its shape. */
async function* expertMatrices(spec: ModelSpec, ckpt: Checkpoint) {
  const { dModel, dFf } = spec;
  for (const layer of spec.moeLayers) {
    for (let e = 0; e < spec.nExperts; e++) {
      const w = await loadExpertWeights(ckpt, spec, layer, e);
      const key = `${layer}:${e}`;
      yield { w: w.w1, rows: dFf, cols: dModel, key: `${key}:w1` };
      yield { w: w.w3, rows: dFf, cols: dModel, key: `${key}:w3` };
      yield { w: w.w2, rows: dModel, cols: dFf, key: `${key}:w2` };
    }
  }
}

async function weightSection(name: string, spec: ModelSpec, ckpt: Checkpoint, formats: readonly string[]) {
  const check = new GaussianCheck();
  const err = new Map<string, [number, number]>();
  for await (const { w, rows, cols, key } of expertMatrices(spec, ckpt)) {
    check.add(w, rows, cols);
    for (const f of WEIGHT_FORMATS.filter((x) => formats.includes(x.name))) {
      const [e, s] = sqError(w, f.transform(Float32Array.from(w), rows, cols, key));
      const acc = err.get(f.name) ?? [0, 0];
      err.set(f.name, [acc[0] + e, acc[1] + s]);
    }
  }
  const g = check.result();
  console.log(
    `${name} weights: ${g.weights} expert weights, excess kurtosis ${g.excessKurtosis.toFixed(3)} (Gaussian 0), ` +
      `beyond 3σ ${pct(g.beyond3Sigma, 3)} (Gaussian 0.270%), max |z| ${g.maxAbsZ.toFixed(2)}, ` +
      `lag-1 corr along rows ${g.lag1Corr.toFixed(4)}, between rows ${g.rowCorr.toFixed(4)} ` +
      `(independent: 0 ± ${g.corrNoise.toFixed(4)}), row-variance spread ${g.rowVarianceRatio.toFixed(2)}× i.i.d.`,
  );
  for (const f of WEIGHT_FORMATS.filter((x) => formats.includes(x.name))) {
    const [e, s] = err.get(f.name) ?? [0, 1];
    // Shannon's rate–distortion bound for an i.i.d. Gaussian source: relative RMS ≥ 2^(−R).
    console.log(
      `  ${f.name.padEnd(16)} ${String(f.bits).padStart(4)} bits/weight: relative RMS weight error ` +
        `${pct(Math.sqrt(e / s), 3)} (rate–distortion bound at ${f.bits} bits: ${pct(2 ** -f.bits, 3)})`,
    );
  }
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      sections: { type: "string", default: "agreement,weights,noise,formats" },
      prompts: { type: "string", default: "8,32" },
      len: { type: "string", default: "16" },
      steps: { type: "string", default: "32" },
      quant: { type: "string", default: "bf16,int8,int8-group,int4" },
      noise: { type: "string", default: "0,0.005,0.01,0.015,0.02,0.03,0.04,0.06,0.08" },
      "noise-seeds": { type: "string", default: "1" },
      formats: { type: "string", default: WEIGHT_FORMATS.map((f) => f.name).join(",") },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const list = (s: string) => s.split(",").filter((x) => x !== "");
  const sections = list(values.sections);
  const counts = list(values.prompts).map(Number);
  const [len, steps] = [Number(values.len), Number(values.steps)];
  const quants = list(values.quant) as Quant[];
  const levels = list(values.noise).map(Number);
  const noiseSeeds = Number(values["noise-seeds"]);
  const formats = list(values.formats);
  const bad =
    sections.find((s) => !["agreement", "weights", "noise", "formats"].includes(s)) ??
    quants.find((q) => !QUANTS.includes(q)) ??
    formats.find((f) => !WEIGHT_FORMATS.some((x) => x.name === f)) ??
    (counts.some((n) => !Number.isInteger(n) || n < 1 || n > 256) ? `--prompts ${values.prompts}` : undefined) ??
    (!Number.isInteger(steps) || steps < 1 || steps > 128 ? `--steps ${values.steps}` : undefined) ??
    (!Number.isInteger(len) || len < 1 || len > 256 ? `--len ${values.len}` : undefined) ??
    (levels.some((x) => !(x >= 0 && x <= 1)) ? `--noise ${values.noise}` : undefined) ??
    (!Number.isInteger(noiseSeeds) || noiseSeeds < 1 || noiseSeeds > 16
      ? `--noise-seeds ${values["noise-seeds"]}`
      : undefined);
  if (bad !== undefined) {
    console.error(`bad argument: ${bad}\n${USAGE}`);
    process.exit(2);
  }
  const most = Math.max(...counts);
  for (const dir of positionals.length > 0 ? positionals : FIXTURES) {
    const name = basename(resolve(dir));
    const { spec, ckpt } = await openModel(dirFileStore(resolve(dir)));
    const prompts = (n: number) => randomPrompts(n, len, spec.vocabSize);
    console.log(`\n## ${name}: ${spec.arch}, dModel ${spec.dModel}, dFf ${spec.dFf}, ${spec.nExperts} experts`);
    if (sections.includes("agreement")) {
      for (const n of counts) {
        const tag = `${n} prompts × ${len} + ${steps} steps`;
        if (quants.includes("bf16")) {
          const r = await measureInt8Accuracy(name, spec, ckpt, { prompts: prompts(n), decode: steps, bf16: true });
          console.log(`${name} | bf16 weights (yardstick) | ${tag} | ${agreementCell(r)}`);
        }
        for (const quant of quants) {
          if (quant === "bf16") continue;
          // int8-relaxed forces relaxed_dot (the relaxed build's default, workerd's; needs relaxed SIMD, Node 22);
          // plain int8 takes the best build's default here: relaxed_dot with relaxed SIMD, else dot_i16x8.
          const r =
            quant === "int8-relaxed"
              ? await measureInt8Accuracy(name, spec, ckpt, {
                  prompts: prompts(n),
                  decode: steps,
                  q8Path: "relaxed_dot",
                })
              : await measureInt8Accuracy(name, spec, ckpt, { prompts: prompts(n), decode: steps, quant });
          console.log(
            `${name} | ${quant} (${r.int8Path}, ${pct(r.bytesInt8 / r.bytesF32)} of f32 bytes) | ${tag} | ` +
              agreementCell(r),
          );
        }
      }
    }
    if (sections.includes("weights")) await weightSection(name, spec, ckpt, formats);
    const tag = `${most} prompts × ${len} + ${steps} steps, JS reference experts`;
    if (sections.includes("noise")) {
      for (const rel of levels) {
        // Each seed is another draw of the noise; steps pool over draws (logit RMS: the RMS over draws).
        const runs: AccuracyReport[] = [];
        for (let seed = 1; seed <= noiseSeeds; seed++) {
          const weights = { label: `noise ${rel}`, transform: gaussianNoise(rel, seed) };
          runs.push(await measureInt8Accuracy(name, spec, ckpt, { prompts: prompts(most), decode: steps, weights }));
        }
        const decoded = runs.reduce((n, r) => n + r.decoded, 0);
        const pooled: AccuracyReport = {
          ...runs[0],
          decoded,
          greedyAgreement: runs.reduce((n, r) => n + r.greedyAgreement * r.decoded, 0) / decoded,
          relLogitRms: Math.sqrt(runs.reduce((n, r) => n + r.relLogitRms ** 2, 0) / runs.length),
        };
        const draws = noiseSeeds > 1 ? ` × ${noiseSeeds} noise draws` : "";
        console.log(
          `${name} | Gaussian weight noise, relative RMS ${pct(rel, 2)} | ${tag}${draws} | ${agreementCell(pooled)}`,
        );
      }
    }
    if (sections.includes("formats")) {
      for (const f of WEIGHT_FORMATS.filter((x) => formats.includes(x.name))) {
        const weights = { label: f.name, transform: f.transform };
        const r = await measureInt8Accuracy(name, spec, ckpt, { prompts: prompts(most), decode: steps, weights });
        console.log(`${name} | ${f.name} (${f.bits} bits/weight) | ${tag} | ${agreementCell(r)}`);
      }
    }
  }
}

await main();
