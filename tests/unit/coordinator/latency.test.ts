/**
 * The latency-aware re-plan: the model's expected layer latency, no copy that makes layer calls
 * slower at low load (where the balance-only policy copies), copies at high load, and the idle
 * release after a burst — replicas go and the placement returns to the compact one.
 */
import { describe, expect, it } from "vitest";
import { applyOps, checkPlacementInvariants, type Placement } from "../../../src/coordinator/placement";
import { expectedLayerMs } from "../../../src/coordinator/planner/latency";
import {
  DEFAULT_REPLAN_CONFIG,
  createReplanWindow,
  foldReplanWindow,
  replanStep,
  type ReplanConfig,
} from "../../../src/coordinator/replan";
import type { LoadWindowState } from "../../../src/coordinator/load-window";

const E = 8;
const TOP_K = 2;
/** 1.25 MiB experts: at the deployed 0.13 ms a pass + 0.02 ms a row per MiB, 0.19 ms a one-row call. */
const BYTES = 1.25 * 2 ** 20;

/** One layer, 8 experts round-robin over 4 instances (expert e on e mod 4), room for 3 each. */
function compact(): Placement {
  const replicas = [Array.from({ length: E }, (_, e) => [{ instance: e % 4, share: 1 }])];
  const instances = Array.from({ length: 4 }, (_, id) => ({ id, name: `m/h${id}`, budgetBytes: 3 * BYTES }));
  return { model: "m", version: 1, nLayers: 1, nExperts: E, instances, replicas };
}

const config = (over: Partial<ReplanConfig> = {}): ReplanConfig => ({ ...DEFAULT_REPLAN_CONFIG, ...over });

/** A window of `calls` decode calls (top-2) with expert 0 in `hot` of them, the rest spread evenly. */
function window(calls: number, hot = 0.9): number[] {
  const counts = new Array<number>(E).fill(0);
  counts[0] = Math.round(calls * hot);
  const rest = calls * TOP_K - counts[0];
  for (let e = 1; e < E; e++) counts[e] = rest / (E - 1);
  return counts;
}

interface Run {
  placement: Placement;
  state: LoadWindowState;
  copies: number;
  reasons: string[];
}

/** Steps replanStep over windows of `calls` layer calls each, applying every decision. */
function run(cfg: ReplanConfig, windows: { calls: number; counts: number[] }[], from?: Run): Run {
  let placement = from?.placement ?? compact();
  let state = from?.state ?? createReplanWindow(placement, cfg);
  let copies = 0;
  const reasons: string[] = [];
  for (const w of windows) {
    const folded = foldReplanWindow(state, [w.counts], 1, undefined, [w.calls]);
    state = folded.state;
    const d = replanStep({ placement, expertBytes: BYTES }, folded, cfg);
    if (d.shares) placement = applyOps(placement, d.ops, d.shares);
    expect(checkPlacementInvariants(placement, undefined, BYTES)).toEqual([]);
    copies += d.copies;
    reasons.push(d.reason);
  }
  return { placement, state, copies, reasons };
}

const replicaSets = (p: Placement) => p.replicas.map((row) => row.map((reps) => reps.map((r) => r.instance)));

// At 0.19 ms a one-row pass, a 500 ms window: 20 calls is ~1% busy on the hot instance, 3000 past full.
const LOW = 20;
const HIGH = 3000;

