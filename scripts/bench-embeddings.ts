/**
 * @module bench-embeddings — what an embedding row costs each way, for a granite-3.1-1b-a400m-shaped
 * table (49155 × 1024, bf16): held whole in memory, read on demand (ranged reads + LRU cache), or
 * served by the HeadHosts that hold the tied table for the output head.
 *
 *   npm run bench:embeddings [-- --budget-ms N]
 *
 * In Node, on local disk: the table in a Float32Array vs CheckpointEmbeddings on the files (the
 * decode and cache costs the Worker pays too). Not measured here: production R2's first-byte
 * latency (a local R2 is a disk), and RPC costs in workerd — driving workerd from Node goes through
 * wrangler's proxy, which adds milliseconds per call and serializes typed arrays slowly, so its
 * numbers would be the proxy's. Workers → DO RPC costs are in ../shared/STACK.md's measured table.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { dirFileStore } from "./lib/dir-store.ts";
import { makeModel, resolveConfig } from "./lib/make-model.ts";
import { measureAsync, type Timing } from "./lib/bench-measure.ts";
import { openModel, vocabTensorNames } from "../src/model/architectures.ts";
import { CheckpointEmbeddings, TableEmbeddings } from "../src/model/embeddings.ts";
import { createRng } from "../src/serving/sampling.ts";

const USAGE = `usage: npm run bench:embeddings [-- --budget-ms N]

What an embedding row costs for a granite-3.1-1b-a400m-shaped table (49155 × 1024, bf16): held
whole in memory vs read on demand (ranged reads + LRU cache); N ms of timing per row (default 400).`;

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  console.log(USAGE);
  process.exit(0);
}

const { values } = parseArgs({ options: { "budget-ms": { type: "string", default: "400" } } });
const budgetMs = Number(values["budget-ms"]);
const rng = createRng(11);
const randomId = (vocab: number) => Math.floor(rng() * vocab);
const fmt = (t: Timing) => `${t.ms.toFixed(4)} ms (best ${t.msMin.toFixed(4)}, ${t.calls} calls)`;

const tmp = mkdtempSync(join(tmpdir(), "edge-moe-bench-emb-"));
try {
  // One layer is enough: only the table matters, at its real shape (49155 × 1024 bf16).
  const dir = join(tmp, "granite");
  makeModel(resolveConfig("granite-3.1-1b-a400m"), dir, { layers: 1 });
  const { spec, ckpt } = await openModel(dirFileStore(dir));
  const V = spec.vocabSize;
  console.log(
    `table: ${V} × ${spec.dModel} ${ckpt.info(vocabTensorNames(spec).embed).dtype}; one decode step needs 1 row\n`,
  );

  const t0 = performance.now();
  const table = new TableEmbeddings(await ckpt.readF32(vocabTensorNames(spec).embed), V, spec.dModel);
  console.log(
    `held whole (f32 in JS): ${(table.table.byteLength / 2 ** 20).toFixed(0)} MiB, ` +
      `loaded in ${(performance.now() - t0).toFixed(0)} ms`,
  );
  console.log(
    `  row lookup:                        ${fmt(await measureAsync(() => table.rows([randomId(V)]), { budgetMs }))}`,
  );
  const cold = CheckpointEmbeddings.open(ckpt, spec, { cacheBytes: 0 });
  console.log(
    `on demand, local disk (no cache):    ${fmt(await measureAsync(() => cold.rows([randomId(V)]), { budgetMs }))}`,
  );
  const warm = CheckpointEmbeddings.open(ckpt, spec, { cacheBytes: 4 << 20 });
  await warm.rows([7]);
  console.log(`on demand, cache hit:                ${fmt(await measureAsync(() => warm.rows([7]), { budgetMs }))}`);
  const prompt = Array.from({ length: 512 }, () => randomId(V));
  const p = CheckpointEmbeddings.open(ckpt, spec, { cacheBytes: 4 << 20 });
  const tp = performance.now();
  await p.rows(prompt);
  const ps = p.stats();
  console.log(
    `512-token prompt, cold: ${(performance.now() - tp).toFixed(1)} ms, ${ps.reads} ranged reads, ` +
      `${(ps.bytesRead / 1024).toFixed(0)} KiB read, ${(ps.cachedBytes / 1024).toFixed(0)} KiB cached`,
  );
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
