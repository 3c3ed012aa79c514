/**
 * @module bench-workerd-worker — the Worker bench:kernels runs inside workerd (bundled by wrangler
 * with the kernels' CompiledWasm modules, as the real Worker is). Node drives it over fetch:
 *   POST /setup?impl&dModel&dFf&copies&maxN  builds the copies of one case (bench-cases.ts)
 *   POST /dsetup?impl&rows&cols&copies&maxN  the same for a dense stage matrix (bench-dense.ts)
 *   POST /run?n&iters&cold=0|1              runs `iters` expert calls, nothing else
 *   POST /stream?mb&reps                    the streaming-read roofline
 *   GET  /peaks                             the compute-ceiling cases (simd-ceiling.ts) of each build
 *   POST /peak?flavor&name&units            runs `units` units of one of them
 *   GET  /info                              which builds and int8 paths work here
 * Timing is done by Node around /run (workerd's clocks stand still while a request computes):
 * ms per call = (time(iters) − time(0 iters)) / iters, see bench-workerd.ts.
 */
import type { KernelFlavor } from "../../src/kernels/index";
import { createKernels } from "../../src/kernels/workers";
import { randomExpert, setupCase, streamBuffer, WASM_IMPLS, type BenchCase } from "./bench-cases";
import { DENSE_IMPLS, setupDenseCase } from "./bench-dense";
import { ceilingCases, type CeilingCase } from "./simd-ceiling";

let current: Pick<BenchCase, "call" | "copies"> | null = null;
let cursor = 0;
let stream: ReturnType<typeof streamBuffer> | null = null;
const peaks = new Map<KernelFlavor, CeilingCase[]>();

/** The ceiling cases of the simd and relaxed builds that load here (built once, kept). */
function peakCases(): Map<KernelFlavor, CeilingCase[]> {
  for (const flavor of ["simd", "relaxed"] as const) {
    if (peaks.has(flavor) || !flavorWorks(flavor).ok) continue;
    peaks.set(flavor, ceilingCases(createKernels(flavor, { maxBytes: 1 << 20 }), flavor));
  }
  return peaks;
}

function num(p: URLSearchParams, name: string): number {
  const v = Number(p.get(name));
  if (!Number.isFinite(v)) throw new Error(`${name} must be a number, got ${p.get(name)}`);
  return v;
}

function flavorWorks(flavor: KernelFlavor): { ok: boolean; q8Paths?: string[] } {
  try {
    const k = createKernels(flavor, { maxBytes: 1 << 20 });
    return { ok: true, q8Paths: k.q8Paths };
  } catch {
    return { ok: false };
  }
}

export default {
  async fetch(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const p = url.searchParams;
    try {
      switch (url.pathname) {
        case "/info":
          return Response.json({
            scalar: flavorWorks("scalar"),
            simd: flavorWorks("simd"),
            relaxed: flavorWorks("relaxed"),
          });
        case "/setup": {
          const info = WASM_IMPLS.find((i) => i.impl === p.get("impl"));
          if (!info) throw new Error(`impl must be one of ${WASM_IMPLS.map((i) => i.impl).join(", ")}`);
          const shape = { dModel: num(p, "dModel"), dFf: num(p, "dFf") };
          current = null;
          current = setupCase(info, shape, randomExpert(shape), num(p, "copies"), num(p, "maxN"), (flavor) =>
            createKernels(flavor),
          );
          cursor = 0;
          return Response.json({ copies: current.copies });
        }
        case "/dsetup": {
          const impl = DENSE_IMPLS.find((i) => i.impl === p.get("impl"));
          if (!impl) throw new Error(`impl must be one of ${DENSE_IMPLS.map((i) => i.impl).join(", ")}`);
          current = null;
          const shape = { rows: num(p, "rows"), cols: num(p, "cols") };
          // The build a StageHost would pick: relaxed where it works, else simd.
          current = setupDenseCase(impl, shape, num(p, "copies"), num(p, "maxN"), () => createKernels("best"));
          cursor = 0;
          return Response.json({ copies: current.copies });
        }
        case "/run": {
          if (!current) throw new Error("POST /setup first");
          const [n, iters, cold] = [num(p, "n"), num(p, "iters"), p.get("cold") === "1"];
          for (let i = 0; i < iters; i++) current.call(cold ? cursor++ : 0, n);
          return Response.json({ iters });
        }
        case "/stream": {
          const mb = num(p, "mb");
          if (!stream || stream.bytes !== mb << 20) stream = streamBuffer(createKernels("simd"), mb);
          for (let r = 0; r < num(p, "reps"); r++) stream.run();
          return Response.json({ bytes: stream.bytes });
        }
        case "/peaks":
          return Response.json(
            [...peakCases()].flatMap(([flavor, cases]) =>
              cases.map((c) => ({ flavor, name: c.name, opsPerUnit: c.opsPerUnit })),
            ),
          );
        case "/peak": {
          const cases = peakCases().get(p.get("flavor") as KernelFlavor) ?? [];
          const c = cases.find((x) => x.name === p.get("name"));
          if (!c) throw new Error(`name must be one of ${cases.map((x) => x.name).join(", ")}`);
          return Response.json({ result: c.run(num(p, "units")) });
        }
        default:
          return new Response("not found", { status: 404 });
      }
    } catch (err) {
      return new Response(err instanceof Error ? err.message : String(err), { status: 500 });
    }
  },
};
