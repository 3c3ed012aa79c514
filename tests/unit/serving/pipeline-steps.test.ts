/**
 * The session driver's batched step through the stage chain (src/serving/pipeline-steps.ts) with
 * fake parts: every segment's rows go down the chain in ONE call a round, at most PREFILL_CHUNK rows
 * each, sessions advance only with the chain, a lost session is replayed, and failures stay with
 * the segments they belong to.
 */
import { describe, expect, it } from "vitest";
import {
  PipelineSessions,
  runPipelineStep,
  type PipelineSession,
  type PipelineStepParts,
} from "../../../src/serving/pipeline-steps";
import { PREFILL_CHUNK } from "../../../src/serving/stage-budgets";
import { SessionLostError } from "../../../src/serving/stage-client";
import type { StepSegment } from "../../../src/serving/forward";

const D = 2;
const V = 3;

function session(id: string, maxLen = 1000): PipelineSession {
  return { id, maxLen, length: 0, fed: [], replays: 0 };
}

interface Calls {
  /** Each chain call: its items as [session, start, rows]. */
  chain: [string, number, number][][];
  heads: number[];
  replays: string[];
}

/** Fake parts: a row's "residual" is its token id; a logit row is [n, token + 1, token + 2]. */
interface Faults {
  lose?: Set<string>;
  failChain?: string;
  failHead?: boolean;
  failCall?: boolean;
}

function parts(calls: Calls, opts: Faults = {}) {
  const p: PipelineStepParts<PipelineSession> = {
    dModel: D,
    vocabSize: V,
    embed: async (tokens) => Float32Array.from(tokens.flatMap((t) => [t, t])),
    chain: async (items) => {
      calls.chain.push(items.map((it) => [it.s.id, it.start, it.x.length / D]));
      if (opts.failCall) throw new Error("chain call failed");
      return items.map((it) => {
        if (opts.lose?.delete(it.s.id)) return new SessionLostError("lost");
        if (opts.failChain === it.s.id) return new Error(`stage failed for ${it.s.id}`);
        return it.x.slice(it.x.length - D);
      });
    },
    head: async (rows, n) => {
      calls.heads.push(n);
      if (opts.failHead) throw new Error("head down");
      const out = new Float32Array(n * V);
      for (let i = 0; i < n; i++) out.set([n, rows[i * D] + 1, rows[i * D] + 2], i * V);
      return out;
    },
    replay: async (s) => {
      calls.replays.push(s.id);
      s.replays++;
    },
    maxReplays: 2,
  };
  return p;
}

/** A step's recorder and stand-in sessions, empty. */
function fresh(): { calls: Calls; sessions: PipelineSessions<PipelineSession> } {
  return { calls: { chain: [], heads: [], replays: [] }, sessions: new PipelineSessions<PipelineSession>() };
}

function seg(
  sessions: PipelineSessions<PipelineSession>,
  s: PipelineSession,
  tokens: number[],
  nOut: 0 | 1,
): StepSegment {
  return { session: sessions.stand(s), tokens, nOut, rng: () => 0 };
}

