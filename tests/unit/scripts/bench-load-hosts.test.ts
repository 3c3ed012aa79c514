/**
 * @module bench:load's expert-pass columns (scripts/lib/bench-load.ts `hostDelta`): the ExpertHosts of
 * a level come and go (re-placement adds them, eviction restarts them), so the work a level ran is
 * counted host by host, never as a difference of two sums.
 */
import { describe, expect, it } from "vitest";
import { hostDelta, type HostWork } from "../../../scripts/lib/bench-load";

function work(hosts: Record<string, [number, number]>): HostWork {
  const byHost = new Map(Object.entries(hosts).map(([name, [passes, rows]]) => [name, { passes, rows }]));
  let passes = 0;
  let rows = 0;
  for (const h of byHost.values()) {
    passes += h.passes;
    rows += h.rows;
  }
  return { passes, rows, byHost, failovers: {}, promptTokens: 0, sharedTokens: 0 };
}

describe("hostDelta", () => {
  it("counts each host's own increase", () => {
    expect(hostDelta(work({ h0: [10, 40], h1: [5, 9] }), work({ h0: [14, 52], h1: [7, 12] }))).toEqual({
      passes: 6,
      rows: 15,
    });
  });

  it("counts all of a host added during the level, and a restarted one from zero", () => {
    // h1 restarted (its counters fell from 50 to 3); h2 is new; h3 was released (gone).
    const before = work({ h0: [10, 40], h1: [50, 200], h3: [8, 8] });
    const after = work({ h0: [12, 44], h1: [3, 6], h2: [4, 9] });
    expect(hostDelta(before, after)).toEqual({ passes: 2 + 3 + 4, rows: 4 + 6 + 9 });
    // The difference of the sums would have said passes 19 − 68 < 0.
    expect(after.passes - before.passes).toBeLessThan(0);
  });

  it("counts a host retired and added again under its name from when it was last seen", () => {
    // h3 was listed in an earlier level (counters 30, 90), retired, and re-added during this one.
    const before = work({ h0: [10, 40] });
    const after = work({ h0: [12, 44], h3: [33, 96] });
    expect(hostDelta(before, after, new Map([["h3", { passes: 30, rows: 90 }]]))).toEqual({
      passes: 2 + 3,
      rows: 4 + 6,
    });
  });
});
