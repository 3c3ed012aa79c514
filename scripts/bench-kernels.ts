/**
 * bench:kernels — one SwiGLU expert (the work an ExpertHost does per (expert, token batch)) on the
 * expert shapes d_model×d_ff = 512×1408, 1024×2816, 2048×1408, batch 1 / 8 / 64, weights cold
 * (cycling through more expert copies than the L3 holds, as MoE decode does) and hot (one copy).
 *
 * Rows: plain JS reference; Wasm f32 row-major; Wasm f32 packed; relaxed f32; Wasm int8 on both dot
 * paths — and in the same run the peers: onnxruntime-web (wasm backend, one thread) and
 * onnxruntime-node (native MLAS, one thread), f32 and int8, on the same weights. A peer that cannot
 * be loaded is reported as skipped. Columns: ms/call, GFLOP/s (int8: GOP/s-equivalent), GB/s of
 * weights read, fraction of the memory bandwidth measured in the same run (a Wasm streaming read),
 * and the ratio to each peer of the same dtype (peer ms / our ms: > 1 is faster than the peer).
 * Then the Wasm rows again inside workerd. Then the dense stage matrices (scripts/lib/bench-dense-run.ts):
 * y = x · Wᵀ in every stage format (f32, bf16, int8 with per-group scales, the experts' per-row
 * int8) at stage shapes rows×cols (outputs×inputs) 1024×1024, 4096×1024, 1024×4096, 2048×2048 and
 * a head slice 8192×1024, batch 1/8/64, Node and workerd, with the accuracy table of each format.
 * First, the compute ceilings of 128-bit Wasm SIMD (scripts/lib/simd-ceiling.ts: f32 FMA chains, int8
 * dot chains in each form, the int8 batch tile from L1), in Node and again inside workerd, so each
 * kernel row can be judged against the ceiling of its own run. JSON goes to bench-results/kernels.json.
 *
 * Usage: npm run bench:kernels [-- --quick] [--shapes 512x1408,...] [--batches 1,8,64]
 *        [--cold-mb 160] [--impls wasm-f32-packed,...] [--no-peers] [--no-workerd]
 *        [--dense-shapes 1024x1024,...] [--dense-workerd-batches 1,16,64] [--no-dense] [--dense-only]
 *        [--out bench-results/kernels.json]
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { loadKernels } from "../src/kernels/node";
import type { KernelFlavor } from "../src/kernels/index";
import {
  coldCopies,
  expertFlops,
  randomExpert,
  setupCase,
  streamBuffer,
  weightBytes,
  WASM_IMPLS,
  type ExpertShape,
  type ImplInfo,
} from "./lib/bench-cases";
import { cpuTimeAsync, cpuTimeSync, measureAsync, measureSync, type Timing } from "./lib/bench-measure";
import { quantizeExpertQ4g } from "../src/kernels/q4g-format";
import { expertModelF32, expertModelQ4, expertModelQ8, loadOrt, ortSession, type OrtPeer } from "./lib/bench-onnx";
import { startWorkerdBench } from "./lib/bench-workerd";
import { runDenseBench } from "./lib/bench-dense-run";
import type { DenseShape } from "./lib/bench-dense";
import { progressBar } from "./lib/progress";
import { ceilingCases } from "./lib/simd-ceiling";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

interface Args {
  shapes: ExpertShape[];
  batches: number[];
  coldMb: number;
  peers: boolean;
  workerd: boolean;
  budgetMs: number;
  out: string;
  /** Only these implementations (ids of WASM_IMPLS, or of bench-dense.ts DENSE_IMPLS); all when absent. */
  impls: string[] | null;
  denseShapes: DenseShape[];
  /** Batches the dense part runs in workerd (a subset of `batches`; default batch 1 and the largest). */
  denseWorkerdBatches: number[];
  dense: boolean;
  denseOnly: boolean;
}

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  console.log(
    "usage: npm run bench:kernels [-- --quick] [--shapes 512x1408,...] [--batches 1,8,64] [--cold-mb 160]\n" +
      "       [--impls wasm-f32-packed,...] [--no-peers] [--no-workerd] [--out bench-results/kernels.json]\n" +
      "       [--dense-shapes 32000x256,...] [--dense-workerd-batches 1,16,64] [--no-dense] [--dense-only]\n" +
      "  One SwiGLU expert per shape and batch: Wasm kernels vs onnxruntime peers, then inside workerd,\n" +
      "  after the 128-bit SIMD compute ceilings (f32 FMA, int8 dots, the int8 tile from L1) of each runtime.\n" +
      "  Then the dense stage / head matrices (rows x cols = outputs x inputs; --impls dense-f32,...);\n" +
      "  workerd runs batch 1 and the largest only, or the --dense-workerd-batches (each one of --batches).",
  );
  process.exit(0);
}

