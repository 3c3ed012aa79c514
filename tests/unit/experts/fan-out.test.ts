/**
 * @module fan-out.test — the layer fan-out over simulated ExpertHost instances: the output is
 * bit-identical whatever the placement, the replica chosen, the answer order and the retries
 * (issue 15); failed calls are retried only as the retry policy allows, under a deadline, and a
 * request whose client went away stops.
 */
import { describe, expect, it } from "vitest";
import type { Placement, Replica } from "../../../src/coordinator/placement";
import { ApiError } from "../../../src/errors";
import { fanOut, fanOutRows, type FanOutTransport } from "../../../src/experts/fan-out";
import { combineSlots } from "../../../src/experts/combine";
import type { ExpertForwardResult, ExpertWorkItem } from "../../../src/experts/protocol";
import type { InstanceLoad } from "../../../src/experts/replica-choice";
import { DEFAULT_RETRY, type RetryConfig } from "../../../src/experts/retry-policy";
import type { Routing } from "../../../src/gating/router";
import { createRng } from "../../../src/serving/sampling";

const D = 16; // dModel
const N_EXPERTS = 8;
const FAST: RetryConfig = { ...DEFAULT_RETRY, baseDelayMs: 1, maxDelayMs: 2, rpcTimeoutMs: 200 };

/** A stand-in expert: a fixed f32 function of one row (what a real host computes per row). */
function expertRow(e: number, x: Float32Array, out: Float32Array): void {
  for (let d = 0; d < D; d++) {
    out[d] = Math.fround(Math.fround(x[d] * (0.37 + 0.11 * e)) + Math.fround(Math.sin(e * 3.1 + d) * 1e3));
  }
}

function routing(n: number, topK: number, seed: number): Routing {
  const rng = createRng(seed);
  const ids = new Int32Array(n * topK);
  const weights = new Float32Array(n * topK);
  for (let t = 0; t < n; t++) {
    const pool = Array.from({ length: N_EXPERTS }, (_, e) => e).sort(() => rng() - 0.5);
    for (let k = 0; k < topK; k++) {
      ids[t * topK + k] = pool[k];
      weights[t * topK + k] = Math.fround(0.05 + rng());
    }
  }
  return { n, topK, ids, weights };
}

function activations(n: number, seed: number): Float32Array {
  const rng = createRng(seed);
  return Float32Array.from({ length: n * D }, () => Math.fround((rng() - 0.5) * 1e4));
}

function placement(replicas: number[][], nInstances: number, version = 1): Placement {
  const row = replicas.map((insts) => insts.map((instance): Replica => ({ instance, share: 1 / insts.length })));
  return {
    model: "m",
    version,
    nLayers: 1,
    nExperts: N_EXPERTS,
    instances: Array.from({ length: nInstances }, (_, id) => ({ id, name: `m/h${id}`, budgetBytes: 1 << 30 })),
    replicas: [row],
  };
}

interface Sim {
  transport: FanOutTransport;
  calls: { instance: number; experts: number[] }[];
}

/**
 * Simulated instances answering after a random delay (so answers arrive in a random order);
 * `behave(instance, attempt)` may replace an answer with a failure or a hang.
 */
type Behaviour = (instance: number, nth: number) => ExpertForwardResult | "hang" | Error | null;

function simulate(seed: number, behave?: Behaviour): Sim {
  const rng = createRng(seed);
  const calls: Sim["calls"] = [];
  const transport: FanOutTransport = {
    remote: true,
    call: async (instance, _p, items: ExpertWorkItem[], x) => {
      calls.push({ instance, experts: items.map((i) => i.expert) });
      const special = behave?.(instance, calls.filter((c) => c.instance === instance).length);
      await new Promise((r) => setTimeout(r, Math.floor(rng() * 4)));
      if (special === "hang") return new Promise<never>(() => {});
      if (special instanceof Error) throw special;
      if (special) return special;
      const y = new Float32Array(x.length);
      let row = 0;
      for (const it of items) {
        for (let i = 0; i < it.nTokens; i++, row++) {
          expertRow(it.expert, x.subarray(row * D, (row + 1) * D), y.subarray(row * D, (row + 1) * D));
        }
      }
      return { ok: true, y };
    },
  };
  return { transport, calls };
}

