/**
 * HeadHostBatcher (src/head/head-host-batcher.ts): head calls on one shard that meet run as one
 * pass and each gets, bit for bit, what it gets alone — logits slices and greedy answers, f32 and
 * bf16 rows, a ragged shard (1003 rows, granite-like) and an odd dModel; a call with no recent
 * company runs at once; a full queue refuses with QueueFullError.
 */
import { describe, expect, it } from "vitest";
import { loadKernels } from "../../../src/kernels/node";
import { HeadStore } from "../../../src/head/head-store";
import { headAnswer, HeadHostBatcher, type HeadCall } from "../../../src/head/head-host-batcher";
import { createRng } from "../../../src/serving/sampling";
import { QueueFullError } from "../../../src/platform/coalescer";
import { randn } from "../kernels/helpers";
import { checkpoint, D_MODEL, graniteSpec, VOCAB } from "./helpers";

async function store(dtype: "F32" | "BF16"): Promise<HeadStore> {
  const { ckpt } = await checkpoint(dtype, false);
  const spec = graniteSpec(false);
  return HeadStore.load(
    ckpt,
    spec,
    { model: "m", rowStart: 0, rowEnd: VOCAB },
    { budgetBytes: 1 << 30, label: "test", kernels: (maxBytes) => loadKernels("best", { maxBytes }) },
  );
}

const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
const canon = (a: ReturnType<typeof headAnswer>) =>
  a.mode === "logits" ? { logits: bits(a.logits) } : { max: bits(a.max), argmax: Array.from(a.argmax) };

function calls(): HeadCall[] {
  const next = createRng(3);
  return [1, 3, 1, 5, 2, 1, 17].map((n, i) => ({
    mode: i % 3 === 1 ? "logits" : "greedy",
    hidden: randn(next, n * D_MODEL, 1),
    n,
  }));
}

describe.each(["F32", "BF16"] as const)("HeadHostBatcher on %s rows", (dtype) => {
  it("gives calls that meet, merged, bit for bit what each gets alone", async () => {
    const s = await store(dtype);
    const cs = calls();
    const want = cs.map((c) => canon(headAnswer(s, c)));
    const b = new HeadHostBatcher("test");
    const before = { calls: s.calls, tokens: s.tokens };
    // The first call has no recent company (runs at once); the rest arrive together and meet.
    const got = await Promise.all(cs.map((c) => b.run(s, c)));
    expect(got.map(canon)).toEqual(want);
    // The shard's own stats count the calls it served, merged or not.
    expect({ calls: s.calls - before.calls, tokens: s.tokens - before.tokens }).toEqual({
      calls: cs.length,
      tokens: cs.reduce((t, c) => t + c.n, 0),
    });
    const st = b.stats();
    expect(st.calls).toBe(cs.length);
    expect(st.mergedPasses).toBeGreaterThan(0);
    expect(st.passes).toBeLessThan(cs.length);
  });
});

describe("HeadHostBatcher", () => {
  it("runs a call with no recent company at once, alone", async () => {
    const s = await store("F32");
    const b = new HeadHostBatcher("test");
    const [c] = calls();
    const r = await b.run(s, c);
    expect(canon(r)).toEqual(canon(headAnswer(s, c)));
    expect(b.stats()).toMatchObject({ passes: 1, calls: 1, mergedPasses: 0 });
  });

  it("refuses a call past the queue's rows with QueueFullError", async () => {
    const s = await store("F32");
    const b = new HeadHostBatcher("test");
    const big = (n: number): HeadCall => ({ mode: "greedy", hidden: new Float32Array(n * D_MODEL), n });
    const first = b.run(s, big(1));
    const queued = b.run(s, big(8 * 1045)); // fills the queue (8 × its pass rows for 1003-row shards)
    await expect(b.run(s, big(1))).rejects.toBeInstanceOf(QueueFullError);
    await Promise.all([first, queued]);
  });
});