function parseArgs(argv: string[]): Args {
  const quick = argv.includes("--quick");
  const get = (flag: string) => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const shapes = (get("--shapes") ?? (quick ? "512x1408,1024x2816" : "512x1408,1024x2816,2048x1408"))
    .split(",")
    .map((s) => {
      const m = /^(\d+)x(\d+)$/.exec(s.trim());
      if (!m) throw new Error(`--shapes: each shape is d_model x d_ff like 1024x2816, got "${s}"`);
      return { dModel: Number(m[1]), dFf: Number(m[2]) };
    });
  const batches = (get("--batches") ?? (quick ? "1,64" : "1,8,64")).split(",").map((b) => {
    const n = Number(b);
    if (!Number.isInteger(n) || n < 1 || n > 64)
      throw new Error(`--batches: each batch is an integer in 1..64, got "${b}"`);
    return n;
  });
  // Default: batch 1 and the largest batch, as the expert rows in workerd.
  const edges = batches.filter((b) => b === 1 || b === Math.max(...batches)).map(String);
  const denseWorkerdBatches = (get("--dense-workerd-batches")?.split(",") ?? edges).map((b) => {
    const n = Number(b);
    if (!batches.includes(n))
      throw new Error(`--dense-workerd-batches: each batch must be one of --batches, got "${b}"`);
    return n;
  });
  const coldMb = Number(get("--cold-mb") ?? 160);
  if (!(coldMb >= 8))
    throw new Error(`--cold-mb must be ≥ 8 (MiB of expert copies to cycle through), got ${get("--cold-mb")}`);
  return {
    shapes,
    batches,
    coldMb,
    peers: !argv.includes("--no-peers"),
    workerd: !argv.includes("--no-workerd"),
    budgetMs: quick ? 120 : 200,
    out: get("--out") ?? "bench-results/kernels.json",
    impls: get("--impls")?.split(",") ?? null,
    denseShapes: (
      get("--dense-shapes") ?? (quick ? "1024x1024,8192x1024" : "1024x1024,4096x1024,1024x4096,2048x2048,8192x1024")
    )
      .split(",")
      .map((s) => {
        const m = /^(\d+)x(\d+)$/.exec(s.trim());
        if (!m)
          throw new Error(`--dense-shapes: each shape is rows x cols (outputs x inputs) like 1024x4096, got "${s}"`);
        return { rows: Number(m[1]), cols: Number(m[2]) };
      }),
    denseWorkerdBatches: [...new Set(denseWorkerdBatches)],
    dense: !argv.includes("--no-dense"),
    denseOnly: argv.includes("--dense-only"),
  };
}

type Runtime = "node" | "workerd";
type Peer = OrtPeer;

interface Row {
  runtime: Runtime;
  shape: string;
  batch: number;
  weights: "cold" | "hot";
  impl: string;
  label: string;
  dtype: "f32" | "int8";
  ms: number | null;
  msMin: number | null;
  /** Node rows: best-of-5 process CPU time per call (the shared machine's honest column). */
  cpuMs?: number | null;
  gflops: number | null;
  gbps: number | null;
  fracBandwidth: number | null;
  vs: Partial<Record<Peer, number>>;
  /** GB/s of the streaming read measured right before this row (its fracBandwidth's roofline). */
  roofline: number;
  copies: number;
  skipped?: string;
  check?: string;
}

/** Peers; the 4-bit MatMulNBits rows count as dtype "int8" (quantized), impl `<peer>-int4`. */
const PEER_ROWS: { peer: Peer; dtype: "f32" | "int8"; model: "f32" | "int8" | "int4"; label: string }[] = [
  { peer: "onnxruntime-web", dtype: "f32", model: "f32", label: "onnxruntime-web f32 (wasm, 1 thread)" },
  { peer: "onnxruntime-web", dtype: "int8", model: "int8", label: "onnxruntime-web int8 (wasm, 1 thread)" },
  {
    peer: "onnxruntime-web",
    dtype: "int8",
    model: "int4",
    label: "onnxruntime-web int4 MatMulNBits (wasm, 1 thr.)",
  },
  { peer: "onnxruntime-node", dtype: "f32", model: "f32", label: "onnxruntime-node f32 (native, 1 thread)" },
  { peer: "onnxruntime-node", dtype: "int8", model: "int8", label: "onnxruntime-node int8 (native, 1 thread)" },
  {
    peer: "onnxruntime-node",
    dtype: "int8",
    model: "int4",
    label: "onnxruntime-node int4 MatMulNBits (native, 1 thr.)",
  },
];

const shapeName = (s: ExpertShape) => `${s.dModel}x${s.dFf}`;

