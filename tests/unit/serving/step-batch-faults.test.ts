/**
 * Step batching under faults (src/serving/step-batcher.ts): a step whose leader's request died
 * never answers — the others must go on, later generations must still run, and the stuck step's
 * sessions must stay unfreed until it returns; a leader hands the loop on after a bounded share of
 * steps, and leads a bounded number of steps in all with no work of its own in them; a step never
 * needs more Wasm scratch than the Worker has (ModelForward.stepScratchBytes); and the loop lets the
 * isolate's other work run between steps.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { describe, expect, it } from "vitest";
import { FAKE_VOCAB as VOCAB, fakeStep } from "../../support/fake-step";
import { buildTensors, checkpointFiles } from "../../support/family-checkpoints";
import type { Config } from "../../support/family-configs";
import { localExperts } from "../../support/forward-helpers";
import { loadKernels } from "../../../src/kernels/node";
import { loadDenseWeights, openModel } from "../../../src/model/architectures";
import { memoryFileStore } from "../../../src/model/safetensors";
import { ModelForward, type Session, type StepSegment } from "../../../src/serving/forward";
import { MAX_STEP_ROWS, StepBatcher, type StepLimits, type StepStreamSpec } from "../../../src/serving/step-batcher";
import { WORKER_SCRATCH_BYTES } from "../../../src/platform/budgets";

function session(): Session {
  return { length: 0, maxLen: 64 } as unknown as Session;
}

function spec(s: Session, prompt: number[], maxTokens: number): StepStreamSpec {
  return {
    session: s,
    promptIds: prompt,
    maxTokens,
    sampling: { temperature: 0, topP: 1 },
    rng: () => 0,
    eos: new Set(),
  };
}

async function collect(b: StepBatcher, sp: StepStreamSpec): Promise<number[]> {
  const ids: number[] = [];
  for await (const id of b.tokens(sp)) ids.push(id);
  return ids;
}

/** The first `hang` calls never answer until released (a leader whose request was stopped). */
function hangingRun(hang: number) {
  let calls = 0;
  let release: () => void = () => {};
  const stuck = new Promise<void>((r) => (release = r));
  const run = async (segs: StepSegment[]) => {
    if (calls++ < hang) {
      await stuck;
      return segs.map(() => ({ ok: true as const, logits: new Float32Array(VOCAB).fill(0) }));
    }
    return fakeStep(segs);
  };
  return { run, release: () => release() };
}

/**
 * A batcher whose steps note which request ran each step that lacks `s`'s row: the request is the
 * async context the loop was started from (its consumer's `als.run` name). Long turns by default,
 * so only the limits under test hand the loop on (a slow machine stays within them).
 */
function leaderTrace(als: AsyncLocalStorage<string>, s: Session, limits: Partial<StepLimits>) {
  const ledWithout: string[] = [];
  const b = new StepBatcher(
    async (segs) => {
      if (!segs.some((g) => g.session === s)) ledWithout.push(als.getStore() ?? "?");
      return fakeStep(segs);
    },
    undefined,
    undefined,
    { leadSteps: 10_000, leadMs: 600_000, ...limits },
  );
  return { b, by: (name: string) => ledWithout.filter((x) => x === name).length };
}