const freshLoad = (recent: number[] = []): InstanceLoad => ({ recent, inflight: [], at: Date.now() });
const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

/** Σ_k in slot order, computed without the fan-out: the result every dispatch must match. */
function reference(r: Routing, h: Float32Array): Float32Array {
  const out = new Float32Array(r.n * D);
  const y = new Float32Array(D);
  for (let t = 0; t < r.n; t++) {
    for (let k = 0; k < r.topK; k++) {
      const e = r.ids[t * r.topK + k];
      if (e < 0) continue;
      expertRow(e, h.subarray(t * D, (t + 1) * D), y);
      for (let d = 0; d < D; d++) out[t * D + d] += r.weights[t * r.topK + k] * y[d];
    }
  }
  return out;
}

const roundRobin = (nInstances: number) => Array.from({ length: N_EXPERTS }, (_, e) => [e % nInstances]);
const replicated = (nInstances: number, copies: number) =>
  Array.from({ length: N_EXPERTS }, (_, e) => [
    ...new Set(Array.from({ length: copies }, (_, c) => (e + c * 3) % nInstances)),
  ]);

describe("fan-out: one result whatever the dispatch", () => {
  it.each([2, 4])("is bit-identical across placements, replica choices and answer orders (top-%i)", async (topK) => {
    const r = routing(24, topK, 11);
    const h = activations(24, 5);
    const want = bits(reference(r, h));
    const layouts: [number[][], number][] = [
      [roundRobin(1), 1],
      [roundRobin(3), 3],
      [replicated(4, 2), 4],
      [replicated(5, 3), 5],
    ];
    let runs = 0;
    const splits = new Set<string>();
    for (const [reps, nInst] of layouts) {
      for (let s = 0; s < 4; s++) {
        // Different tie-breaks, load views (so different replicas serve) and answer delays.
        const load = freshLoad(Array.from({ length: nInst }, (_, i) => ((i + s) % nInst) * 3));
        const { out, dispatch } = await fanOut(simulate(100 + s).transport, placement(reps, nInst), 0, r, h, D, {
          random: createRng(s),
          load,
          retry: FAST,
        });
        expect(bits(out)).toEqual(want);
        expect([...dispatch.rowsByInstance.values()].reduce((a, b) => a + b, 0)).toBe(24 * topK);
        splits.add(JSON.stringify([...dispatch.rowsByInstance].sort((a, b) => a[0] - b[0])));
        runs++;
      }
    }
    expect(runs).toBe(16);
    expect(splits.size).toBeGreaterThan(6); // the rows really went different ways
  });

  it("differs from an answer-order sum: the fixed order is what makes the runs equal", () => {
    // The same terms added in reverse slot order change last bits somewhere: the test above has teeth.
    const r = routing(24, 2, 11);
    const h = activations(24, 5);
    const fwd = reference(r, h);
    const rev = new Float32Array(r.n * D);
    const y = new Float32Array(D);
    for (let t = 0; t < r.n; t++) {
      for (let k = r.topK - 1; k >= 0; k--) {
        expertRow(r.ids[t * r.topK + k], h.subarray(t * D, (t + 1) * D), y);
        for (let d = 0; d < D; d++) rev[t * D + d] += r.weights[t * r.topK + k] * y[d];
      }
    }
    expect(bits(rev)).not.toEqual(bits(fwd));
  });

  it("gives the same bits when rows are retried on another replica", async () => {
    const r = routing(16, 2, 3);
    const h = activations(16, 9);
    const fail: ExpertForwardResult = { ok: false, code: "model_error", message: "injected" };
    const sim = simulate(7, (instance, nth) => (instance === 1 && nth === 1 ? fail : null));
    const opts = { retry: FAST, load: freshLoad([9, 0, 9, 9]) };
    const { out } = await fanOut(sim.transport, placement(replicated(4, 2), 4), 0, r, h, D, opts);
    expect(bits(out)).toEqual(bits(reference(r, h)));
    expect(sim.calls.filter((c) => c.instance === 1)).toHaveLength(1);
  });

  it("skips dropped slots (id -1): they are neither sent nor added", async () => {
    const r = routing(8, 2, 4);
    r.ids[3] = -1;
    r.weights[3] = 0;
    const h = activations(8, 1);
    const sim = simulate(1);
    const { out, dispatch } = await fanOut(sim.transport, placement(roundRobin(2), 2), 0, r, h, D, { retry: FAST });
    expect(bits(out)).toEqual(bits(reference(r, h)));
    expect([...dispatch.rowsByInstance.values()].reduce((a, b) => a + b, 0)).toBe(15);
  });
});

