/**
 * Prefix sharing in the batched decode steps (src/serving/prefix-share.ts, StepBatcher `share`): a
 * prompt that shares its first tokens with a live generation copies their K/V instead of running
 * them, and gets exactly the tokens it gets alone; one whose shared part an earlier prompt is still
 * reading waits for it rather than computing it twice.
 */
import { describe, expect, it } from "vitest";
import { buildTensors, checkpointFiles } from "../../support/family-checkpoints";
import { MIXTRAL, type Config } from "../../support/family-configs";
import { nodeModel, type NodeModel } from "../../support/forward-helpers";
import type { OwnedExpertRunner } from "../../../src/serving/forward";
import { kvLayout } from "../../../src/serving/attention";
import { commonPrefix, kvCopier, RetainedPrefixes, type KvPositions } from "../../../src/serving/prefix-share";
import { STEP_PREFILL_TOKENS, StepBatcher } from "../../../src/serving/step-batcher";
import { createRng, sampleToken } from "../../../src/serving/sampling";

const MIXTRAL8: Config = { ...MIXTRAL, num_local_experts: 8 };
const MAX_LEN = 512;
const GREEDY = { temperature: 0, topP: 1 };

/** A prompt of n token ids (deterministic, varied). */
const ids = (n: number, seed: number) => Array.from({ length: n }, (_, i) => 1 + ((i * 37 + seed * 101) % 250));

async function load(): Promise<NodeModel> {
  return nodeModel(checkpointFiles(MIXTRAL8, buildTensors(MIXTRAL8)));
}

function owned(m: NodeModel): OwnedExpertRunner {
  return async (layer, routing, h) => ({ out: await m.experts(layer, routing, h), lost: new Map() });
}

/** Greedy tokens of one session alone. */
async function alone(m: NodeModel, prompt: number[], steps: number): Promise<number[]> {
  const s = m.model.startSession(MAX_LEN);
  const out: number[] = [];
  let l = await m.model.forward(s, prompt, m.experts, () => 0);
  for (let i = 0; i < steps; i++) {
    const id = sampleToken(l, GREEDY, () => 0);
    out.push(id);
    if (i + 1 < steps) l = await m.model.forward(s, [id], m.experts, () => 0);
  }
  m.model.endSession(s);
  return out;
}

function batcher(m: NodeModel, share: boolean): StepBatcher {
  const copy = share ? kvCopier(m.model.kernels, kvLayout(m.model.spec.attention)) : null;
  return new StepBatcher((segs) => m.model.step(segs, owned(m)), undefined, undefined, { share: copy });
}

/**
 * A fresh session whose KV cache holds NaN: memory freed by an earlier session of the same prompt
 * would otherwise still hold the right K/V, and a position never copied would go unnoticed.
 */
function poisonedSession(m: NodeModel) {
  const s = m.model.startSession(MAX_LEN);
  const { nKvHeads, kHeadDim, vHeadDim } = kvLayout(m.model.spec.attention);
  for (const p of s.k) m.model.kernels.f32(p, MAX_LEN * nKvHeads * kHeadDim).fill(Number.NaN);
  for (const p of s.v) m.model.kernels.f32(p, MAX_LEN * nKvHeads * vHeadDim).fill(Number.NaN);
  return s;
}

/** One generation through the batcher; `onToken` sees each token as it comes. */
async function generate(
  m: NodeModel,
  b: StepBatcher,
  prompt: number[],
  steps: number,
  onToken?: (i: number) => void,
): Promise<number[]> {
  const session = poisonedSession(m);
  const spec = {
    session,
    promptIds: prompt,
    maxTokens: steps,
    sampling: GREEDY,
    rng: createRng(1),
    eos: new Set<number>(),
  };
  const out: number[] = [];
  try {
    for await (const id of b.tokens(spec)) {
      out.push(id);
      onToken?.(out.length);
    }
  } finally {
    m.model.endSession(session);
  }
  return out;
}