describe("StepBatcher faults", () => {
  it("a step that never answers fails only its streams; the others and later generations go on", async () => {
    const { run, release } = hangingRun(1);
    const b = new StepBatcher(run, undefined, undefined, { waitMs: 40 });
    const sa = session();
    const a = collect(b, spec(sa, [1], 3));
    const other = collect(b, spec(session(), [4], 3));
    await expect(a).rejects.toThrow(/ran past 40 ms/);
    expect(await other).toEqual([5, 6, 7]);
    expect(await collect(b, spec(session(), [2], 2))).toEqual([3, 4]);
    // The stuck step may still write a's KV cache: not free until it returns; its answer is dropped.
    const settled = b.settled(sa);
    expect(settled).not.toBeNull();
    release();
    await settled;
    expect(b.settled(sa)).toBeNull();
    expect(b.members).toBe(0);
  });

  it("a consumer leaving during a stuck step is removed, and its session waits for the step", async () => {
    const { run, release } = hangingRun(0);
    let calls = 0;
    let unstick: () => void = () => {};
    const stuck = new Promise<void>((r) => (unstick = r));
    const b = new StepBatcher(
      async (segs) => (calls++ === 0 ? run(segs) : stuck.then(() => fakeStep(segs))),
      undefined,
      undefined,
      { waitMs: 40 },
    );
    const s = session();
    const gen = b.tokens(spec(s, [1], 5));
    expect((await gen.next()).value).toBe(2);
    // The next step (lookahead) is in flight and never answers: leaving must not throw or leak.
    await gen.return(undefined);
    expect(b.members).toBe(0);
    const settled = b.settled(s);
    expect(settled).not.toBeNull();
    unstick();
    release();
    await settled;
    expect(b.settled(s)).toBeNull();
  });

  it("a request with no work of its own leads at most leadForOthers steps for the others", async () => {
    const als = new AsyncLocalStorage<string>();
    const sa = session();
    for (const cap of [Number.POSITIVE_INFINITY, 3]) {
      sa.length = 0;
      const { b, by } = leaderTrace(als, sa, { leadForOthers: cap });
      // A leads its first steps, then its consumer stops taking tokens (LOOKAHEAD untaken): the
      // loop its request started keeps running B's steps, which are A's invocation's subrequests.
      const a = als.run("A", () => b.tokens(spec(sa, [0], 30)));
      expect((await als.run("A", () => a.next())).value).toBe(1);
      const other = await als.run("B", () => collect(b, spec(session(), [3], 40)));
      expect(other).toEqual(Array.from({ length: 40 }, (_, i) => (4 + i) % VOCAB));
      const rest: number[] = [];
      for await (const id of a) rest.push(id);
      expect([1, ...rest]).toEqual(Array.from({ length: 30 }, (_, i) => (1 + i) % VOCAB));
      if (cap === 3) {
        expect(by("A")).toBeLessThanOrEqual(3);
        expect(by("B")).toBeGreaterThan(30);
      } else expect(by("A")).toBeGreaterThan(30); // unbounded: A's request ran nearly all of B's steps
    }
  });

  it("a leader with work is never left out of a step, so the bound counts only steps it has no row in", async () => {
    // Two rows a step for six generations: the step's limit leaves most of them out each step, but
    // never the leader while it has work — else each step it was cut from would be one more step
    // for the others in its invocation, past any bound.
    const als = new AsyncLocalStorage<string>();
    const sa = session();
    const { b, by } = leaderTrace(als, sa, { maxRows: 2, leadForOthers: 3 });
    const a = als.run("A", () => collect(b, spec(sa, [0], 20)));
    const others = [1, 2, 3, 4, 5].map((p) => als.run(`B${p}`, () => collect(b, spec(session(), [p], 20))));
    expect(await a).toEqual(Array.from({ length: 20 }, (_, i) => (1 + i) % VOCAB));
    for (const [i, o] of (await Promise.all(others)).entries()) {
      expect(o).toEqual(Array.from({ length: 20 }, (_, k) => (2 + i + k) % VOCAB));
    }
    // Only once A had no token left to produce (done, its consumer draining) may it lead without its row.
    expect(by("A")).toBeLessThanOrEqual(3);
  });

  it("a leader still reading its prompt gets the row when a step holds one", async () => {
    // One row a step, one generation decoding: the first decode row used to skip the step's
    // limits, so a leader reading its prompt got no row in the steps it led — for others, unbounded.
    const als = new AsyncLocalStorage<string>();
    const sl = session();
    // One step a turn: the lead alternates between the two requests.
    const { b, by } = leaderTrace(als, sl, { maxRows: 1, leadForOthers: 2, leadSteps: 1 });
    // D reads its prompt and decodes; then L arrives and leads the next step.
    const dg = b.tokens(spec(session(), [3], 60));
    const first = await als.run("D", () => dg.next());
    const l = als.run("L", () => collect(b, spec(sl, [0, 1, 2, 3], 5)));
    const d = als.run("D", async () => {
      const ids = [first.value as number];
      for await (const id of dg) ids.push(id);
      return ids;
    });
    expect(await l).toEqual([4, 5, 6, 7, 0]);
    expect(await d).toEqual(Array.from({ length: 60 }, (_, i) => (4 + i) % VOCAB));
    expect(by("L")).toBeLessThanOrEqual(2);
  });

  it("a leader hands the loop on after its share of steps", async () => {
    let loops = 0;
    const b = new StepBatcher(
      async (segs) => fakeStep(segs),
      () => loops++,
      undefined,
      { leadSteps: 2 },
    );
    const got = await Promise.all([collect(b, spec(session(), [0], 6)), collect(b, spec(session(), [3], 6))]);
    expect(got).toEqual([
      [1, 2, 3, 4, 5, 6],
      [4, 5, 6, 7, 0, 1],
    ]);
    expect(loops).toBeGreaterThanOrEqual(3);
  });
});

/** dModel 1024: MAX_STEP_ROWS rows of a step need more scratch than WORKER_SCRATCH_BYTES. */
const WIDE: Config = {
  model_type: "mixtral",
  vocab_size: 96,
  hidden_size: 1024,
  intermediate_size: 16,
  num_hidden_layers: 1,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_local_experts: 4,
  num_experts_per_tok: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  tie_word_embeddings: true,
};

