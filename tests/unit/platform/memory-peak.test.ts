/** MemoryPeak: high-water marks of the samples its owner notes. */
import { describe, expect, it } from "vitest";
import { MemoryPeak } from "../../../src/platform/memory-peak";

describe("MemoryPeak", () => {
  it("keeps the largest of each figure, independently, and the pages of the Wasm peak", () => {
    const p = new MemoryPeak();
    expect(p.stats).toMatchObject({ bytesHeldPeak: 0, wasmMemoryPeakBytes: 0, wasmPagesPeak: 0 });
    p.note({ bytesHeld: 10, wasmMemoryBytes: 65_536 * 3 });
    p.note({ bytesHeld: 50, wasmMemoryBytes: 65_536 });
    const s = p.note({ bytesHeld: 20, wasmMemoryBytes: 65_536 * 2 + 1 });
    expect(s).toMatchObject({ bytesHeldPeak: 50, wasmMemoryPeakBytes: 65_536 * 3, wasmPagesPeak: 3 });
    expect(Number.isNaN(Date.parse(s.since))).toBe(false);
  });
});