function fill(
  row: Omit<Row, "gflops" | "gbps" | "fracBandwidth" | "vs" | "roofline">,
  shape: ExpertShape,
  bytes: number,
  bandwidth: number,
): Row {
  const ms = row.ms;
  return {
    ...row,
    gflops: ms ? expertFlops(shape, row.batch) / (ms * 1e6) : null,
    gbps: ms ? bytes / (ms * 1e6) : null,
    fracBandwidth: ms ? bytes / (ms * 1e6) / bandwidth : null,
    vs: {},
    roofline: bandwidth,
  };
}

/** What identifies a row apart from its batch, weights and timings. */
type RowBase = Pick<Row, "runtime" | "shape" | "impl" | "label" | "dtype">;

/** A row not run (cold and hot weights at every batch), with the reason, in the table and the JSON. */
function skippedRows(
  base: RowBase,
  batches: readonly number[],
  skipped: string,
  at: { shape: ExpertShape; bytes: number; bandwidth: number; copies?: number },
): Row[] {
  const rows: Row[] = [];
  for (const batch of batches)
    for (const weights of ["cold", "hot"] as const) {
      const row = { ...base, batch, weights, ms: null, msMin: null, copies: at.copies ?? 0, skipped };
      rows.push(fill(row, at.shape, at.bytes, at.bandwidth));
    }
  return rows;
}

function relRms(got: Float32Array, want: Float32Array): number {
  let e = 0;
  let w = 0;
  for (let i = 0; i < want.length; i++) {
    e += (got[i] - want[i]) ** 2;
    w += want[i] ** 2;
  }
  return Math.sqrt(e / Math.max(w, 1e-30));
}

/**
 * The memory roofline: the best of `reps` streaming reads of 96 MiB (the best, not the median: it
 * is what the memory can do). The machine may be shared, so cold rows are judged against a
 * reading taken right before them (`roofline.now()`), not only the one at the start.
 */
