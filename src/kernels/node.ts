/**
 * @module kernels/node — loads the Wasm kernels from build/ in Node (tests, scripts, benchmarks).
 * Workers cannot compile bytes at run time; they use src/kernels/workers.ts instead.
 */
import { readFileSync } from "node:fs";
import { Kernels, type KernelFlavor, type KernelOptions } from "./index";

const modules = new Map<KernelFlavor, WebAssembly.Module>();

// The Workers types (tsconfig) declare WebAssembly.Module abstract because workerd refuses to
// compile at run time; Node compiles synchronously with the same constructor.
const CompileModule = WebAssembly.Module as unknown as new (bytes: Uint8Array) => WebAssembly.Module;

const FILES: Record<KernelFlavor, URL> = {
  scalar: new URL("../../build/kernels-scalar.wasm", import.meta.url),
  simd: new URL("../../build/kernels-simd.wasm", import.meta.url),
  relaxed: new URL("../../build/kernels-relaxed.wasm", import.meta.url),
};

/** Compiled module for a flavor, read from build/kernels-<flavor>.wasm once per process. Throws a
 * CompileError when this Node lacks the build's features (relaxed SIMD). */
export function kernelModule(flavor: KernelFlavor): WebAssembly.Module {
  let module = modules.get(flavor);
  if (module === undefined) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(FILES[flavor]);
    } catch (err) {
      throw new Error(`cannot read build/kernels-${flavor}.wasm (${String(err)}); run \`npm run build\` first`);
    }
    module = new CompileModule(bytes);
    modules.set(flavor, module);
  }
  return module;
}

/**
 * A fresh Kernels instance (its own memory) of the given build; "best" = relaxed if it works here
 * (probed), else simd. int8 defaults to dot_i16x8 (12-bit activations) here: Node 22's V8 12 has
 * no AVX-VNNI lowering for the relaxed dot, so the 14-bit relaxed path costs as many instructions
 * and measured slower at the same accuracy (README, kernel benchmark).
 */
export function loadKernels(flavor: KernelFlavor | "best", opts: KernelOptions = {}): Kernels {
  const o: KernelOptions = { q8Path: "dot_i16x8", ...opts };
  if (flavor === "best") {
    return Kernels.pick(
      {
        relaxed: () => kernelModule("relaxed"),
        simd: () => kernelModule("simd"),
        scalar: () => kernelModule("scalar"),
      },
      o,
    );
  }
  return Kernels.instantiate(kernelModule(flavor), flavor, o);
}