describe("fan-out: retries and deadlines", () => {
  const r = routing(6, 2, 8);
  const h = activations(6, 2);

  it("never retries bad_request (500) or budget_exceeded (503 with Retry-After)", async () => {
    for (const [code, status] of [
      ["bad_request", 500],
      ["budget_exceeded", 503],
    ] as const) {
      const sim = simulate(2, (i) => (i === 0 ? { ok: false, code, message: "no" } : null));
      const opts = { retry: FAST, load: freshLoad([0, 99]) };
      const err = await fanOut(sim.transport, placement(replicated(2, 2), 2), 0, r, h, D, opts).catch((e) => e);
      expect(err).toBeInstanceOf(ApiError);
      expect(err.status).toBe(status);
      if (status === 503) expect(err.retryAfter).toBeGreaterThan(0);
      expect(sim.calls.filter((c) => c.instance === 0)).toHaveLength(1);
    }
  });

  it("retries a runtime-retryable error on the only replica after a backoff, and succeeds", async () => {
    const transient = Object.assign(new Error("Durable Object reset because its code was updated."), {
      retryable: true,
    });
    const sim = simulate(3, (_i, nth) => (nth === 1 ? transient : null));
    const { out } = await fanOut(sim.transport, placement(roundRobin(1), 1), 0, r, h, D, { retry: FAST });
    expect(bits(out)).toEqual(bits(reference(r, h)));
    expect(sim.calls).toHaveLength(2);
  });

  it("never re-sends an overloaded instance its rows: 503 with Retry-After when it is the only replica", async () => {
    const overloaded = Object.assign(new Error("Durable Object is overloaded. Too many requests queued."), {
      retryable: true,
      overloaded: true,
    });
    const sim = simulate(4, () => overloaded);
    const err = await fanOut(sim.transport, placement(roundRobin(1), 1), 0, r, h, D, { retry: FAST }).catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(503);
    expect(err.retryAfter).toBeGreaterThan(0);
    expect(sim.calls).toHaveLength(1);
  });

  it("moves the rows of a stuck instance to another replica after the deadline", async () => {
    const sim = simulate(5, (i) => (i === 0 ? "hang" : null));
    const t0 = Date.now();
    const opts = { retry: FAST, load: freshLoad([0, 99]) };
    const { out } = await fanOut(sim.transport, placement(replicated(2, 2), 2), 0, r, h, D, opts);
    expect(bits(out)).toEqual(bits(reference(r, h)));
    expect(Date.now() - t0).toBeLessThan(FAST.rpcTimeoutMs + 500);
    expect(sim.calls.filter((c) => c.instance === 0)).toHaveLength(1);
  });

  it("answers 503 within about one deadline when the only replica is stuck", async () => {
    const sim = simulate(6, () => "hang");
    const t0 = Date.now();
    const err = await fanOut(sim.transport, placement(roundRobin(1), 1), 0, r, h, D, { retry: FAST }).catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(503);
    expect(Date.now() - t0).toBeLessThan(FAST.rpcTimeoutMs + 500);
    expect(sim.calls).toHaveLength(1);
  });

  it("refreshes the placement after not_assigned and serves from the new one", async () => {
    const before = placement(roundRobin(2), 2, 1);
    const after = placement(
      roundRobin(2).map(([i]) => [1 - i]),
      2,
      2,
    );
    const sim = simulate(7, (instance) => {
      // Instance 0 no longer holds the experts the old table sends it.
      const moved = instance === 0 && sim.calls.at(-1)!.experts.some((e) => e % 2 === 0);
      return moved ? { ok: false, code: "not_assigned", message: "moved" } : null;
    });
    let refreshed = 0;
    sim.transport.refresh = async () => {
      refreshed++;
      return after;
    };
    const { out } = await fanOut(sim.transport, before, 0, r, h, D, { retry: FAST });
    expect(refreshed).toBe(1);
    expect(bits(out)).toEqual(bits(reference(r, h)));
  });

  it("stops when the client goes away: no further call, the abort reason surfaces", async () => {
    const ac = new AbortController();
    const sim = simulate(8, () => "hang");
    setTimeout(() => ac.abort(new Error("client disconnected")), 20);
    const t0 = Date.now();
    const opts = { retry: FAST, signal: ac.signal };
    const err = await fanOut(sim.transport, placement(roundRobin(2), 2), 0, r, h, D, opts).catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toBe("client disconnected");
    expect(Date.now() - t0).toBeLessThan(FAST.rpcTimeoutMs);
    const n = sim.calls.length;
    await new Promise((res) => setTimeout(res, 50));
    expect(sim.calls.length).toBe(n);
    const again = fanOut(sim.transport, placement(roundRobin(2), 2), 0, r, h, D, { signal: ac.signal });
    await expect(again).rejects.toThrow("client disconnected");
    expect(sim.calls.length).toBe(n);
  });
});

