/**
 * @module Measured per-call costs for the cluster simulator (scripts/simulate.ts), never constants:
 * - the expert FFN kernel as a function of tokens per call, at the demo model's shape (dModel 256,
 *   dFf 2048), cycling over more experts than the cache holds, as an ExpertHost holding several
 *   experts does. Two variants: what the ExpertHost serves with (ExpertStore: f32 experts packed
 *   into panels, `expertFfnPacked`, on the best flavor this machine runs) — the simulator uses
 *   this one — and the plain SIMD `expertFfn` for reference;
 * - a Worker → Durable Object RPC round trip carrying a Float32Array of n tokens × dModel (and
 *   returning one of the same size), in real workerd through Miniflare;
 * - loading one expert into an instance: its bytes through an RPC plus the copy into Wasm memory.
 *
 * RPC timing: workerd's clock only moves on I/O (whole milliseconds locally), so the Worker times
 * a loop of many RPCs (each RPC is I/O, so the clock does advance) and divides; Node's wall time
 * around the same request, minus an empty request, is recorded beside it as a cross-check.
 */
import { cpus, hostname, loadavg } from "node:os";
import { Miniflare } from "miniflare";
import type { Kernels } from "../../src/kernels/index";
import { loadKernels } from "../../src/kernels/node";
import { expertPackedBytes, packExpertF32 } from "../../src/kernels/packing";

export interface CostPoint {
  /** Tokens per call (kernel) or payload bytes each way (RPC). */
  x: number;
  ms: number;
}

export interface Calibration {
  date: string;
  machine: { host: string; cpu: string; cores: number; node: string; loadavg: number[] };
  /** The serving kernel (packed f32, best flavor): what the simulator charges per expert call. */
  kernel: KernelCalibration;
  /** The plain SIMD `expertFfn` on unpacked weights, for reference. */
  kernelPlain?: KernelCalibration;
  /** Round trip, Worker → DO → Worker, payload of x bytes each way. */
  rpc: { method: string; points: CostPoint[]; wallPoints: CostPoint[] };
  /** Loading one expert's weights into an instance: `rpcMs` (bytes in) + `wasmCopyMs`. */
  expertLoad: { bytes: number; rpcMs: number; wasmCopyMs: number; ms: number };
}

export interface KernelCalibration {
  kernel: string;
  flavor: string;
  dModel: number;
  dFf: number;
  expertsCycled: number;
  points: CostPoint[];
}

export const D_MODEL = 256;
export const D_FF = 2048;
const KERNEL_TOKENS = [1, 2, 4, 8, 16, 32, 64, 128];
const RPC_TOKENS = [1, 4, 16, 64, 256];