function wasmBandwidth(): { now(reps?: number): number } {
  const k = loadKernels("simd");
  const buf = streamBuffer(k, 96);
  buf.run();
  return {
    now(reps = 3) {
      let best = 0;
      for (let r = 0; r < reps; r++) {
        const t = performance.now();
        buf.run();
        best = Math.max(best, buf.bytes / ((performance.now() - t) * 1e6));
      }
      return best;
    },
  };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const started = performance.now();
  // Idempotent and quick when build/ is current; makes the bench work from a clean clone.
  execFileSync(process.execPath, [`${ROOT}scripts/build-wasm.mjs`], { stdio: ["ignore", "ignore", "inherit"] });
  const maxN = Math.max(...args.batches);
  const coldBytes = args.coldMb << 20;
  const relaxedPaths: string[] = (() => {
    try {
      return loadKernels("relaxed").q8Paths;
    } catch {
      return [];
    }
  })();
  const relaxedOk = relaxedPaths.length > 0 ? `relaxed SIMD (int8 paths: ${relaxedPaths.join(", ")})` : null;
  const machine = {
    cpu: cpus()[0]?.model ?? "?",
    cores: cpus().length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    v8: process.versions.v8,
    relaxed: relaxedOk ?? "no relaxed SIMD in this Node",
  };
  const roofline = wasmBandwidth();
  const bandwidth = roofline.now(15);
  log(
    `edge-moe bench:kernels — ${new Date().toISOString().slice(0, 10)}, ${machine.cpu} ×${machine.cores}, ` +
      `Node ${machine.node} (V8 ${machine.v8}), ${machine.relaxed}`,
  );
  log(
    `Wasm streaming read (memory roofline): ${bandwidth.toFixed(1)} GB/s; ` +
      `cold = cycling through ≥ ${args.coldMb} MiB of expert copies`,
  );
  const simdPeak = simdCeiling();
  log("Wasm 128-bit SIMD ceilings (registers only, or the int8 tile from L1), G ops/s (GFLOP/s for f32):");
  for (const p of simdPeak)
    log(`  ${p.name.padEnd(52)} ${p.wall.toFixed(1).padStart(7)} wall ${p.cpu.toFixed(1).padStart(7)} CPU`);
  log("");

  const rows: Row[] = [];
  const stopProgress = rowProgress(rows, args);
  const newKernels = (flavor: KernelFlavor) => loadKernels(flavor);
  for (const shape of args.denseOnly ? [] : args.shapes) {
    const w = randomExpert(shape, 7);
    let refOut: Float32Array | null = null;
    for (const info of WASM_IMPLS.filter((i) => !args.impls || args.impls.includes(i.impl))) {
      const bytes = weightBytes(info, shape);
      const base = {
        runtime: "node" as const,
        shape: shapeName(shape),
        impl: info.impl,
        label: info.label,
        dtype: info.dtype,
      };
      if (
        info.flavor === "relaxed" &&
        (!relaxedOk || (info.q8Path && !relaxedPaths.includes(info.q8Path.replace("relaxed_dot", "relaxed_dot_i16"))))
      ) {
        const reason = "relaxed SIMD path not available in this Node";
        rows.push(...skippedRows(base, args.batches, reason, { shape, bytes, bandwidth }));
        continue;
      }
      const copies = coldCopies(bytes, coldBytes);
      const c = setupCase(info, shape, w, copies, maxN, newKernels, "i16");
      const out = c.output(1);
      if (info.impl === "js-ref") refOut = out;
      const check = refOut ? `relative RMS vs JS reference ${relRms(out, refOut).toExponential(1)}` : undefined;
      for (const batch of args.batches) {
        if (info.impl === "js-ref" && batch > 8) {
          const reason = "plain JS is compute-bound (> 0.3 s a call at this batch): not run";
          rows.push(...skippedRows(base, [batch], reason, { shape, bytes, bandwidth, copies }));
          continue;
        }
        for (const weights of ["cold", "hot"] as const) {
          const bwNow = weights === "cold" ? roofline.now() : bandwidth;
          const fn = (i: number) => c.call(weights === "cold" ? i : 0, batch);
          const t: Timing = measureSync(fn, {
            budgetMs: info.impl === "js-ref" ? 60 : args.budgetMs,
            bursts: info.impl === "js-ref" ? 3 : 5,
          });
          const cpuMs = info.impl === "js-ref" ? null : cpuTimeSync(fn, args.budgetMs);
          rows.push(
            fill(
              {
                ...base,
                batch,
                weights,
                ms: t.ms,
                msMin: t.msMin,
                cpuMs,
                copies: weights === "cold" ? copies : 1,
                check,
              },
              shape,
              bytes,
              bwNow,
            ),
          );
        }
      }
    }
    if (args.peers) await peerRows(rows, shape, w, args, roofline, maxN);
    else
      for (const p of PEER_ROWS) {
        const base = { runtime: "node" as const, shape: shapeName(shape), impl: `${p.peer}-${p.model}` };
        const at = { shape, bytes: 0, bandwidth };
        rows.push(...skippedRows({ ...base, label: p.label, dtype: p.dtype }, args.batches, "--no-peers", at));
      }
    log(`${shapeName(shape)} done (${((performance.now() - started) / 1000).toFixed(0)} s)`);
  }

  let workerd: { bandwidth: number | null; info: unknown; ceilings?: unknown; skipped?: string } = {
    bandwidth: null,
    info: null,
  };
  if (args.workerd && !args.denseOnly) {
    try {
      workerd = await workerdRows(rows, args, maxN, roofline);
    } catch (err) {
      workerd = {
        bandwidth: null,
        info: null,
        skipped: `workerd run failed: ${err instanceof Error ? err.message : String(err)}`,
      };
    }
  } else workerd.skipped = "--no-workerd";

  let dense: Awaited<ReturnType<typeof runDenseBench>> | { skipped: string } = { skipped: "--no-dense" };
  if (args.dense || args.denseOnly) {
    const wb = args.workerd ? await startWorkerdBench() : null;
    try {
      const denseImpls = args.impls?.filter((i) => i.startsWith("dense-") || i.startsWith("q8-row")) ?? null;
      dense = await runDenseBench({
        shapes: args.denseShapes,
        batches: args.batches,
        workerdBatches: args.denseWorkerdBatches,
        coldMb: args.coldMb,
        budgetMs: args.budgetMs,
        impls: denseImpls && denseImpls.length > 0 ? denseImpls : null,
        workerd: wb,
        log,
      });
    } finally {
      await wb?.close();
    }
  }

  stopProgress();
  ratios(rows);
  printTable(rows, args);
  const targets = checkTargets(rows);
  log("\n=== issue targets (this run) ===");
  for (const t of targets) log(`${t.met === null ? "n/a " : t.met ? "met " : "MISS"}  ${t.target}: ${t.detail}`);
  const json = {
    date: new Date().toISOString(),
    machine,
    bandwidthGBps: { node: bandwidth, workerd: workerd.bandwidth },
    simdCeilingGops: simdPeak,
    workerd: { info: workerd.info, ceilingsGops: workerd.ceilings, skipped: workerd.skipped },
    coldMiB: args.coldMb,
    method:
      "median of 5 bursts (≥ budget/5 ms each) of back-to-back calls after warm-up, Node; " +
      "workerd: Node times whole requests of N calls minus an empty request's round trip, median of 3; " +
      "cpuMs there = workerd's processes' CPU time (/proc, 10 ms ticks) over those 3 requests per call. " +
      "GFLOP/s = 6·dModel·dFf·batch / time (int8: the same count, GOP/s-equivalent). " +
      "GB/s = weight bytes of one expert / time. " +
      "fracBandwidth = GB/s / roofline, the best of 3 Wasm streaming reads of 96 MiB taken right before a cold row " +
      "(at the start for hot rows). vs.peer = peer ms / our ms.",
    rows,
    targets,
    dense,
    seconds: (performance.now() - started) / 1000,
  };
  // --out is relative to the project root unless absolute.
  const outPath = resolve(ROOT, args.out);
  mkdirSync(dirname(outPath), { recursive: true });
  writeFileSync(outPath, JSON.stringify(json, null, 2));
  log(`\nwrote ${args.out} (${json.seconds.toFixed(0)} s)`);
}

