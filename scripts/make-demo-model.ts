/**
 * `npm run make-demo-model [-- --out DIR] [--force] [--seed N]
 *     [--vocab N --hidden N --layers N --heads N --kv-heads N --ff N --experts N --top-k N]`:
 * writes the deterministic random-weight demo model (scripts/lib/demo-model.ts) and prints a summary.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { DEMO_MODEL_SIZE, type DemoModelSize, formatBytes, makeDemoModel } from "./lib/demo-model.ts";
import { type Progress, progressBar } from "./lib/progress.ts";

const USAGE =
  `usage: tsx scripts/make-demo-model.ts [--out DIR] [--force] [--seed N]
         [--vocab N] [--hidden N] [--layers N] [--heads N] [--kv-heads N] [--ff N] [--experts N] [--top-k N]
Writes a random-weight Mixtral model ` +
  `(default ${DEMO_MODEL_SIZE.nLayers} layers × ${DEMO_MODEL_SIZE.nExperts} experts) to DIR (default demo-model/).`;

function main(): void {
  const { values } = parseArgs({
    options: {
      out: { type: "string", default: "demo-model" },
      force: { type: "boolean", default: false },
      seed: { type: "string" },
      vocab: { type: "string" },
      hidden: { type: "string" },
      layers: { type: "string" },
      heads: { type: "string" },
      "kv-heads": { type: "string" },
      ff: { type: "string" },
      experts: { type: "string" },
      "top-k": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const int = (flag: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1)
      throw new Error(`--${flag} must be a positive integer, got ${JSON.stringify(v)}`);
    return n;
  };
  const size: Partial<DemoModelSize> = {};
  const set = (k: keyof DemoModelSize, flag: string, v: string | undefined) => {
    const n = int(flag, v);
    if (n !== undefined) size[k] = n;
  };
  set("vocabSize", "vocab", values.vocab);
  set("dModel", "hidden", values.hidden);
  set("nLayers", "layers", values.layers);
  set("nHeads", "heads", values.heads);
  set("nKvHeads", "kv-heads", values["kv-heads"]);
  set("dFf", "ff", values.ff);
  set("nExperts", "experts", values.experts);
  set("topK", "top-k", values["top-k"]);
  const seed = values.seed === undefined ? undefined : Number(values.seed);
  if (seed !== undefined && !Number.isInteger(seed))
    throw new Error(`--seed must be an integer, got ${JSON.stringify(values.seed)}`);

  // A bar of tensor bytes generated, on stderr and only on a terminal (lib/progress.ts); the
  // per-shard lines would break it, so they wait until the bar is done.
  let bar: Progress | null = null;
  let drawing = false;
  const lines: string[] = [];
  const s = makeDemoModel(values.out, {
    size,
    seed,
    force: values.force,
    log: (l) => (drawing ? lines.push(l) : console.log(l)),
    progress: (done, total) => {
      if (!bar) {
        bar = progressBar("tensors", total, { format: "tensors [{bar}] {percentage}% {eta_formatted} left" });
        drawing = Boolean(process.stderr.isTTY);
      }
      bar.update(done);
      if (done === total) {
        bar.stop();
        drawing = false;
        for (const l of lines.splice(0)) console.log(l);
      }
    },
  });
  if (!s.skipped) {
    console.log(`demo model written to ${values.out}/ in ${(s.ms / 1000).toFixed(1)} s`);
  }
  console.log(`  files: ${s.files.length}, total ${formatBytes(s.totalBytes)} (${s.totalBytes} B)`);
  console.log(
    `  tensors: ${formatBytes(s.tensorBytes)}, of which experts ${formatBytes(s.expertBytes)} (${s.expertBytes} B)`,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  try {
    main();
  } catch (e) {
    console.error(`make-demo-model: ${(e as Error).message}`);
    process.exitCode = 1;
  }
}