function machine(): Calibration["machine"] {
  return {
    host: hostname(),
    cpu: cpus()[0]?.model ?? "unknown",
    cores: cpus().length,
    node: process.version,
    loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

function median(xs: number[]): number {
  const a = [...xs].sort((x, y) => x - y);
  return a.length % 2 ? a[a.length >> 1] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2;
}

/** Random weights in [-0.05, 0.05): the values do not matter for timing, only their size. */
function randomF32(len: number, seed: number): Float32Array {
  const out = new Float32Array(len);
  let s = seed >>> 0;
  for (let i = 0; i < len; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 4294967296 - 0.5) * 0.1;
  }
  return out;
}

/** Median ms per call for each token count, over `batches` timed batches of ≥ 40 ms each. */
function timeKernel(call: (n: number) => void, nExp: number, batches: number): CostPoint[] {
  const points: CostPoint[] = [];
  for (const n of KERNEL_TOKENS) {
    for (let i = 0; i < 2 * nExp; i++) call(n); // warm up (JIT, pages)
    const perCall: number[] = [];
    for (let b = 0; b < batches; b++) {
      let calls = 0;
      const t0 = performance.now();
      let t = t0;
      while (t - t0 < 40 || calls < nExp) {
        call(n);
        calls++;
        t = performance.now();
      }
      perCall.push((t - t0) / calls);
    }
    points.push({ x: n, ms: median(perCall) });
  }
  return points;
}

/** The serving kernel: experts packed as ExpertStore packs them, `expertFfnPacked`, best flavor. */
export function measureKernel(opts: { expertsCycled?: number; batches?: number } = {}): KernelCalibration {
  const nExp = opts.expertsCycled ?? 8;
  const k = loadKernels("best");
  const nMax = KERNEL_TOKENS[KERNEL_TOKENS.length - 1];
  const floats = expertPackedBytes("f32", D_MODEL, D_FF) / 4;
  const blobs = Array.from({ length: nExp }, (_, e) => {
    const packed = new Float32Array(floats);
    packExpertF32(
      packed,
      randomF32(D_FF * D_MODEL, 3 * e + 1),
      randomF32(D_FF * D_MODEL, 3 * e + 2),
      randomF32(D_MODEL * D_FF, 3 * e + 3),
      D_MODEL,
      D_FF,
    );
    return k.allocF32(packed);
  });
  const x = k.allocF32(randomF32(nMax * D_MODEL, 99)); // [nMax, dModel]
  const out = k.alloc(nMax * D_MODEL * 4); // [nMax, dModel]
  const scratch = k.alloc(k.scratchBytes("ffnF32", nMax, D_MODEL, D_FF));
  let e = 0;
  const points = timeKernel(
    (n) => k.expertFfnPacked(out, x, blobs[e++ % nExp], n, D_MODEL, D_FF, scratch),
    nExp,
    opts.batches ?? 5,
  );
  return {
    kernel: "expertFfnPacked (f32 panels)",
    flavor: k.flavor,
    dModel: D_MODEL,
    dFf: D_FF,
    expertsCycled: nExp,
    points,
  };
}

/** The plain SIMD kernel on unpacked weights, `Kernels.expertFfn`. */
export function measurePlainKernel(opts: { expertsCycled?: number; batches?: number } = {}): KernelCalibration {
  const nExp = opts.expertsCycled ?? 8;
  const k: Kernels = loadKernels("simd");
  const nMax = KERNEL_TOKENS[KERNEL_TOKENS.length - 1];
  // w1, w3 [dFf, dModel], w2 [dModel, dFf] per expert.
  const experts = Array.from({ length: nExp }, (_, e) => ({
    w1: k.allocF32(randomF32(D_FF * D_MODEL, 3 * e + 1)),
    w3: k.allocF32(randomF32(D_FF * D_MODEL, 3 * e + 2)),
    w2: k.allocF32(randomF32(D_MODEL * D_FF, 3 * e + 3)),
  }));
  const x = k.allocF32(randomF32(nMax * D_MODEL, 99)); // [nMax, dModel]
  const out = k.alloc(nMax * D_MODEL * 4); // [nMax, dModel]
  const scratch = k.alloc(2 * nMax * D_FF * 4); // [2, nMax, dFf]
  let e = 0;
  const points = timeKernel(
    (n) => {
      const w = experts[e++ % nExp];
      k.expertFfn(out, x, w.w1, w.w3, w.w2, n, D_MODEL, D_FF, scratch);
    },
    nExp,
    opts.batches ?? 5,
  );
  return { kernel: "expertFfn (unpacked)", flavor: k.flavor, dModel: D_MODEL, dFf: D_FF, expertsCycled: nExp, points };
}

/** Milliseconds to copy one expert's weights into Wasm memory (allocF32 of a fresh buffer). */
export function measureWasmCopy(bytes: number): number {
  const k = loadKernels("best");
  const src = randomF32(bytes / 4, 7);
  const times: number[] = [];
  for (let i = 0; i < 7; i++) {
    const t0 = performance.now();
    const ptr = k.allocF32(src);
    times.push(performance.now() - t0);
    k.free(ptr);
  }
  return median(times.slice(2));
}

const RPC_WORKER = `
import { DurableObject } from "cloudflare:workers";
export class Echo extends DurableObject {
  // Like an ExpertHost forward: takes [n, dModel] activations, returns a fresh array of that size.
  forward(x) {
    const y = new Float32Array(x.length);
    y[0] = x[0];
    return y;
  }
  load(bytes) {
    return bytes.byteLength;
  }
}
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const floats = Number(url.searchParams.get("floats"));
    const iters = Number(url.searchParams.get("iters"));
    const stub = env.ECHO.get(env.ECHO.idFromName("calibration"));
    const x = new Float32Array(floats);
    if (iters === 0) return Response.json({ ms: 0 });
    await stub.forward(x);
    const t0 = Date.now();
    for (let i = 0; i < iters; i++) await stub.forward(x);
    const t1 = Date.now();
    return Response.json({ ms: t1 - t0 });
  },
};
`;

/** RPC round trips in workerd for each payload size; also the transfer of one expert's bytes. */
export async function measureRpc(expertBytes: number): Promise<{ rpc: Calibration["rpc"]; expertRpcMs: number }> {
  process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= "false";
  const name = "calibration";
  const mf = new Miniflare({
    workers: [
      {
        config: {
          name,
          compatibilityDate: "2026-10-01",
          manifest: { mainModule: "worker.js", modules: { "worker.js": { type: "esm", contents: RPC_WORKER } } },
          env: { ECHO: { type: "durable-object", worker: name, exportName: "Echo" } },
          exports: { Echo: { type: "durable-object", storage: "sqlite" } },
        },
      },
    ],
    cf: false,
    unsafeObservability: false,
  });
  try {
    const url = await mf.ready;
    const run = async (floats: number, iters: number): Promise<{ inWorker: number; wall: number }> => {
      const t0 = performance.now();
      const res = await mf.dispatchFetch(new URL(`/?floats=${floats}&iters=${iters}`, url));
      const body = (await res.json()) as { ms: number };
      return { inWorker: body.ms, wall: performance.now() - t0 };
    };
    await run(1024, 200); // warm up
    const empty: number[] = [];
    for (let i = 0; i < 5; i++) empty.push((await run(1, 0)).wall);
    const emptyWall = median(empty);
    const points: CostPoint[] = [];
    const wallPoints: CostPoint[] = [];
    for (const n of RPC_TOKENS) {
      const floats = n * D_MODEL;
      // Enough iterations that the loop spans ≥ ~300 ms of workerd's coarse clock.
      const probe = await run(floats, 50);
      const iters = Math.max(200, Math.min(20000, Math.ceil((300 * 50) / Math.max(1, probe.inWorker))));
      const inWorker: number[] = [];
      const wall: number[] = [];
      for (let r = 0; r < 3; r++) {
        const m = await run(floats, iters);
        inWorker.push(m.inWorker / iters);
        wall.push((m.wall - emptyWall) / iters);
      }
      points.push({ x: floats * 4, ms: median(inWorker) });
      wallPoints.push({ x: floats * 4, ms: median(wall) });
    }
    // One expert's weights through an RPC (the bytes an instance receives when it loads one).
    const floats = expertBytes / 4;
    const big: number[] = [];
    for (let r = 0; r < 3; r++) {
      const m = await run(floats, 20);
      big.push(m.inWorker / 20);
    }
    return {
      rpc: {
        method:
          "Worker loop of N awaited RPCs timed with Date.now() inside workerd (Miniflare), ÷ N; " +
          "wallPoints: Node wall time minus an empty request, ÷ N",
        points,
        wallPoints,
      },
      // The echo returns as many bytes as it received: half the round trip is the one-way transfer.
      expertRpcMs: median(big) / 2,
    };
  } finally {
    await mf.dispose();
  }
}

export async function calibrate(log: (msg: string) => void = () => {}): Promise<Calibration> {
  const expertBytes = 3 * D_MODEL * D_FF * 4;
  log("calibrating the expert FFN kernels (Wasm) …");
  const kernel = measureKernel();
  const kernelPlain = measurePlainKernel();
  log("calibrating Worker → Durable Object RPC in workerd …");
  const { rpc, expertRpcMs } = await measureRpc(expertBytes);
  const wasmCopyMs = measureWasmCopy(expertBytes);
  return {
    date: new Date().toISOString(),
    machine: machine(),
    kernel,
    kernelPlain,
    rpc,
    expertLoad: { bytes: expertBytes, rpcMs: expertRpcMs, wasmCopyMs, ms: expertRpcMs + wasmCopyMs },
  };
}

/** Piecewise-linear interpolation over measured points; linear extrapolation past the ends. */
export function interpolate(points: readonly CostPoint[], x: number): number {
  if (points.length === 1) return points[0].ms;
  let i = 1;
  while (i < points.length - 1 && points[i].x < x) i++;
  const a = points[i - 1];
  const b = points[i];
  const t = (x - a.x) / (b.x - a.x);
  return Math.max(0, a.ms + t * (b.ms - a.ms));
}
