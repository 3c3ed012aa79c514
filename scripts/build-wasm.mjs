/**
 * @module build-wasm — compiles assembly/ into build/kernels-{scalar,simd,relaxed}.wasm.
 *
 * One source, three builds: the kernels branch on the compile-time constants ASC_FEATURE_SIMD and
 * ASC_FEATURE_RELAXED_SIMD, so the builds differ only by `--enable simd` and `--enable
 * relaxed-simd` (src/kernels picks relaxed after a start-up probe, else simd). `--maximumMemory 1664` (104 MiB) is the
 * per-isolate Wasm budget that src/kernels relies on (WASM_MAX_BYTES there); it makes memory.grow
 * fail at the budget even where the runtime enforces no limit (local workerd, Node).
 *
 * Idempotent and quick: a build is skipped when its output exists and a hash of the sources, the
 * flags and the compiler version matches the one recorded next to it. `--force` rebuilds anyway.
 * Usage: node scripts/build-wasm.mjs [--force]
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const assemblyDir = `${root}assembly`;
const buildDir = `${root}build`;

const MAX_PAGES = 1664; // 104 MiB of 64 KiB pages: the per-isolate Wasm cap
const COMMON = ["-O3", "--runtime", "stub", "--noAssert", "--initialMemory", "1", "--maximumMemory", String(MAX_PAGES)];
const BUILDS = [
  { flavor: "scalar", flags: [] },
  { flavor: "simd", flags: ["--enable", "simd"] },
  { flavor: "relaxed", flags: ["--enable", "simd", "--enable", "relaxed-simd"] },
];

const force = process.argv.includes("--force");
const ascVersion = createRequire(import.meta.url)("assemblyscript/package.json").version;

function sourceHash(flags) {
  const hash = createHash("sha256");
  hash.update(`asc ${ascVersion}\n${[...COMMON, ...flags].join(" ")}\n`);
  for (const name of readdirSync(assemblyDir)
    .filter((f) => f.endsWith(".ts"))
    .sort()) {
    hash.update(`${name}\n`);
    hash.update(readFileSync(`${assemblyDir}/${name}`));
  }
  return hash.digest("hex");
}

async function build({ flavor, flags }) {
  const out = `${buildDir}/kernels-${flavor}.wasm`;
  const stamp = `${buildDir}/.kernels-${flavor}.hash`;
  const label = `build/kernels-${flavor}.wasm`;
  const hash = sourceHash(flags);
  if (!force && existsSync(out) && existsSync(stamp) && readFileSync(stamp, "utf8") === hash) {
    console.log(`${label}  ${kib(readFileSync(out).length)}  up to date`);
    return;
  }
  const started = performance.now();
  // Loaded only when something needs building: the compiler (binaryen) takes ~1 s to load.
  const { default: asc } = await import("assemblyscript/asc");
  let binary = null;
  const { error, stderr } = await asc.main(["assembly/index.ts", ...COMMON, ...flags, "--outFile", "kernels.wasm"], {
    // Capture the binary instead of letting asc write it, so the file is replaced atomically
    // (a test run reading build/ never sees half a module).
    writeFile(name, contents) {
      if (name.endsWith(".wasm")) binary = contents;
    },
    stdout: { write() {} },
  });
  if (error || !binary) {
    process.stderr.write(stderr.toString());
    throw new Error(`asc failed for ${label}: ${error?.message ?? "no binary emitted"}`);
  }
  const tmp = `${out}.${process.pid}.tmp`;
  writeFileSync(tmp, binary);
  renameSync(tmp, out);
  writeFileSync(stamp, hash);
  const ms = Math.round(performance.now() - started);
  console.log(`${label}  ${kib(binary.length)}  built in ${ms} ms`);
}

function kib(bytes) {
  return `${(bytes / 1024).toFixed(1)} KiB`;
}

process.chdir(root);
mkdirSync(buildDir, { recursive: true });
for (const b of BUILDS) await build(b);
