/**
 * @module bench-dense-run — the dense stage-weight section of bench:kernels: speed rows (Node, and
 * workerd when asked) for every format in bench-dense.ts DENSE_IMPLS beside the f32 matmul of the
 * same run, and the accuracy table that chooses the default stage format.
 *
 * Rows: ms per call (median of bursts, and the best), GFLOP/s (2·rows·cols·n / time; int8 counts
 * the same), GB/s of weight bytes, and `vsF32` = f32 ms / this ms (same runtime, shape, batch,
 * cold/hot). Node rows also give `cpuMs`, the best of 5 bursts in process CPU time per call, and
 * `vsF32Cpu` on it: on a shared machine (other processes on the same cores) wall time mostly
 * measures the wait for a core, CPU time much less so. workerd rows give workerd's CPU time per call
 * over the timed requests (bench-workerd.ts; null without /proc). Cold = cycling through ≥ coldMb MiB of
 * copies (a stage's layers are each read once per token), hot = one copy.
 */
import { readdirSync, readFileSync } from "node:fs";
import { loadKernels } from "../../src/kernels/node";
import type { Kernels } from "../../src/kernels/index";
import { Checkpoint, memoryFileStore } from "../../src/model/safetensors";
import {
  DENSE_IMPLS,
  denseShapeName,
  formatError,
  gaussian,
  GRANITE_SHAPES,
  setupDenseCase,
  type DenseShape,
} from "./bench-dense";
import { coldCopies } from "./bench-cases";
import { cpuTimeSync, measureSync } from "./bench-measure";
import type { WorkerdBench } from "./bench-workerd";

export interface DenseRow {
  runtime: "node" | "workerd";
  shape: string;
  batch: number;
  weights: "cold" | "hot";
  impl: string;
  label: string;
  ms: number | null;
  msMin: number | null;
  gflops: number | null;
  gbps: number | null;
  vsF32: number | null;
  /** Node: best burst of process CPU time per call; workerd: its CPU time per call over the timed requests. */
  cpuMs: number | null;
  vsF32Cpu: number | null;
  copies: number;
  skipped?: string;
}

export interface DenseAccuracy {
  impl: string;
  label: string;
  /** Bytes per weight, scales included (at cols = 1024). */
  bytesPerWeight: number;
  /** Relative RMS matmul error vs f64 on the f32 weights, per granite shape. */
  granite: Record<string, number>;
  /** Over the fixtures' dense 2-D tensors: mean and worst relative RMS error. */
  fixturesMean: number;
  fixturesMax: number;
  fixtureTensors: number;
}

export interface DenseBenchOptions {
  shapes: DenseShape[];
  batches: number[];
  /** The batches run in workerd (each one of `batches`). */
  workerdBatches: number[];
  coldMb: number;
  budgetMs: number;
  impls: string[] | null;
  workerd: WorkerdBench | null;
  log: (s: string) => void;
}

/** Builds the "best" kernels of this Node (relaxed where it works, else simd). */
const nodeKernels = (): Kernels => loadKernels("best");

