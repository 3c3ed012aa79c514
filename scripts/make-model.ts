/**
 * `npm run make-model -- --config <name|path> --out DIR [--layers N] [--dtype int8|bf16] [--seed S]
 * [--set key=value …] [--tokenizer auto|mistral|FAMILY] [--force]`: writes a random-weight
 * checkpoint of a published config's exact shape (scripts/lib/make-model.ts) with a progress line.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { formatBytes } from "./lib/demo-model.ts";
import { makeModel, resolveConfig, type MakeModelTokenizer } from "./lib/make-model.ts";
import { TOKENIZER_FAMILIES } from "./lib/tokenizer-files.ts";

const USAGE =
  "usage: tsx scripts/make-model.ts --config NAME|PATH --out DIR\n" +
  "         [--layers N] [--dtype int8|bf16] [--seed S] [--set key=value …] [--force]\n" +
  `         [--tokenizer auto|mistral|${TOKENIZER_FAMILIES.join("|")}]  (auto: the family's real tokenizer ` +
  "when one ships, e.g. qwen3 for qwen3_moe; else Mistral's)";

function main(): void {
  const { values } = parseArgs({
    options: {
      config: { type: "string" },
      out: { type: "string" },
      layers: { type: "string" },
      dtype: { type: "string", default: "int8" },
      seed: { type: "string", default: "1" },
      set: { type: "string", multiple: true, default: [] },
      tokenizer: { type: "string", default: "auto" },
      force: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help || !values.config || !values.out) {
    console.log(USAGE);
    if (!values.help) process.exitCode = 1;
    return;
  }
  const posInt = (flag: string, v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1)
      throw new Error(`--${flag} must be a positive integer, got ${JSON.stringify(v)}`);
    return n;
  };
  if (values.dtype !== "int8" && values.dtype !== "bf16")
    throw new Error(`--dtype must be int8 or bf16, got ${JSON.stringify(values.dtype)}`);
  const set: Record<string, number> = {};
  for (const kv of values.set) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(-?[0-9.e+-]+)$/.exec(kv);
    if (!m || !Number.isFinite(Number(m[2]))) throw new Error(`--set must be key=number, got ${JSON.stringify(kv)}`);
    set[m[1]] = Number(m[2]);
  }
  const tokenizers: string[] = ["auto", "mistral", ...TOKENIZER_FAMILIES];
  if (!tokenizers.includes(values.tokenizer))
    throw new Error(`--tokenizer must be one of ${tokenizers.join(", ")}, got ${JSON.stringify(values.tokenizer)}`);
  const seed = Number(values.seed);
  if (!Number.isInteger(seed)) throw new Error(`--seed must be an integer, got ${JSON.stringify(values.seed)}`);
  const tty = process.stderr.isTTY;
  let last = 0;
  const s = makeModel(resolveConfig(values.config), values.out, {
    layers: values.layers === undefined ? undefined : posInt("layers", values.layers),
    dtype: values.dtype,
    seed,
    set,
    tokenizer: values.tokenizer as MakeModelTokenizer,
    force: values.force,
    log: (l) => console.log(l),
    progress: (done, total) => {
      const now = performance.now();
      if (now - last < (tty ? 250 : 5000) && done < total) return;
      last = now;
      const line = `[make-model] ${formatBytes(done)} / ${formatBytes(total)} (${((100 * done) / total).toFixed(0)}%)`;
      if (tty) process.stderr.write(`\r${line}${done === total ? "\n" : ""}`);
      else console.error(line);
    },
  });
  const sp = s.spec;
  const params = s.params >= 1e9 ? `${(s.params / 1e9).toFixed(3)} B` : `${(s.params / 1e6).toFixed(2)} M`;
  console.log(
    `${sp.modelType}: ${sp.nLayers} layers, ${sp.nExperts} experts top-${sp.topK}, ` +
      `hidden ${sp.dModel}, vocab ${sp.vocabSize}; ${params} parameters (${values.dtype})`,
  );
  console.log(
    `${s.skipped ? "kept" : "wrote"} ${values.out}/: ${s.files.length} files, ` +
      `${formatBytes(s.totalBytes)} (${s.totalBytes} B) in ${(s.ms / 1000).toFixed(1)} s`,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  try {
    main();
  } catch (e) {
    console.error(`make-model: ${(e as Error).message}`);
    process.exitCode = 1;
  }
}
