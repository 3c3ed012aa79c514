/**
 * HeadHostBatcher (src/head/head-host-batcher.ts): head calls on one shard that meet run as one
 * pass and each gets, bit for bit, what it gets alone — logits slices and greedy answers, f32 and
 * bf16 rows, a ragged shard (1003 rows, granite-like) and an odd dModel; a call with no recent
 * company runs at once, calls delivered right after a long pass meet; a full queue refuses with
 * QueueFullError.
 */
import { describe, expect, it } from "vitest";
import { loadKernels } from "../../../src/kernels/node";
import { HeadStore } from "../../../src/head/head-store";
import { HEAD_COMPANY_MS, headAnswer, HeadHostBatcher, type HeadCall } from "../../../src/head/head-host-batcher";
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

  it("merges the calls delivered right after a pass, however long the pass took", async () => {
    // A granite-sized shard's pass takes longer than HEAD_COMPANY_MS: the calls that waited behind
    // it are delivered one after another with the clock far past the previous arrival.
    const s = await store("F32");
    let clock = 0;
    const b = new HeadHostBatcher("test", () => clock);
    const [a, x, y, z] = calls();
    await b.run(s, a); // alone: its pass runs at once
    expect(b.stats()).toMatchObject({ passes: 1, mergedPasses: 0 });
    clock += 10 * HEAD_COMPANY_MS;
    // Delivered before any timer turn since that pass: they waited behind it, and meet.
    const first = b.run(s, x);
    clock += 10 * HEAD_COMPANY_MS;
    const second = b.run(s, y);
    expect((await Promise.all([first, second])).map(canon)).toEqual([x, y].map((c) => canon(headAnswer(s, c))));
    expect(b.stats()).toMatchObject({ passes: 2, calls: 3, mergedPasses: 1, mergedCalls: 2 });
    // Past a timer turn and HEAD_COMPANY_MS with no call: alone again, at once.
    await new Promise((r) => setTimeout(r, 5));
    clock += 10 * HEAD_COMPANY_MS;
    expect(canon(await b.run(s, z))).toEqual(canon(headAnswer(s, z)));
    expect(b.stats()).toMatchObject({ passes: 3, mergedPasses: 1 });
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
