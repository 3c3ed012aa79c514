/**
 * Step-level continuous batching (src/serving/step-batcher.ts, ModelForward.step): sessions that
 * share decode steps — prompts in chunks beside other sessions' decode rows — get, bit for bit, the
 * logits and tokens each gets alone; a row whose experts were lost fails only its session.
 */
import { describe, expect, it } from "vitest";
import { buildTensors, checkpointFiles } from "../../support/family-checkpoints";
import { MIXTRAL, QWEN3_MOE, type Config } from "../../support/family-configs";
import { nodeModel, type NodeModel } from "../../support/forward-helpers";
import type { OwnedExpertRunner, StepSegment } from "../../../src/serving/forward";
import { StepBatcher } from "../../../src/serving/step-batcher";
import { createRng, sampleToken } from "../../../src/serving/sampling";

/** 8 experts so that a step's rows spread over more experts than a row alone touches. */
const MIXTRAL8: Config = { ...MIXTRAL, num_local_experts: 8 };

const PROMPTS = [
  [3, 17, 40, 5, 88, 12, 9],
  [61, 2],
  [7, 7, 30, 44, 91, 15, 23, 50, 1, 66, 70],
];
const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

async function load(cfg: Config): Promise<NodeModel> {
  return nodeModel(checkpointFiles(cfg, buildTensors(cfg)));
}

function owned(m: NodeModel, lose?: (layer: number) => number | null): OwnedExpertRunner {
  return async (layer, routing, h, owner) => {
    const out = await m.experts(layer, routing, h);
    const lost = new Map<number, unknown>();
    const who = lose?.(layer) ?? null;
    if (who !== null && owner) lost.set(who, new Error(`rows of ${who} lost`));
    return { out, lost };
  };
}

/** Greedy logits per step of one session alone: the prompt, then `steps` tokens one at a time. */
async function alone(m: NodeModel, prompt: number[], steps: number): Promise<{ logits: number[][]; ids: number[] }> {
  const s = m.model.startSession(64);
  const logits: number[][] = [];
  const ids: number[] = [];
  let l = await m.model.forward(s, prompt, m.experts, () => 0);
  for (let i = 0; i < steps; i++) {
    logits.push(bits(l));
    const id = sampleToken(l, { temperature: 0, topP: 1 }, () => 0);
    ids.push(id);
    l = await m.model.forward(s, [id], m.experts, () => 0);
  }
  m.model.endSession(s);
  return { logits, ids };
}