/** The compute ceilings of 128-bit Wasm SIMD here (scripts/lib/simd-ceiling.ts: f32 FMA chains,
 * int8 dot chains, the int8 batch tile from L1), best of 5 bursts in wall clock and in process CPU
 * time, in G ops/s (a multiply-add counts 2), for the simd and relaxed builds. */
function simdCeiling(): { flavor: KernelFlavor; name: string; wall: number; cpu: number }[] {
  const out: { flavor: KernelFlavor; name: string; wall: number; cpu: number }[] = [];
  for (const flavor of ["simd", "relaxed"] as const) {
    let k: ReturnType<typeof loadKernels>;
    try {
      k = loadKernels(flavor);
    } catch {
      continue;
    }
    for (const c of ceilingCases(k, flavor)) {
      // ≈ 8 ms of work a unit batch at the f32 ceiling; the tile cases are 2^13 ops a unit.
      const units = Math.max(1, Math.round(128e6 / c.opsPerUnit));
      let wall = Infinity;
      for (let r = 0; r < 5; r++) {
        const t = performance.now();
        c.run(units);
        wall = Math.min(wall, performance.now() - t);
      }
      const cpu = cpuTimeSync(() => c.run(units), 200);
      out.push({
        flavor,
        name: c.name,
        wall: (c.opsPerUnit * units) / (wall * 1e6),
        cpu: (c.opsPerUnit * units) / (cpu * 1e6),
      });
    }
  }
  return out;
}

/**
 * A progress bar (stderr, terminals only) over the expert rows this run will produce — Node Wasm
 * and peer rows for every shape, then the workerd rows — polled from `rows` so the measuring code
 * stays as it is. Returns the function that stops it.
 */
function rowProgress(rows: Row[], args: Args): () => void {
  const impls = WASM_IMPLS.filter((i) => !args.impls || args.impls.includes(i.impl));
  const shapes = args.denseOnly ? 0 : args.shapes.length;
  const node = shapes * (impls.length + PEER_ROWS.length) * args.batches.length * 2;
  const workerdBatches = args.batches.filter((b) => b === 1 || b === Math.max(...args.batches)).length;
  const inWorkerd = impls.filter((i) => i.impl !== "js-ref").length;
  const workerd = args.workerd && !args.denseOnly ? shapes * inWorkerd * workerdBatches * 2 : 0;
  const bar = progressBar("bench:kernels rows", node + workerd);
  const timer = setInterval(() => bar.update(rows.length), 500);
  return () => {
    clearInterval(timer);
    bar.update(rows.length);
    bar.stop();
  };
}