describe("prefix sharing in the step batcher", () => {
  it("gives prompts sharing a prefix (or identical) the tokens each gets alone, running fewer rows", async () => {
    const m = await load();
    const steps = 5;
    const base = ids(60, 1);
    const prompts = [base, base, [...base, 9, 14, 3], [...base.slice(0, 40), ...ids(12, 7)], ids(30, 3), base];
    const want = await Promise.all(prompts.map((p) => alone(m, p, steps)));
    const on = batcher(m, true);
    expect(await Promise.all(prompts.map((p) => generate(m, on, p, steps)))).toEqual(want);
    const off = batcher(m, false);
    expect(await Promise.all(prompts.map((p) => generate(m, off, p, steps)))).toEqual(want);
    expect(off.sharedTokens).toBe(0);
    // The first prompt is read alone (the others join after its step began); every later one copies
    // what it shares with it: 59 of 60 for each copy of base (its last token runs), all 60 for base + 3,
    // 40 for the fourth prompt, nothing for the fifth.
    expect(on.sharedTokens).toBe(59 + 60 + 40 + 59);
    expect(off.rows - on.rows).toBe(on.sharedTokens);
  });

  it("copies from a generation that is already decoding, whose prompt and tokens the new prompt repeats", async () => {
    const m = await load();
    const base = ids(50, 2);
    const first = await alone(m, base, 4);
    const follow = [...base, ...first.slice(0, 2), first[2] === 5 ? 7 : 5, 6];
    const want = await alone(m, follow, 4);
    const b = batcher(m, true);
    let started: Promise<number[]> | null = null;
    // The follow-up joins once the first has produced 3 tokens: its KV cache then holds the prompt and
    // its first 2 tokens, all of which the follow-up repeats.
    const a = generate(m, b, base, 6, (n) => {
      if (n === 3) started = generate(m, b, follow, 4);
    });
    expect(await a).toEqual(await alone(m, base, 6));
    expect(await (started as unknown as Promise<number[]>)).toEqual(want);
    expect(b.sharedTokens).toBe(52);
  });

  it("makes a prompt wait for an earlier one still reading what they share instead of computing it twice", async () => {
    const m = await load();
    const long = ids(STEP_PREFILL_TOKENS + 44, 4);
    const want = await alone(m, long, 3);
    const b = batcher(m, true);
    // The second joins after the first's first chunk: it copies those positions, then waits for
    // the rest instead of reading it beside the first, and runs only its last token.
    const got = await Promise.all([generate(m, b, long, 3), generate(m, b, long, 3)]);
    expect(got).toEqual([want, want]);
    expect(b.sharedTokens).toBe(long.length - 1);
    expect(b.rows).toBe(long.length + 1 + 2 * 2);
  });
  it("fails only the member whose copy cannot be made; the others go on", async () => {
    const m = await load();
    const base = ids(40, 6);
    const want = await alone(m, base, 4);
    const failing = () => {
      throw new RangeError("no room for the copy");
    };
    const b = new StepBatcher((segs) => m.model.step(segs, owned(m)), undefined, undefined, { share: failing });
    const [first, second, other] = await Promise.allSettled([
      generate(m, b, base, 4),
      generate(m, b, base, 4),
      generate(m, b, ids(20, 8), 4),
    ]);
    expect(first).toEqual({ status: "fulfilled", value: want });
    expect(second.status === "rejected" && String(second.reason)).toMatch(/no room for the copy/);
    expect(other).toEqual({ status: "fulfilled", value: await alone(m, ids(20, 8), 4) });
    expect(b.sharedTokens).toBe(0);
  });
});

