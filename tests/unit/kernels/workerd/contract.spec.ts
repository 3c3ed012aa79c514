/** @module contract.spec — the kernel contract suite (../contract.ts) against all three builds,
 * inside workerd, with the modules imported as wrangler bundles them for the real Worker. */
import relaxedModule from "../../../../build/kernels-relaxed.wasm";
import scalarModule from "../../../../build/kernels-scalar.wasm";
import simdModule from "../../../../build/kernels-simd.wasm";
import { Kernels, type KernelFlavor } from "../../../../src/kernels/index";
import { createKernels } from "../../../../src/kernels/workers";
import { kernelContract } from "../contract";
import type { KernelSource } from "../helpers";

const MODULES: Record<KernelFlavor, WebAssembly.Module> = {
  scalar: scalarModule,
  simd: simdModule,
  relaxed: relaxedModule,
};

const workerdKernels: KernelSource = {
  load: (flavor, opts) => createKernels(flavor, opts),
  module: (flavor) => MODULES[flavor],
  supports: (flavor) => {
    try {
      Kernels.instantiate(MODULES[flavor], flavor);
      return true;
    } catch {
      return false;
    }
  },
};

for (const flavor of ["scalar", "simd", "relaxed"] as const) kernelContract(flavor, workerdKernels);