describe("the latency model", () => {
  it("charges for every instance a call may touch, and for a busy instance's queue", () => {
    const cost = { rpcMs: 1, rowMsPerMiB: 0.5 };
    const one = expectedLayerMs([{ q: 1, rowMiB: 100 }], [0], 100, cost);
    const spread = expectedLayerMs(
      [
        { q: 0.5, rowMiB: 50 },
        { q: 0.5, rowMiB: 50 },
      ],
      [0, 0],
      100,
      cost,
    );
    expect(one).toBeCloseTo(0.5 + 0.5 + 0.5, 9); // transit + host half of the RPC + one row
    // The same rows split over two instances at zero load: no faster (touches are taken as
    // independent, so the wider fan-out is charged a little even though a call uses one replica).
    expect(spread).toBeGreaterThanOrEqual(one);
    expect(spread).toBeLessThan(one * 1.1);
    const busy = expectedLayerMs([{ q: 1, rowMiB: 100 }], [0.8], 100, cost);
    expect(busy).toBeGreaterThan(one * 1.5);
  });

  it("charges a batched call one weight read per expert, not one per row", () => {
    // 1 MiB experts, 0.4 ms a pass and 0.05 ms a row per MiB. One call with 8 rows of one expert:
    // a pass and 8 rows (0.8 ms of kernel), where 8 one-row calls would each pay the pass.
    const cost = { rpcMs: 1, rowMsPerMiB: 0.05, passMsPerMiB: 0.4 };
    const batched = expectedLayerMs([{ q: 1, rowMiB: 8 * 100, passMiB: 1 }], [0], 100, cost);
    expect(batched).toBeCloseTo(0.5 + 0.5 * 1 + 0.4 + 8 * 0.05, 9);
    const single = expectedLayerMs([{ q: 1, rowMiB: 100, passMiB: 1 }], [0], 100, cost);
    expect(single).toBeCloseTo(0.5 + 0.5 + 0.4 + 0.05, 9);
    // Splitting the 8 rows over two instances saves 4 rows' compute (0.2 ms), not half a pass-per-row
    // model's 8 × 0.45 / 2: less than the wider fan-out's tail costs.
    const split = expectedLayerMs(
      [
        { q: 1, rowMiB: 4 * 100, passMiB: 1 },
        { q: 1, rowMiB: 4 * 100, passMiB: 1 },
      ],
      [0, 0],
      100,
      cost,
    );
    expect(split).toBeGreaterThan(batched);
    // Rows only (the model before the pass cost): the same split looked 1.6 ms faster.
    const rowsOnly = { rpcMs: 1, rowMsPerMiB: 0.45 };
    const a = expectedLayerMs([{ q: 1, rowMiB: 800 }], [0], 100, rowsOnly);
    const b = expectedLayerMs(
      [
        { q: 1, rowMiB: 400 },
        { q: 1, rowMiB: 400 },
      ],
      [0, 0],
      100,
      rowsOnly,
    );
    expect(a - b).toBeGreaterThan(1.5);
  });
});

describe("latency-aware replanStep", () => {
  it("makes no copy at low load, where the balance-only policy copies", () => {
    const windows = Array.from({ length: 6 }, () => ({ calls: LOW, counts: window(LOW) }));
    const aware = run(config(), windows);
    const balance = run(config({ latency: null }), windows);
    expect(balance.copies).toBeGreaterThan(0);
    expect(aware.copies).toBe(0);
    expect(aware.reasons).toContain("not-faster");
    expect(replicaSets(aware.placement)).toEqual(replicaSets(compact()));
  });

  it("copies the hot expert at high load, and the model predicts a faster layer", () => {
    const cfg = config();
    let placement = compact();
    let state = createReplanWindow(placement, cfg);
    let faster = false;
    for (let t = 0; t < 4; t++) {
      const folded = foldReplanWindow(state, [window(HIGH)], 1, undefined, [HIGH]);
      state = folded.state;
      const d = replanStep({ placement, expertBytes: BYTES }, folded, cfg);
      if (d.copies > 0) {
        expect(d.latency!.after).toBeLessThan(d.latency!.before);
        expect(d.ops.some((o) => o.op === "add-replica" && o.expert === 0)).toBe(true);
        faster = true;
      }
      if (d.shares) placement = applyOps(placement, d.ops, d.shares);
    }
    expect(faster).toBe(true);
    expect(placement.replicas[0][0].length).toBeGreaterThan(1);
  });

  it("releases the burst's replicas when load falls, back to the compact placement", () => {
    const cfg = config();
    const burst = run(
      cfg,
      Array.from({ length: 6 }, () => ({ calls: HIGH, counts: window(HIGH) })),
    );
    expect(burst.placement.replicas[0][0].length).toBeGreaterThan(1);
    // Single-stream traffic after the burst: a few calls per window, the same mix.
    const calm = run(
      cfg,
      Array.from({ length: 30 }, () => ({ calls: 4, counts: window(4) })),
      burst,
    );
    expect(calm.copies).toBe(0);
    // Released within four windows (2 s at the deployed 500 ms).
    const released = calm.reasons.findIndex((r) => r === "released-unpaid" || r === "released-idle");
    expect(released).toBeGreaterThanOrEqual(0);
    expect(released).toBeLessThan(4);
    expect(replicaSets(calm.placement)).toEqual(replicaSets(compact()));
    // Idle windows (no traffic at all) leave it compact.
    const idle = run(
      cfg,
      Array.from({ length: 5 }, () => ({ calls: 0, counts: new Array<number>(E).fill(0) })),
      calm,
    );
    expect(replicaSets(idle.placement)).toEqual(replicaSets(compact()));
  });

  it("without call counts (older Workers) balance alone decides, as before", () => {
    const cfg = config();
    let placement = compact();
    let state = createReplanWindow(placement, cfg);
    let copies = 0;
    for (let t = 0; t < 3; t++) {
      const folded = foldReplanWindow(state, [window(LOW)]);
      state = folded.state;
      const d = replanStep({ placement, expertBytes: BYTES }, folded, cfg);
      expect(d.latency).toBeUndefined();
      copies += d.copies;
      if (d.shares) placement = applyOps(placement, d.ops, d.shares);
    }
    expect(copies).toBeGreaterThan(0);
  });
});