export async function runDenseBench(o: DenseBenchOptions): Promise<{ rows: DenseRow[]; accuracy: DenseAccuracy[] }> {
  const rows: DenseRow[] = [];
  const impls = DENSE_IMPLS.filter((i) => !o.impls || o.impls.includes(i.impl));
  const maxN = Math.max(...o.batches);
  for (const shape of o.shapes) {
    for (const impl of impls) {
      const c0 = setupDenseCase(impl, shape, 1, 1, nodeKernels);
      const copies = coldCopies(c0.bytes, o.coldMb << 20);
      const c = setupDenseCase(impl, shape, copies, maxN, nodeKernels);
      for (const batch of o.batches) {
        for (const weights of ["cold", "hot"] as const) {
          const t = measureSync((i) => c.call(weights === "cold" ? i : 0, batch), { budgetMs: o.budgetMs });
          const used = weights === "cold" ? copies : 1;
          const r = row("node", shape, impl.impl, impl.label, batch, weights, t.ms, t.msMin, c0.bytes, used);
          r.cpuMs = cpuTimeSync((i) => c.call(weights === "cold" ? i : 0, batch), o.budgetMs);
          rows.push(r);
        }
      }
    }
    o.log(`dense ${denseShapeName(shape)} done (Node)`);
  }
  if (o.workerd) {
    const wb = o.workerd;
    const batches = o.batches.filter((b) => o.workerdBatches.includes(b));
    for (const shape of o.shapes) {
      for (const impl of impls) {
        const bytes = setupDenseCase(impl, shape, 1, 1, nodeKernels).bytes;
        const copies = await wb.setupDense(impl.impl, shape.rows, shape.cols, coldCopies(bytes, o.coldMb << 20), maxN);
        for (const batch of batches) {
          for (const weights of ["cold", "hot"] as const) {
            const same = (r: DenseRow) =>
              r.runtime === "node" &&
              r.impl === impl.impl &&
              r.shape === denseShapeName(shape) &&
              r.batch === batch &&
              r.weights === weights;
            const t = await wb.time(batch, weights === "cold", rows.find(same)?.ms ?? 1);
            const used = weights === "cold" ? copies : 1;
            const r = row("workerd", shape, impl.impl, impl.label, batch, weights, t.ms, t.msMin, bytes, used);
            r.cpuMs = t.cpuMs;
            // A request timing at or below the empty request's round trip says nothing about the call.
            if (!(t.msMin > 0)) {
              const none = { ms: null, msMin: null, gflops: null, gbps: null };
              Object.assign(r, { ...none, skipped: "below request-timing noise" });
            }
            rows.push(r);
          }
        }
      }
      o.log(`dense ${denseShapeName(shape)} done (workerd)`);
    }
  }
  for (const r of rows) {
    const f = rows.find(
      (q) =>
        q.runtime === r.runtime &&
        q.impl === "dense-f32" &&
        q.shape === r.shape &&
        q.batch === r.batch &&
        q.weights === r.weights,
    );
    r.vsF32 = f?.ms && r.ms ? f.ms / r.ms : null;
    r.vsF32Cpu = f?.cpuMs && r.cpuMs ? f.cpuMs / r.cpuMs : null;
  }
  const accuracy = await denseAccuracy(impls.map((i) => i.impl));
  printDense(rows, accuracy, o);
  return { rows, accuracy };
}

function row(
  runtime: "node" | "workerd",
  shape: DenseShape,
  impl: string,
  label: string,
  batch: number,
  weights: "cold" | "hot",
  ms: number,
  msMin: number,
  bytes: number,
  copies: number,
): DenseRow {
  const flops = 2 * shape.rows * shape.cols * batch;
  return {
    runtime,
    shape: denseShapeName(shape),
    batch,
    weights,
    impl,
    label,
    ms,
    msMin,
    gflops: flops / (ms * 1e6),
    gbps: bytes / (ms * 1e6),
    vsF32: null,
    cpuMs: null,
    vsF32Cpu: null,
    copies,
  };
}

/** The fixtures' dense 2-D tensors (not experts, ≥ 16 inputs), as f32. */
async function fixtureTensors(): Promise<{ name: string; rows: number; cols: number; w: Float32Array }[]> {
  const root = new URL("../../tests/fixtures/", import.meta.url);
  const out: { name: string; rows: number; cols: number; w: Float32Array }[] = [];
  for (const dir of readdirSync(root)) {
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(new URL(`${dir}/model.safetensors`, root));
    } catch {
      continue;
    }
    const ckpt = await Checkpoint.open(memoryFileStore({ "model.safetensors": bytes }, dir));
    for (const [name, t] of ckpt.tensors) {
      if (t.shape.length !== 2 || /experts?\./.test(name) || t.shape[1] < 16) continue;
      out.push({ name: `${dir}/${name}`, rows: t.shape[0], cols: t.shape[1], w: await ckpt.readF32(name) });
    }
  }
  return out;
}

/** Relative matmul error of each format: granite shapes (Gaussian weights, 8 Gaussian tokens) and
 * every fixture dense tensor (8 Gaussian tokens). */