async function peerRows(
  rows: Row[],
  shape: ExpertShape,
  w: ReturnType<typeof randomExpert>,
  args: Args,
  roofline: { now(reps?: number): number },
  maxN: number,
): Promise<void> {
  const bandwidth = roofline.now(5);
  const q4 = quantizeExpertQ4g(w.w1, w.w3, w.w2, shape.dModel, shape.dFf, 32);
  const models = {
    f32: expertModelF32(w.w1, w.w3, w.w2, shape.dModel, shape.dFf),
    int8: expertModelQ8(w.q, shape.dModel, shape.dFf),
    int4: expertModelQ4(q4, shape.dModel, shape.dFf),
  };
  for (const p of PEER_ROWS) {
    const info: ImplInfo = { impl: "js-ref", label: p.label, dtype: p.dtype, flavor: null };
    const bytes = p.model === "int4" ? 3 * shape.dModel * shape.dFf * (0.5 + 4 / 32) : weightBytes(info, shape);
    const base = {
      runtime: "node" as const,
      shape: shapeName(shape),
      impl: `${p.peer}-${p.model}`,
      label: `${p.label}`,
      dtype: p.dtype,
    };
    const loaded = await loadOrt(p.peer);
    if ("skipped" in loaded) {
      rows.push(...skippedRows(base, args.batches, loaded.skipped, { shape, bytes, bandwidth }));
      continue;
    }
    base.label = `${p.label} ${loaded.version}`;
    const { ort } = loaded;
    const copies = coldCopies(bytes, args.coldMb << 20);
    try {
      const sessions: Awaited<ReturnType<typeof ortSession>>[] = [];
      for (let c = 0; c < copies; c++) sessions.push(await ortSession(ort, p.peer, models[p.model]));
      for (const batch of args.batches) {
        const x = new Float32Array(maxN * shape.dModel).map((_, i) => Math.sin(i * 0.61) * 1.5);
        const feeds = { x: new ort.Tensor("float32", x.subarray(0, batch * shape.dModel), [batch, shape.dModel]) };
        for (const weights of ["cold", "hot"] as const) {
          const bwNow = weights === "cold" ? roofline.now() : bandwidth;
          const fn = (i: number) => sessions[weights === "cold" ? i % copies : 0].run(feeds);
          const t = await measureAsync(fn, { budgetMs: args.budgetMs });
          const cpuMs = await cpuTimeAsync(fn, args.budgetMs);
          rows.push(
            fill(
              { ...base, batch, weights, ms: t.ms, msMin: t.msMin, cpuMs, copies: weights === "cold" ? copies : 1 },
              shape,
              bytes,
              bwNow,
            ),
          );
        }
      }
      for (const s of sessions) await s.release?.();
    } catch (err) {
      const reason = `${p.peer} failed: ${err instanceof Error ? err.message.split("\n")[0] : String(err)}`;
      rows.push(...skippedRows(base, args.batches, reason, { shape, bytes, bandwidth }));
    }
  }
}

async function workerdRows(rows: Row[], args: Args, maxN: number, roofline: { now(reps?: number): number }) {
  const wb = await startWorkerdBench();
  try {
    const info = await wb.info();
    const measured = await wb.bandwidth(96);
    // The same memory as the Node run: cold rows are judged against a Node streaming read taken
    // right before them (workerd's whole-request timing adds noise to its own reading).
    const bandwidth = Math.max(measured, roofline.now(5));
    log(
      `workerd: streaming read ${measured.toFixed(1)} GB/s (roofline used: ${bandwidth.toFixed(1)} GB/s); ` +
        `relaxed ${info.relaxed?.ok ? `on (int8 paths ${info.relaxed.q8Paths?.join(", ")})` : "unavailable"}`,
    );
    const ceilings = await wb.ceilings();
    log("workerd: 128-bit SIMD ceilings, G ops/s (GFLOP/s for f32), wall / workerd CPU time:");
    for (const c of ceilings) {
      log(`  ${c.name.padEnd(52)} ${c.wall.toFixed(1).padStart(7)} ${(c.cpu?.toFixed(1) ?? "—").padStart(7)}`);
    }
    const batches = args.batches.filter((b) => b === 1 || b === Math.max(...args.batches));
    for (const shape of args.shapes) {
      for (const impl of WASM_IMPLS.filter(
        (i) => i.impl !== "js-ref" && (!args.impls || args.impls.includes(i.impl)),
      )) {
        const bytes = weightBytes(impl, shape);
        const base = {
          runtime: "workerd" as const,
          shape: shapeName(shape),
          impl: impl.impl,
          label: impl.label,
          dtype: impl.dtype,
        };
        if (
          (impl.flavor === "relaxed" && !info.relaxed?.ok) ||
          (impl.q8Path && !(info[impl.flavor ?? "simd"]?.q8Paths ?? []).includes(impl.q8Path))
        ) {
          // (workerd runs the dot-add form, its preferred one)
          const reason = "relaxed path not available in workerd";
          rows.push(...skippedRows(base, batches, reason, { shape, bytes, bandwidth }));
          continue;
        }
        const copies = await wb.setup(impl.impl, shape.dModel, shape.dFf, coldCopies(bytes, args.coldMb << 20), maxN);
        for (const batch of batches) {
          for (const weights of ["cold", "hot"] as const) {
            const node = rows.find(
              (r) =>
                r.runtime === "node" &&
                r.shape === base.shape &&
                r.impl === impl.impl &&
                r.batch === batch &&
                r.weights === weights,
            );
            const bwNow = weights === "cold" ? roofline.now() : bandwidth;
            const t = await wb.time(batch, weights === "cold", node?.ms ?? 1);
            rows.push(
              fill(
                {
                  ...base,
                  batch,
                  weights,
                  ms: t.ms,
                  msMin: t.msMin,
                  cpuMs: t.cpuMs,
                  copies: weights === "cold" ? copies : 1,
                },
                shape,
                bytes,
                bwNow,
              ),
            );
          }
        }
      }
    }
    return { bandwidth: measured, info, ceilings };
  } finally {
    await wb.close();
  }
}