describe("runPipelineStep", () => {
  it("sends every segment down the chain in one call and makes one head call for the rows wanting logits", async () => {
    const { calls, sessions } = fresh();
    const a = session("a");
    const b = session("b");
    const c = session("c");
    const segs = [seg(sessions, a, [5], 1), seg(sessions, b, [7, 8, 9], 0), seg(sessions, c, [4, 6], 1)];
    const out = await runPipelineStep(parts(calls), sessions, segs);
    expect(calls.chain).toEqual([
      [
        ["a", 0, 1],
        ["b", 0, 3],
        ["c", 0, 2],
      ],
    ]);
    expect(calls.heads).toEqual([2]);
    expect(out[0]).toEqual({ ok: true, logits: Float32Array.from([2, 6, 7]) });
    expect(out[1]).toEqual({ ok: true, logits: new Float32Array(0) });
    expect(out[2]).toEqual({ ok: true, logits: Float32Array.from([2, 7, 8]) });
    expect([a.length, b.length, c.length]).toEqual([1, 3, 2]);
    expect(segs.map((g) => g.session.length)).toEqual([1, 3, 2]);
    expect(b.fed).toEqual([7, 8, 9]);
  });

  it("sends chunks longer than PREFILL_CHUNK in rounds, each at the session's next positions", async () => {
    const { calls, sessions } = fresh();
    const a = session("a");
    const b = session("b");
    const n = 2 * PREFILL_CHUNK + 3;
    const tokens = Array.from({ length: n }, (_, i) => i);
    const out = await runPipelineStep(parts(calls), sessions, [seg(sessions, a, tokens, 1), seg(sessions, b, [9], 1)]);
    expect(calls.chain).toEqual([
      [
        ["a", 0, PREFILL_CHUNK],
        ["b", 0, 1],
      ],
      [["a", PREFILL_CHUNK, PREFILL_CHUNK]],
      [["a", 2 * PREFILL_CHUNK, 3]],
    ]);
    expect(calls.heads).toEqual([2]);
    expect(out[0]).toEqual({ ok: true, logits: Float32Array.from([2, n, n + 1]) });
    expect(out[1]).toEqual({ ok: true, logits: Float32Array.from([2, 10, 11]) });
    expect(a.length).toBe(n);
    expect(a.fed).toEqual(tokens);
  });

  it("replays a lost session and runs its rows again; another failure fails only its segment", async () => {
    const { calls, sessions } = fresh();
    const a = session("a");
    const b = session("b");
    const c = session("c");
    const p = parts(calls, { lose: new Set(["a"]), failChain: "b" });
    const out = await runPipelineStep(p, sessions, [
      seg(sessions, a, [3], 1),
      seg(sessions, b, [4], 1),
      seg(sessions, c, [5], 1),
    ]);
    expect(calls.replays).toEqual(["a"]);
    // The lost session's rows ran again, alone, in a second round.
    expect(calls.chain).toEqual([
      [
        ["a", 0, 1],
        ["b", 0, 1],
        ["c", 0, 1],
      ],
      [["a", 0, 1]],
    ]);
    expect(out[0]).toEqual({ ok: true, logits: Float32Array.from([2, 4, 5]) });
    expect(out[1].ok).toBe(false);
    expect(String((out[1] as { error: unknown }).error)).toContain("stage failed for b");
    expect(out[2]).toEqual({ ok: true, logits: Float32Array.from([2, 6, 7]) });
    expect([a.length, b.length, c.length]).toEqual([1, 0, 1]);
  });

  it("fails a session lost past its replays, and a failed head only the segments wanting logits", async () => {
    const { calls, sessions } = fresh();
    const a = session("a");
    a.replays = 2;
    const b = session("b");
    const c = session("c");
    const p = parts(calls, { lose: new Set(["a"]), failHead: true });
    const out = await runPipelineStep(p, sessions, [
      seg(sessions, a, [3], 1),
      seg(sessions, b, [4, 5], 0),
      seg(sessions, c, [6], 1),
    ]);
    expect(calls.replays).toEqual([]);
    expect(out[0].ok).toBe(false);
    expect((out[0] as { error: unknown }).error).toBeInstanceOf(SessionLostError);
    expect(out[1]).toEqual({ ok: true, logits: new Float32Array(0) });
    expect(out[2].ok).toBe(false);
    expect(String((out[2] as { error: unknown }).error)).toContain("head down");
  });

  it("fails every segment when the embedding lookup fails, before any stage call", async () => {
    const { calls, sessions } = fresh();
    const p = parts(calls);
    p.embed = async () => {
      throw new Error("lookup failed");
    };
    const out = await runPipelineStep(p, sessions, [
      seg(sessions, session("a"), [1], 1),
      seg(sessions, session("b"), [2], 1),
    ]);
    expect(out.every((o) => !o.ok)).toBe(true);
    expect(calls.chain).toEqual([]);
  });

  it("fails every segment a failed chain call carried", async () => {
    const { calls, sessions } = fresh();
    const a = session("a");
    const out = await runPipelineStep(parts(calls, { failCall: true }), sessions, [
      seg(sessions, a, [1], 1),
      seg(sessions, session("b"), [2, 3], 0),
    ]);
    expect(out.map((o) => o.ok)).toEqual([false, false]);
    expect(calls.chain).toHaveLength(1);
    expect(calls.heads).toEqual([]);
    expect(a.length).toBe(0);
  });

  it("refuses rows past a session's positions without calling the chain", async () => {
    const { calls, sessions } = fresh();
    const out = await runPipelineStep(parts(calls), sessions, [seg(sessions, session("a", 2), [1, 2, 3], 1)]);
    expect(out[0].ok).toBe(false);
    expect(calls.chain).toEqual([]);
  });
});