describe.each([
  ["mixtral", MIXTRAL8],
  ["qwen3 (per-head q/k norm)", QWEN3_MOE],
])("a batched step on %s", (_, cfg) => {
  it("gives every session the logits it gets alone, prompts chunked beside decode rows", async () => {
    const m = await load(cfg);
    expect(m.model.stepExact).toBe(true);
    const steps = 4;
    const want = await Promise.all(PROMPTS.map((p) => alone(m, p, steps)));
    const sessions = PROMPTS.map(() => m.model.startSession(64));
    const got: number[][][] = PROMPTS.map(() => []);
    const next: number[][] = PROMPTS.map((p) => p.slice());
    // Session 0 starts alone; 1 joins a step later; 2's prompt comes in two chunks beside them.
    const plan = [[0], [0, 1], [0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2], [1, 2], [2]];
    for (const members of plan) {
      const segs: StepSegment[] = [];
      for (const i of members) {
        if (got[i].length >= steps) continue;
        const chunk = i === 2 && next[i].length > 6 ? next[i].slice(0, 6) : next[i];
        segs.push({ session: sessions[i], tokens: chunk, nOut: chunk.length === next[i].length ? 1 : 0, rng: () => 0 });
      }
      if (segs.length === 0) continue;
      const out = await m.model.step(segs, owned(m));
      segs.forEach((g, j) => {
        const i = sessions.indexOf(g.session);
        const r = out[j];
        if (!r.ok) throw r.error;
        next[i] = next[i].slice(g.tokens.length);
        if (g.nOut === 0) return;
        got[i].push(bits(r.logits));
        next[i] = [sampleToken(r.logits, { temperature: 0, topP: 1 }, () => 0)];
      });
    }
    // Fewer steps than tokens needed for session 2: finish it alone-style through step().
    while (got[2].length < steps) {
      const out = await m.model.step([{ session: sessions[2], tokens: next[2], nOut: 1, rng: () => 0 }], owned(m));
      if (!out[0].ok) throw out[0].error;
      got[2].push(bits(out[0].logits));
      next[2] = [sampleToken(out[0].logits, { temperature: 0, topP: 1 }, () => 0)];
    }
    PROMPTS.forEach((_, i) => expect(got[i], `session ${i}`).toEqual(want[i].logits));
  });

  it("fails only the session whose expert rows were lost", async () => {
    const m = await load(cfg);
    const a = m.model.startSession(64);
    const b = m.model.startSession(64);
    const segs: StepSegment[] = [
      { session: a, tokens: PROMPTS[0], nOut: 1, rng: () => 0 },
      { session: b, tokens: PROMPTS[1], nOut: 1, rng: () => 0 },
    ];
    const out = await m.model.step(
      segs,
      owned(m, (layer) => (layer === 1 ? 1 : null)),
    );
    expect(out[0].ok).toBe(true);
    expect(out[1].ok).toBe(false);
    const want = await alone(m, PROMPTS[0], 1);
    if (out[0].ok) expect(bits(out[0].logits)).toEqual(want.logits[0]);
  });
});

describe("StepBatcher", () => {
  it("gives concurrent generations the tokens each gets alone, in fewer steps than tokens", async () => {
    const m = await load(MIXTRAL8);
    const steps = 6;
    const want = await Promise.all(PROMPTS.map((p) => alone(m, p, steps)));
    const batcher = new StepBatcher((segs) => m.model.step(segs, owned(m)));
    const eos = new Set<number>();
    const run = async (p: number[]) => {
      const session = m.model.startSession(64);
      const ids: number[] = [];
      const spec = {
        session,
        promptIds: p,
        maxTokens: steps,
        sampling: { temperature: 0, topP: 1 },
        rng: createRng(1),
        eos,
      };
      for await (const id of batcher.tokens(spec)) ids.push(id);
      m.model.endSession(session);
      return ids;
    };
    const got = await Promise.all(PROMPTS.map(run));
    expect(got).toEqual(want.map((w) => w.ids));
    expect(batcher.steps).toBeLessThan(PROMPTS.length * steps);
    expect(batcher.segments).toBe(PROMPTS.length * steps);
    expect(batcher.members).toBe(0);
  });

  it("stops one generation on its abort while the others go on", async () => {
    const m = await load(MIXTRAL8);
    const batcher = new StepBatcher((segs) => m.model.step(segs, owned(m)));
    const eos = new Set<number>();
    const ctl = new AbortController();
    const gen = (p: number[], signal?: AbortSignal) => {
      const session = m.model.startSession(64);
      const spec = {
        session,
        promptIds: p,
        maxTokens: 8,
        sampling: { temperature: 0, topP: 1 },
        rng: createRng(1),
        eos,
      };
      return (async () => {
        const ids: number[] = [];
        try {
          for await (const id of batcher.tokens(spec, signal)) {
            ids.push(id);
            if (signal && ids.length === 2) ctl.abort(new DOMException("gone", "AbortError"));
          }
        } finally {
          m.model.endSession(session);
        }
        return ids;
      })();
    };
    const [a, b] = await Promise.allSettled([gen(PROMPTS[0], ctl.signal), gen(PROMPTS[1])]);
    expect(a.status).toBe("rejected");
    expect(b.status === "fulfilled" && b.value).toEqual((await alone(m, PROMPTS[1], 8)).ids);
  });
});