interface TargetCheck {
  target: string;
  met: boolean | null;
  detail: string;
}

/** The issue's benchmark targets, judged on this run's rows (best of Node and workerd where the
 * target names no runtime). */
function checkTargets(rows: Row[]): TargetCheck[] {
  const ms = (rt: Runtime, shape: string, batch: number, w: "cold" | "hot", impl: string) =>
    rows.find((r) => r.runtime === rt && r.shape === shape && r.batch === batch && r.weights === w && r.impl === impl)
      ?.ms ?? null;
  const best = (
    shape: string,
    batch: number,
    w: "cold" | "hot",
    impls: string[],
    runtimes: Runtime[] = ["node", "workerd"],
  ) => {
    let bestMs: number | null = null;
    let where = "";
    for (const rt of runtimes)
      for (const impl of impls) {
        const m = ms(rt, shape, batch, w, impl);
        if (m !== null && (bestMs === null || m < bestMs)) [bestMs, where] = [m, `${impl} in ${rt}`];
      }
    return { ms: bestMs, where };
  };
  const f32 = ["wasm-f32-packed", "wasm-f32-packed-relaxed"];
  const int8 = ["wasm-int8-dot16", "wasm-int8-relaxed", "wasm-int8-relaxed-7bit"];
  const shapes = [...new Set(rows.map((r) => r.shape))];
  const out: TargetCheck[] = [];
  const add = (target: string, parts: { ok: boolean | null; text: string }[]) => {
    const known = parts.filter((p) => p.ok !== null);
    out.push({
      target,
      met: known.length === 0 ? null : known.every((p) => p.ok),
      detail: parts.map((p) => p.text).join("; "),
    });
  };
  const fmt = (v: number | null, d = 3) => (v === null ? "—" : v.toFixed(d));
  add(
    "batch 1 cold f32 ≥ 1.0× onnxruntime-node",
    shapes.map((s) => {
      const a = best(s, 1, "cold", f32);
      const p = ms("node", s, 1, "cold", "onnxruntime-node-f32");
      return { ok: a.ms && p ? p / a.ms >= 1 : null, text: `${s} ${fmt(a.ms)} ms (${a.where}) vs ${fmt(p)} ms` };
    }),
  );
  add(
    "batch 1 cold f32 ≥ 85% of the Wasm memory roofline (read just before)",
    shapes.map((s) => {
      const frac = Math.max(
        0,
        ...rows
          .filter(
            (r) =>
              r.shape === s &&
              r.batch === 1 &&
              r.weights === "cold" &&
              f32.includes(r.impl) &&
              r.fracBandwidth !== null,
          )
          .map((r) => r.fracBandwidth!),
      );
      return { ok: frac === 0 ? null : frac >= 0.85, text: `${s} ${frac === 0 ? "—" : `${Math.round(frac * 100)}%`}` };
    }),
  );
  const limits: Record<string, number> = { "512x1408": 0.08, "1024x2816": 0.3 };
  add(
    "batch 1 cold int8 ≤ 0.08 ms (512×1408), ≤ 0.30 ms (1024×2816)",
    shapes
      .filter((s) => limits[s])
      .map((s) => {
        const a = best(s, 1, "cold", int8);
        return { ok: a.ms === null ? null : a.ms <= limits[s], text: `${s} ${fmt(a.ms)} ms (${a.where})` };
      }),
  );
  add(
    "batch 1 cold int8 faster than onnxruntime-node int8",
    shapes.map((s) => {
      const a = best(s, 1, "cold", int8);
      const p = ms("node", s, 1, "cold", "onnxruntime-node-int8");
      return { ok: a.ms && p ? a.ms < p : null, text: `${s} ${fmt(a.ms)} vs ${fmt(p)} ms` };
    }),
  );
  add(
    "batch 1 cold int8 ≥ 3× the f32 Wasm kernel",
    shapes.map((s) => {
      const a = best(s, 1, "cold", int8);
      const f = best(s, 1, "cold", f32);
      return {
        ok: a.ms && f.ms ? f.ms / a.ms >= 3 : null,
        text: `${s} ${a.ms && f.ms ? (f.ms / a.ms).toFixed(2) : "—"}×`,
      };
    }),
  );
  add(
    "batch 64 f32 ≥ 50 GFLOP/s",
    shapes.map((s) => {
      const a = best(s, 64, "hot", f32);
      const [dm, df] = s.split("x").map(Number);
      const g = a.ms ? (6 * dm * df * 64) / (a.ms * 1e6) : null;
      return { ok: g === null ? null : g >= 50, text: `${s} ${fmt(g, 1)} GFLOP/s` };
    }),
  );
  add(
    "batch 64 int8 in workerd ≥ 150 GOP/s-eq",
    shapes.map((s) => {
      const a = best(s, 64, "hot", int8, ["workerd"]);
      const [dm, df] = s.split("x").map(Number);
      const g = a.ms ? (6 * dm * df * 64) / (a.ms * 1e6) : null;
      // workerd's own CPU time (its processes, /proc) over the same requests, best int8 path.
      const cpu = rows
        .filter((r) => r.runtime === "workerd" && r.shape === s && r.batch === 64 && r.weights === "hot")
        .filter((r) => int8.includes(r.impl) && r.cpuMs)
        .map((r) => ({ g: (6 * dm * df * 64) / ((r.cpuMs ?? 1) * 1e6), impl: r.impl }))
        .sort((x, y) => y.g - x.g)[0];
      const cpuText = cpu ? `; ${fmt(cpu.g, 1)} GOP/s in workerd CPU time (${cpu.impl})` : "";
      const ok = g === null ? null : g >= 150 || (cpu?.g ?? 0) >= 150;
      return { ok, text: `${s} ${fmt(g, 1)} GOP/s wall (${a.where})${cpuText}` };
    }),
  );
  for (const dtype of ["f32", "int8"] as const) {
    const parts: { ok: boolean | null; text: string }[] = [];
    for (const s of shapes)
      for (const batch of [...new Set(rows.map((r) => r.batch))])
        for (const w of ["cold", "hot"] as const) {
          const a = best(s, batch, w, dtype === "f32" ? f32 : int8);
          const p = ms("node", s, batch, w, `onnxruntime-web-${dtype}`);
          if (a.ms && p) parts.push({ ok: p / a.ms >= 1.5, text: `${s}/b${batch}/${w} ${(p / a.ms).toFixed(2)}×` });
        }
    add(`every shape and batch ≥ 1.5× onnxruntime-web (${dtype})`, parts);
  }
  return out;
}

