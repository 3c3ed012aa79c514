import { readFileSync } from "node:fs";
import { dirFileStore } from "./convert.ts";
import { openModel } from "../src/model/architectures.ts";
import { quantNames } from "../src/model/quant-names.ts";
import { referenceForward } from "../tests/unit/model/reference-forward.ts";
const dir = process.argv[2];
const { ckpt } = await openModel(dirFileStore(dir));
const cfg = JSON.parse(readFileSync(`${dir}/config.json`, "utf8"));
const cache = new Map<string, { shape: number[]; data: Float32Array }>();
let curLayer = -2;
const names: string[] = [];
async function load(name: string) {
  if (ckpt.has(name)) return { shape: ckpt.info(name).shape, data: await ckpt.readF32(name) };
  const q = quantNames(name);
  const qw = await ckpt.readF32(q.qweight); const sc = await ckpt.readF32(q.scales);
  const cols = ckpt.info(q.qweight).shape.at(-1)!;
  for (let i = 0; i < qw.length; i++) qw[i] *= sc[Math.floor(i / cols)];
  return { shape: ckpt.info(q.qweight).shape, data: qw };
}
// Preload everything the reference will ask for, layer by layer, is too much; instead load all dense + experts lazily via a sync map filled ahead per layer.
const all = [...ckpt.tensors.keys()].map((n) => n.replace(/\.qweight$/, ".weight")).filter((n) => !n.endsWith(".scales"));
const t = new Map<string, { shape: number[]; data: Float32Array }>();
for (const n of all) t.set(n, await load(n));
console.log("loaded", t.size, "tensors");
const tokens = [1, 22557, 28725, 910, 460, 368, 28804, 315, 837, 264, 1369, 2229].map((t) => t % cfg.vocab_size);
const r = referenceForward(cfg, t as never, tokens);
const rms = (a: ArrayLike<number>) => Math.sqrt(Array.from(a).reduce((s, v) => s + v * v, 0) / a.length);
for (const L of Object.keys(r.moeOut)) {
  const o = r.moeOut[Number(L)];
  console.log(`layer ${L}: moe out rms ${(o.map(rms).reduce((a, b) => a + b) / o.length).toFixed(4)}; experts of token 0: ${r.routing[Number(L)][0].join(",")}`);
}
const last = r.logits.at(-1)!;
const m = Math.max(...last); const z = last.reduce((s, v) => s + Math.exp(v - m), 0);
const mean = last.reduce((a, b) => a + b) / last.length;
console.log(`logits (last token): std ${Math.sqrt(last.reduce((s, v) => s + (v - mean) ** 2, 0) / last.length).toFixed(4)}, top-1 p ${(1 / z).toFixed(5)}, entropy ${(-last.reduce((s, v) => { const p = Math.exp(v - m) / z; return s + p * Math.log(p); }, 0)).toFixed(2)} nats (uniform ${Math.log(last.length).toFixed(2)})`);
console.log("greedy next per position:", r.logits.map((row) => row.indexOf(Math.max(...row))).join(" "));