export async function denseAccuracy(implIds: string[]): Promise<DenseAccuracy[]> {
  const k = loadKernels("best");
  // The greedy rows are the f32 / bf16 matmul plus a scan: their matmul error is those rows'.
  const impls = DENSE_IMPLS.filter((i) => implIds.includes(i.impl) && !i.greedy);
  const n = 8;
  const granite = GRANITE_SHAPES.map((s, i) => {
    const scale = s.what.startsWith("head") ? 0.02 : 1 / Math.sqrt(s.cols);
    return { ...s, w: gaussian(s.rows * s.cols, scale, 100 + i) };
  });
  const xs = new Map<number, Float32Array>();
  const xFor = (cols: number) => xs.get(cols) ?? xs.set(cols, gaussian(n * cols, 1, 7 + cols)).get(cols)!;
  const fixtures = await fixtureTensors();
  return impls.map((impl) => {
    const g: Record<string, number> = {};
    for (const s of granite) g[`${denseShapeName(s)} ${s.what}`] = formatError(k, impl, s.w, s, xFor(s.cols), n);
    const errs = fixtures.map((t) => formatError(k, impl, t.w, t, xFor(t.cols), n));
    const cols = 1024;
    const perWeight = { f32: 4, bf16: 2, "q8-row": 1 + 8 / cols, int8: 1 + 4 / (impl.group ?? 64) };
    return {
      impl: impl.impl,
      label: impl.label,
      bytesPerWeight: perWeight[impl.format],
      granite: g,
      fixturesMean: errs.reduce((a, b) => a + b, 0) / Math.max(1, errs.length),
      fixturesMax: Math.max(0, ...errs),
      fixtureTensors: errs.length,
    };
  });
}

function printDense(rows: DenseRow[], accuracy: DenseAccuracy[], o: DenseBenchOptions): void {
  const f = (v: number | null, d = 2) => (v === null ? "—" : v.toFixed(d));
  for (const runtime of ["node", "workerd"] as const) {
    const mine = rows.filter((r) => r.runtime === runtime);
    if (mine.length === 0) continue;
    const where = runtime === "node" ? "Node" : "workerd";
    o.log(`\n=== dense stage matrices, ${where} (W rows×cols = outputs×inputs) ===`);
    for (const shape of o.shapes) {
      for (const batch of o.batches) {
        for (const weights of ["cold", "hot"] as const) {
          const name = denseShapeName(shape);
          const group = mine.filter((r) => r.shape === name && r.batch === batch && r.weights === weights);
          if (group.length === 0) continue;
          o.log(`\n${denseShapeName(shape)}  batch ${batch}  ${weights}`);
          const head: [string, number][] = [
            ["GFLOP/s", 9],
            ["vs f32", 8],
            ["cpu ms", 9],
            ["vs f32", 8],
          ];
          o.log(cells(["impl", 40], ["ms/call", 9], ["best", 8], ...head));
          for (const r of group) {
            const vs = r.vsF32 ? `${f(r.vsF32)}×` : "—";
            const cpu: [string, number][] = [
              [f(r.cpuMs, 3), 9],
              [r.vsF32Cpu ? `${f(r.vsF32Cpu)}×` : "—", 8],
            ];
            o.log(cells([r.label, 40], [f(r.ms, 3), 9], [f(r.msMin, 3), 8], [f(r.gflops, 1), 9], [vs, 8], ...cpu));
          }
        }
      }
    }
  }
  o.log("\n=== dense formats: relative RMS matmul error vs f64 on the f32 weights (8 Gaussian tokens) ===");
  const keys = Object.keys(accuracy[0]?.granite ?? {});
  const head = keys.map((k): [string, number] => [k.split(" ")[0], 11]);
  o.log(cells(["impl", 40], ["B/weight", 9], ...head, ["fixt mean", 11], ["fixt max", 10]));
  for (const a of accuracy) {
    const g = keys.map((k): [string, number] => [a.granite[k].toExponential(2), 11]);
    const fm: [string, number] = [a.fixturesMean.toExponential(2), 11];
    o.log(cells([a.label, 40], [a.bytesPerWeight.toFixed(3), 9], ...g, fm, [a.fixturesMax.toExponential(2), 10]));
  }
  o.log(`granite columns: ${keys.join("; ")}; fixtures: ${accuracy[0]?.fixtureTensors ?? 0} dense tensors`);
}

/** A table line: the first cell padded right, the others left. */
function cells(first: [string, number], ...rest: [string, number][]): string {
  return first[0].padEnd(first[1]) + rest.map(([v, w]) => v.padStart(w)).join("");
}