describe("a batched step's scratch", () => {
  it("fits the Worker's scratch when capped by stepScratchBytes", async () => {
    const { spec: ms, ckpt } = await openModel(memoryFileStore(checkpointFiles(WIDE, buildTensors(WIDE))));
    const k = loadKernels("simd", { maxBytes: 64 * 1024 * 1024 });
    const model = ModelForward.create(k, ms, await loadDenseWeights(ckpt, ms));
    // Experts in their own memory: only the step's scratch counts against the Worker's.
    const experts = localExperts(loadKernels("simd", { maxBytes: 64 * 1024 * 1024 }), ckpt, ms);
    const maxLen = 600;
    const s = model.startSession(maxLen);
    // Leave exactly WORKER_SCRATCH_BYTES free above what the model and its session hold.
    const probe = k.alloc(16);
    k.free(probe);
    k.alloc(64 * 1024 * 1024 - probe - WORKER_SCRATCH_BYTES);
    const fits = (rows: number, outRows: number) =>
      model.stepScratchBytes(rows, outRows, maxLen) <= WORKER_SCRATCH_BYTES;
    expect(fits(MAX_STEP_ROWS, 1)).toBe(false);
    const prompt = Array.from({ length: MAX_STEP_ROWS }, (_, i) => (i * 7) % 96);
    const owned = async (layer: number, routing: Parameters<typeof experts>[1], h: Float32Array) => ({
      out: await experts(layer, routing, h),
      lost: new Map<number, unknown>(),
    });
    // Uncapped, a step of MAX_STEP_ROWS rows does not fit.
    await expect(model.step([{ session: s, tokens: prompt, nOut: 1, rng: () => 0 }], owned)).rejects.toThrow(
      /memory budget/,
    );
    s.length = 0;
    const b = new StepBatcher((segs) => model.step(segs, owned), undefined, undefined, { fits });
    const ids = await collect(b, {
      ...spec(s, prompt, 2),
      session: s,
    });
    expect(ids).toHaveLength(2);
    expect(b.rows).toBe(MAX_STEP_ROWS + 1);
  }, 60_000);

  it("fits with several sessions over several layers (attention scratch is per layer, not per step)", async () => {
    const cfg: Config = { ...WIDE, num_hidden_layers: 3 };
    const { spec: ms, ckpt } = await openModel(memoryFileStore(checkpointFiles(cfg, buildTensors(cfg))));
    const k = loadKernels("simd", { maxBytes: 100 * 1024 * 1024 });
    const model = ModelForward.create(k, ms, await loadDenseWeights(ckpt, ms));
    const experts = localExperts(loadKernels("simd", { maxBytes: 64 * 1024 * 1024 }), ckpt, ms);
    const maxLen = 300;
    const sessions = [0, 1, 2].map(() => model.startSession(maxLen));
    const probe = k.alloc(16);
    k.free(probe);
    k.alloc(100 * 1024 * 1024 - probe - WORKER_SCRATCH_BYTES);
    // The most rows the formula lets through for three sessions that each want logits.
    let rows = 3;
    while (model.stepScratchBytes(rows + 3, 3, maxLen) <= WORKER_SCRATCH_BYTES) rows += 3;
    const owned = async (layer: number, routing: Parameters<typeof experts>[1], h: Float32Array) => ({
      out: await experts(layer, routing, h),
      lost: new Map<number, unknown>(),
    });
    const segs = sessions.map((session, j) => ({
      session,
      tokens: Array.from({ length: rows / 3 }, (_, i) => (i * 5 + j) % 96),
      nOut: 1 as const,
      rng: () => 0,
    }));
    const out = await model.step(segs, owned);
    expect(out.every((r) => r.ok)).toBe(true);
  }, 60_000);
});

describe("a step's rows", () => {
  it("count a head row only for the rows that want logits, and every step fits", async () => {
    // Scratch stand-in: a row costs 1, a head row 10 more; 40 in all. Counting a head row for
    // every row would cap a step at 3 rows.
    const fits = (rows: number, outRows: number) => rows + 10 * outRows <= 40;
    const seen: { rows: number; outs: number }[] = [];
    const b = new StepBatcher(
      async (segs) => {
        const rows = segs.reduce((n, g) => n + g.tokens.length, 0);
        seen.push({ rows, outs: segs.filter((g) => g.nOut === 1).length });
        return fakeStep(segs);
      },
      undefined,
      undefined,
      { fits },
    );
    const long = Array.from({ length: 30 }, (_, i) => i % VOCAB);
    const [a, c] = await Promise.all([collect(b, spec(session(), [1], 6)), collect(b, spec(session(), long, 2))]);
    expect(a).toEqual([2, 3, 4, 5, 6, 7]);
    expect(c).toEqual([(long[29] + 1) % VOCAB, (long[29] + 2) % VOCAB]);
    for (const s of seen) expect(fits(s.rows, s.outs)).toBe(true);
    expect(Math.max(...seen.map((s) => s.rows))).toBeGreaterThan(3);
  });
});