/** vs[peer] = peer ms / row ms, against the Node peer row of the same shape, batch, weights, dtype. */
function ratios(rows: Row[]): void {
  for (const r of rows) {
    if (r.ms === null) continue;
    for (const peer of ["onnxruntime-node", "onnxruntime-web"] as const) {
      const p = rows.find(
        (q) =>
          q.runtime === "node" &&
          q.impl === `${peer}-${r.dtype}` &&
          q.shape === r.shape &&
          q.batch === r.batch &&
          q.weights === r.weights,
      );
      if (p?.ms) r.vs[peer] = p.ms / r.ms;
    }
  }
}

function printTable(rows: Row[], args: Args): void {
  const f = (v: number | null | undefined, d = 2) => (v === null || v === undefined ? "—" : v.toFixed(d));
  for (const runtime of ["node", "workerd"] as const) {
    const mine = rows.filter((r) => r.runtime === runtime);
    if (mine.length === 0) continue;
    log(`\n=== ${runtime === "node" ? "Node" : "workerd"} ===`);
    for (const shape of args.shapes) {
      for (const batch of args.batches) {
        for (const weights of ["cold", "hot"] as const) {
          const group = mine.filter((r) => r.shape === shapeName(shape) && r.batch === batch && r.weights === weights);
          if (group.length === 0) continue;
          log(`\n${shapeName(shape)}  batch ${batch}  ${weights}`);
          log(
            `${"impl".padEnd(52)}${"ms/call".padStart(9)}${"cpu ms".padStart(9)}${"GFLOP/s".padStart(9)}` +
              `${"GB/s".padStart(7)}${"%BW".padStart(6)}${"vs ort-node".padStart(13)}${"vs ort-web".padStart(12)}`,
          );
          for (const r of group) {
            if (r.ms === null) {
              log(`${r.label.padEnd(52)}  skipped: ${r.skipped}`);
              continue;
            }
            const bw = r.fracBandwidth === null ? "—" : `${Math.round(r.fracBandwidth * 100)}%`;
            const vsNode = r.vs["onnxruntime-node"] ? `${f(r.vs["onnxruntime-node"])}×` : "—";
            const vsWeb = r.vs["onnxruntime-web"] ? `${f(r.vs["onnxruntime-web"])}×` : "—";
            log(
              `${r.label.padEnd(52)}${f(r.ms, 3).padStart(9)}${f(r.cpuMs, 3).padStart(9)}` +
                `${f(r.gflops, 1).padStart(9)}${f(r.gbps, 1).padStart(7)}${bw.padStart(6)}` +
                `${vsNode.padStart(13)}${vsWeb.padStart(12)}`,
            );
          }
        }
      }
    }
  }
}

function log(s: string): void {
  process.stdout.write(`${s}\n`);
}

await main();
