/**
 * @module layer-batcher.test — the Worker-side merged fan-out over simulated ExpertHosts: callers
 * of one turn share ONE call per instance and each gets exactly what it gets alone (bit for bit);
 * one caller aborting leaves the others' results alone; a host that keeps failing fails only the
 * callers with rows on it, one that fails once is retried for everyone; the first MoE layer waits
 * for the isolate's other decoding requests (joinBatch), boundedly.
 */
import { describe, expect, it } from "vitest";
import type { Placement, Replica } from "../../../src/coordinator/placement";
import { ApiError } from "../../../src/errors";
import { fanOut, type FanOutTransport } from "../../../src/experts/fan-out";
import {
  BARRIER_WAIT_MS,
  joinBatch,
  runBatchedLayer,
  type LayerBatchContext,
} from "../../../src/experts/layer-batcher";
import type { ExpertForwardResult, ExpertWorkItem } from "../../../src/experts/protocol";
import { DEFAULT_RETRY, type RetryConfig } from "../../../src/experts/retry-policy";
import type { Routing } from "../../../src/gating/router";
import { createRng } from "../../../src/serving/sampling";

const D = 8;
const N_EXPERTS = 8;
const FAST: RetryConfig = { ...DEFAULT_RETRY, baseDelayMs: 1, maxDelayMs: 2, rpcTimeoutMs: 500 };
const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

function expertRow(e: number, x: Float32Array, out: Float32Array): void {
  for (let d = 0; d < D; d++) out[d] = Math.fround(Math.fround(x[d] * (0.37 + 0.11 * e)) + Math.sin(e * 3.1 + d) * 1e3);
}

function routing(n: number, seed: number, experts?: number[][]): Routing {
  const rng = createRng(seed);
  const topK = 2;
  const ids = new Int32Array(n * topK);
  const weights = new Float32Array(n * topK);
  for (let t = 0; t < n; t++) {
    const pool = experts?.[t] ?? Array.from({ length: N_EXPERTS }, (_, e) => e).sort(() => rng() - 0.5);
    for (let k = 0; k < topK; k++) {
      ids[t * topK + k] = pool[k];
      weights[t * topK + k] = Math.fround(0.05 + rng());
    }
  }
  return { n, topK, ids, weights };
}

const activations = (n: number, seed: number) => {
  const rng = createRng(seed);
  return Float32Array.from({ length: n * D }, () => Math.fround((rng() - 0.5) * 1e4));
};

/** Two layers; expert e of each on instance e % nInstances. */
function placement(model: string, nInstances: number): Placement {
  const row = Array.from({ length: N_EXPERTS }, (_, e): Replica[] => [{ instance: e % nInstances, share: 1 }]);
  return {
    model,
    version: 1,
    nLayers: 2,
    nExperts: N_EXPERTS,
    instances: Array.from({ length: nInstances }, (_, id) => ({ id, name: `${model}/h${id}`, budgetBytes: 1 << 30 })),
    replicas: [row, row],
  };
}

type Behaviour = (instance: number, nth: number) => ExpertForwardResult | null;

function hosts(behave?: Behaviour) {
  const calls: { instance: number; rows: number }[] = [];
  const transport: FanOutTransport = {
    remote: true,
    call: async (instance, _p, items: ExpertWorkItem[], x) => {
      calls.push({ instance, rows: x.length / D });
      const special = behave?.(instance, calls.filter((c) => c.instance === instance).length);
      await new Promise((r) => setTimeout(r, 1));
      if (special) return special;
      const y = new Float32Array(x.length);
      let row = 0;
      for (const it of items)
        for (let i = 0; i < it.nTokens; i++, row++)
          expertRow(it.expert, x.subarray(row * D, (row + 1) * D), y.subarray(row * D, (row + 1) * D));
      return { ok: true, y };
    },
  };
  return { transport, calls };
}

function context(transport: FanOutTransport): LayerBatchContext {
  return { transport: () => transport, options: { retry: FAST, random: createRng(1) }, dModel: D };
}

/** What a caller gets alone, through the plain fan-out. */
async function alone(p: Placement, layer: number, r: Routing, h: Float32Array): Promise<Float32Array> {
  return (await fanOut(hosts().transport, p, layer, r, h, D, { retry: FAST, random: createRng(1) })).out;
}