describe("the step loop", () => {
  it("lets other work of the isolate run between steps when members share them", async () => {
    // Steps that never wait on a macrotask (local workerd's ExpertHost calls): without a yield,
    // a timer (an arriving request, a member's response write) would wait for the whole loop.
    const b = new StepBatcher(async (segs) => fakeStep(segs));
    let stepsAtTimer = -1;
    setTimeout(() => (stepsAtTimer = b.steps), 0);
    const done = Promise.all([collect(b, spec(session(), [1], 20)), collect(b, spec(session(), [2], 20))]);
    await done;
    expect(b.steps).toBeGreaterThanOrEqual(20);
    expect(stepsAtTimer).toBeGreaterThanOrEqual(0);
    expect(stepsAtTimer).toBeLessThanOrEqual(2);
  });
});

describe("a leader stopped between steps", () => {
  it("is given up after the wait limit and a member runs the loop on, no token lost", async () => {
    // The leader's request dies while it yields: its 0 ms timer never fires.
    const real = globalThis.setTimeout;
    let dropNext = true;
    const patched = (fn: () => void, ms?: number) => {
      if (ms === 0 && dropNext) {
        dropNext = false;
        return 0 as unknown as ReturnType<typeof setTimeout>;
      }
      return real(fn, ms);
    };
    globalThis.setTimeout = patched as typeof setTimeout;
    try {
      const b = new StepBatcher(async (segs) => fakeStep(segs), undefined, undefined, { waitMs: 50 });
      const [x, y] = await Promise.all([collect(b, spec(session(), [1], 5)), collect(b, spec(session(), [4], 5))]);
      expect(dropNext).toBe(false);
      expect(x).toEqual([2, 3, 4, 5, 6]);
      expect(y).toEqual([5, 6, 7, 0, 1]);
    } finally {
      globalThis.setTimeout = real;
    }
  });
});

describe("a step cut by its limits", () => {
  it("takes the decode rows it leaves out first in a later step (no stream waits for others to end)", async () => {
    // At most 2 rows a step (as if the scratch held 2), 3 streams decoding 12 tokens each.
    const firstTokenStep: number[] = [];
    let steps = 0;
    const run = async (segs: StepSegment[]) => {
      steps++;
      const out = fakeStep(segs);
      for (const g of segs) {
        const i = Number(g.tokens[0] >= 100 ? g.tokens[0] - 100 : -1);
        if (i >= 0 && firstTokenStep[i] === undefined) firstTokenStep[i] = steps;
      }
      return out;
    };
    const b = new StepBatcher(run, undefined, undefined, { fits: (rows) => rows <= 2 });
    const got = await Promise.all(
      [0, 1, 2].map((i) => collect(b, { ...spec(session(), [100 + i], 12), eos: new Set<number>() })),
    );
    for (const ids of got) expect(ids).toHaveLength(12);
    // Every stream's prompt ran within the first few steps, none after the others had finished.
    expect(Math.max(...firstTokenStep)).toBeLessThanOrEqual(3);
  });

  it("keeps prefillReserve rows of a full step for a waiting prompt", async () => {
    const late = session();
    const PROMPT = 20;
    /** Per step while the late prompt is read: the other streams' rows and its own. */
    const steps: { others: number; prompt: number }[] = [];
    const run = async (segs: StepSegment[]) => {
      const own = segs.find((g) => g.session === late);
      if (own && late.length < PROMPT)
        steps.push({ others: segs.filter((g) => g !== own).length, prompt: own.tokens.length });
      return fakeStep(segs);
    };
    const b = new StepBatcher(run, undefined, undefined, { maxRows: 8, prefillReserve: 4 });
    // Eight streams decode, each taking a row of every step; then a 20-token prompt joins.
    const decoding = Array.from({ length: 8 }, (_, i) => collect(b, spec(session(), [i], 30)));
    await new Promise((r) => setTimeout(r, 5));
    const joined = collect(
      b,
      spec(
        late,
        Array.from({ length: PROMPT }, (_, i) => i % VOCAB),
        2,
      ),
    );
    await Promise.all([...decoding, joined]);
    // Beside the decoding streams it read at least the reserved 4 tokens a step (its last chunk
    // aside), not 1 a step: 20 tokens in at most 5 steps, and the steps stayed within 8 rows.
    expect(steps.length).toBeGreaterThan(1);
    expect(steps.length).toBeLessThanOrEqual(5);
    for (const x of steps.slice(0, -1)) expect(x.prompt).toBeGreaterThanOrEqual(4);
    for (const x of steps) expect(x.others + x.prompt).toBeLessThanOrEqual(8);
    expect(steps.some((x) => x.others >= 4)).toBe(true);
  });
});