describe("fan-out: a merged call whose member leaves during a retry", () => {
  it("counts the member lost (no output), so the combine leaves its slots out and the others are served", async () => {
    const D = 4;
    const p = {
      model: "m",
      version: 1,
      nLayers: 1,
      nExperts: 2,
      instances: [
        { id: 0, name: "m/h0", budgetBytes: 1 << 30 },
        { id: 1, name: "m/h1", budgetBytes: 1 << 30 },
      ],
      replicas: [
        [
          [
            { instance: 0, share: 0.5 },
            { instance: 1, share: 0.5 },
          ],
          [
            { instance: 0, share: 0.5 },
            { instance: 1, share: 0.5 },
          ],
        ],
      ],
    } as unknown as Placement;
    let calls = 0;
    // The first call carrying member 1's row fails transiently; by the retry member 1 has gone.
    const transport: FanOutTransport = {
      remote: true,
      call: async (_i, _p, _items, x) => {
        calls++;
        if (x.some((v) => v === 7) && calls < 3) throw new Error("transient");
        return { ok: true, y: new Float32Array(x.length).fill(1) };
      },
    };
    const routing = { n: 2, topK: 1, ids: Int32Array.from([0, 0]), weights: Float32Array.from([1, 1]) };
    const r = await fanOutRows(transport, p, 0, routing, Float32Array.from([0, 0, 0, 0, 7, 7, 7, 7]), D, {
      owner: Int32Array.from([0, 1]),
      gone: (o) => o === 1,
      retry: { ...DEFAULT_RETRY, baseDelayMs: 1, maxDelayMs: 2 },
    });
    expect([...r.lost.keys()]).toEqual([1]);
    const ids = routing.ids.map((id, t) => (r.lost.has(t) ? -1 : id));
    const out = combineSlots(2, 1, ids, routing.weights, D, r.slots);
    expect(Array.from(out.subarray(0, D))).toEqual([1, 1, 1, 1]);
  });
});