describe("layer batcher", () => {
  it("merges one turn's callers into one call per instance and gives each its own bits", async () => {
    const p = placement("merge", 3);
    const sim = hosts();
    const callers = [routing(1, 1), routing(3, 2), routing(1, 3), routing(2, 4)].map((r, i) => ({
      routing: r,
      h: activations(r.n, 10 + i),
      placement: p,
    }));
    const got = await Promise.all(callers.map((c) => runBatchedLayer(c, 1, context(sim.transport))));
    expect(sim.calls).toHaveLength(3); // one RPC per instance, not per caller
    expect(sim.calls.reduce((s, c) => s + c.rows, 0)).toBe(7 * 2);
    for (let i = 0; i < callers.length; i++) {
      const want = await alone(p, 1, callers[i].routing, callers[i].h);
      expect(bits(got[i].out)).toEqual(bits(want));
      expect(got[i].dispatch.rpcs).toBe(3);
    }
  });

  it("lets one caller abort without failing the others", async () => {
    const p = placement("abort", 2);
    const sim = hosts();
    const stop = new AbortController();
    const a = { routing: routing(2, 5), h: activations(2, 1), placement: p, signal: stop.signal };
    const b = { routing: routing(2, 6), h: activations(2, 2), placement: p, signal: new AbortController().signal };
    const pa = runBatchedLayer(a, 1, context(sim.transport));
    const pb = runBatchedLayer(b, 1, context(sim.transport));
    await new Promise((r) => setTimeout(r, 0)); // the batch has left: the abort comes mid-call
    stop.abort(new Error("client went away"));
    await expect(pa).rejects.toThrow("client went away");
    expect(bits((await pb).out)).toEqual(bits(await alone(p, 1, b.routing, b.h)));
  });

  it("fails only the callers whose rows a failing host held, after the retries", async () => {
    const p = placement("fail", 2); // odd experts on instance 1
    const down: ExpertForwardResult = { ok: false, code: "model_error", message: "injected" };
    const sim = hosts((instance) => (instance === 1 ? down : null));
    const even = {
      routing: routing(2, 1, [
        [0, 2],
        [2, 4],
      ]),
      h: activations(2, 3),
      placement: p,
    };
    const odd = { routing: routing(1, 2, [[1, 2]]), h: activations(1, 4), placement: p };
    const [ok, failed] = await Promise.allSettled([
      runBatchedLayer(even, 1, context(sim.transport)),
      runBatchedLayer(odd, 1, context(sim.transport)),
    ]);
    expect(ok.status).toBe("fulfilled");
    if (ok.status === "fulfilled") expect(bits(ok.value.out)).toEqual(bits(await alone(p, 1, even.routing, even.h)));
    expect(failed.status).toBe("rejected");
    if (failed.status === "rejected") {
      expect(failed.reason).toBeInstanceOf(ApiError);
      expect(failed.reason).toMatchObject({ status: 503, code: "expert_unavailable" });
      expect((failed.reason as ApiError).retryAfter).toBeGreaterThanOrEqual(1);
    }
    expect(sim.calls.filter((c) => c.instance === 1)).toHaveLength(FAST.maxAttempts); // retried per policy
  });

  it("retries a host that fails once, for every caller", async () => {
    const p = placement("retry", 2);
    const flaky: ExpertForwardResult = { ok: false, code: "model_error", message: "reset" };
    const sim = hosts((instance, nth) => (instance === 1 && nth === 1 ? flaky : null));
    const cs = [routing(2, 7), routing(3, 8)].map((r, i) => ({ routing: r, h: activations(r.n, i), placement: p }));
    const got = await Promise.all(cs.map((c) => runBatchedLayer(c, 1, context(sim.transport))));
    for (let i = 0; i < cs.length; i++)
      expect(bits(got[i].out)).toEqual(bits(await alone(p, 1, cs[i].routing, cs[i].h)));
  });

  it("waits at the first MoE layer for the isolate's other decoding requests, boundedly", async () => {
    const p = placement("barrier", 2);
    const sim = hosts();
    const leaveA = joinBatch("barrier");
    const leaveB = joinBatch("barrier");
    const a = { routing: routing(1, 1), h: activations(1, 1), placement: p };
    const b = { routing: routing(1, 2), h: activations(1, 2), placement: p };
    const pa = runBatchedLayer(a, 0, context(sim.transport));
    await new Promise((r) => setTimeout(r, 5)); // B is still finishing its step
    const pb = runBatchedLayer(b, 0, context(sim.transport));
    await Promise.all([pa, pb]);
    expect(sim.calls).toHaveLength(2); // merged: one call per instance
    leaveB();
    // B has left: A no longer waits for it (its call has left by the next macrotask).
    const before = sim.calls.length;
    const lone = runBatchedLayer(a, 0, context(sim.transport));
    await new Promise((r) => setTimeout(r, 0));
    expect(sim.calls.length).toBeGreaterThan(before);
    await lone;
    // A member that never comes costs at most the bounded wait.
    const leaveC = joinBatch("barrier");
    const t1 = Date.now();
    await runBatchedLayer(a, 0, context(sim.transport));
    expect(Date.now() - t1).toBeGreaterThanOrEqual(BARRIER_WAIT_MS - 2);
    expect(Date.now() - t1).toBeLessThan(BARRIER_WAIT_MS + 200);
    leaveC();
    leaveA();
  });
});
