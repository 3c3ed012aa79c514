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
 * (15.x) lowers it to one AVX-VNNI vpdpbusd, which measured faster than the i16 form both cold at
 * batch 1 and hot at batch 64 (README, kernel benchmark). The packed f32 kernels take their staged
 * path: workerd runs Wasm without a trap handler, so every load from a variable address carries a
 * bounds check, and the staged path makes one such load per 8 multiply-adds where the register
 * tiles make 6 per 8 (README, batch tiles).
 */
export function createKernels(flavor: KernelFlavor | "best" = "simd", opts: KernelOptions = {}): Kernels {
  const o: KernelOptions = { q8Path: "relaxed_dot", packedF32Path: "staged", ...opts };
  if (flavor === "best") {
    return Kernels.pick({ relaxed: () => relaxedModule, simd: () => simdModule }, o);
  }
  return Kernels.instantiate(MODULES[flavor], flavor, o);
}