describe("finished generations kept as donors", () => {
  it("serves a later prompt that repeats an ended generation from its kept positions", async () => {
    const m = await load();
    const b = batcher(m, true);
    const copy = kvCopier(m.model.kernels, kvLayout(m.model.spec.attention));
    const base = ids(45, 9);
    const first = await alone(m, base, 4);
    // The runtime's part (ModelRuntime.#retain): when the generation's session is freed, its
    // complete positions go into a session of their size, kept in the batcher's retained list.
    const session = poisonedSession(m);
    const spec = {
      session,
      promptIds: base,
      maxTokens: 4,
      sampling: GREEDY,
      rng: createRng(1),
      eos: new Set<number>(),
    };
    const got: number[] = [];
    for await (const id of b.tokens(spec)) got.push(id);
    expect(got).toEqual(first);
    const history = b.endedHistory(session);
    expect(history).toEqual([...base, ...first.slice(0, 3)]);
    expect(b.endedHistory(session)).toBeNull();
    const keep = m.model.startSession(history?.length ?? 0);
    copy(session, keep, 0, session.length);
    keep.length = session.length;
    m.model.endSession(session);
    let released = 0;
    b.retained.add({ history: history ?? [], session: keep, bytes: 1, release: () => released++ });

    const follow = [...base, ...first.slice(0, 3), 11, 12];
    expect(await generate(m, b, follow, 4)).toEqual(await alone(m, follow, 4));
    expect(b.sharedTokens).toBe(base.length + 3);
    expect(b.retained.evictOldest()).toBe(true);
    expect(released).toBe(1);
    expect(b.retained.evictOldest()).toBe(false);
    m.model.endSession(keep);
  });

  it("keeps at most its limit, releases least recently used first, and picks the longest holder", () => {
    const released: number[] = [];
    const kept = new RetainedPrefixes(2);
    const entry = (n: number, history: number[]) => ({
      history,
      session: { length: history.length, maxLen: history.length, k: [], v: [] } satisfies KvPositions,
      bytes: 10 * n,
      release: () => released.push(n),
    });
    kept.add(entry(1, [1, 2, 9]));
    kept.add(entry(2, [1, 2, 3, 4]));
    expect(kept.bytes).toBe(30);
    expect(kept.best([1, 2, 3, 4, 5], 4, 0)?.entry.history).toEqual([1, 2, 3, 4]); // now the most recent
    expect(kept.best([1, 2, 9, 4, 5], 4, 0)?.have).toBe(3); // entry 1, now the most recent
    expect(kept.best([1, 2, 3, 4, 5], 4, 4)).toBeNull(); // nothing holds more than 4
    kept.add(entry(3, [7]));
    expect(released).toEqual([2]);
    expect(kept.size).toBe(2);
    expect(kept.evictOldest()).toBe(true);
    expect(released).toEqual([2, 1]);
    expect(kept.bytes).toBe(30);
  });

  it("releases donors a new one holds whole (a chat's earlier turn) and knows what it covers", () => {
    const released: number[] = [];
    const kept = new RetainedPrefixes();
    const entry = (n: number, history: number[]) => ({
      history,
      session: { length: history.length, maxLen: history.length, k: [], v: [] } satisfies KvPositions,
      bytes: n,
      release: () => released.push(n),
    });
    kept.add(entry(1, [5, 6, 7]));
    kept.add(entry(2, [5, 8]));
    kept.add(entry(3, [5, 6, 7, 1, 2])); // the next turn of 1
    expect(released).toEqual([1]);
    expect(kept.size).toBe(2);
    expect(kept.covers([5, 6, 7, 1])).toBe(true);
    expect(kept.covers([5, 6, 7, 1, 2, 3])).toBe(false);
    expect(kept.covers([5, 9])).toBe(false);
  });

  it("releases every donor through its own release on a reset, and finds nothing afterwards", () => {
    const released: number[] = [];
    const kept = new RetainedPrefixes();
    for (const [n, history] of [
      [1, [1, 2, 3]],
      [2, [4, 5, 6]],
    ] as const)
      kept.add({
        history,
        session: { length: history.length, maxLen: history.length, k: [], v: [] },
        bytes: 10 * n,
        release: () => released.push(n),
      });
    expect(kept.releaseAll()).toBe(2);
    expect(released).toEqual([1, 2]);
    expect(kept.size).toBe(0);
    expect(kept.bytes).toBe(0);
    expect(kept.best([1, 2, 3, 4], 3, 0)).toBeNull();
    expect(kept.releaseAll()).toBe(0);
    expect(released).toEqual([1, 2]);
  });
});

describe("prefix-share helpers", () => {
  it("commonPrefix stops at the first difference, the shorter list or the limit", () => {
    expect(commonPrefix([1, 2, 3, 4], [1, 2, 9], 10)).toBe(2);
    expect(commonPrefix([1, 2], [1, 2, 3], 10)).toBe(2);
    expect(commonPrefix([1, 2, 3], [1, 2, 3], 2)).toBe(2);
    expect(commonPrefix([], [1], 5)).toBe(0);
  });

  it("kvCopier copies whole positions of every layer and refuses positions the donor lacks", async () => {
    const m = await load();
    const copy = kvCopier(m.model.kernels, kvLayout(m.model.spec.attention));
    const a = m.model.startSession(16);
    const b = m.model.startSession(16);
    await m.model.forward(a, ids(6, 5), m.experts, () => 0);
    const { nKvHeads, kHeadDim } = kvLayout(m.model.spec.attention);
    const per = nKvHeads * kHeadDim;
    for (const p of [...b.k, ...b.v]) m.model.kernels.f32(p, 16 * per).fill(7.5);
    copy(a, b, 0, 4);
    for (const [from, to] of [
      [a.k, b.k],
      [a.v, b.v],
    ]) {
      for (let l = 0; l < from.length; l++) {
        const x = m.model.kernels.f32(from[l], 6 * per);
        const y = m.model.kernels.f32(to[l], 6 * per);
        expect(Array.from(y.subarray(0, 4 * per))).toEqual(Array.from(x.subarray(0, 4 * per)));
        expect(y.subarray(4 * per, 6 * per).every((v) => v === 7.5)).toBe(true);
      }
    }
    expect(() => copy(a, b, 0, 7)).toThrow(RangeError);
    m.model.endSession(a);
    m.model.endSession(b);
  });
});
