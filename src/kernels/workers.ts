/**
 * @module kernels/workers — Wasm kernels in the Workers runtime.
 *
 * workerd refuses to compile bytes at run time, so every build is imported as a module already
 * compiled by wrangler's CompiledWasm rule (wrangler.toml `[[rules]]`).
 */
import relaxedModule from "../../build/kernels-relaxed.wasm";
import scalarModule from "../../build/kernels-scalar.wasm";
import simdModule from "../../build/kernels-simd.wasm";
import { Kernels, type KernelFlavor, type KernelOptions } from "./index";

const MODULES: Record<KernelFlavor, WebAssembly.Module> = {
  scalar: scalarModule,
  simd: simdModule,
  relaxed: relaxedModule,
};

/**
 * A fresh Kernels instance (its own memory). "best" = relaxed after its start-up probe, else simd.
 * The relaxed int8 dot defaults to the i32x4 dot-add form (14-bit activations) here: workerd's V8
 * (15.x) lowers it to one AVX-VNNI vpdpbusd — with 7-bit activations, measured 0.25 vs 0.54 ms
 * per cold 1024×2816 int8 expert and 133 vs 79 GOP/s at batch 64 against the i16 form.
 */
export function createKernels(flavor: KernelFlavor | "best" = "simd", opts: KernelOptions = {}): Kernels {
  const o: KernelOptions = { q8Path: "relaxed_dot", ...opts };
  if (flavor === "best") {
    return Kernels.pick({ relaxed: () => relaxedModule, simd: () => simdModule }, o);
  }
  return Kernels.instantiate(MODULES[flavor], flavor, o);
}
