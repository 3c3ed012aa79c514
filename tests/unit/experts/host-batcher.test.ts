/**
 * @module host-batcher.test — an ExpertHost's merged kernel passes on a real ExpertStore: calls of
 * one turn run as one pass per expert and each gets exactly the rows it gets alone (bit for bit);
 * a call that cannot be served (an expert the model does not have) fails alone; a full queue
 * answers `overloaded`.
 */
import { readdirSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ExpertStore } from "../../../src/experts/expert-store";
import { HostBatcher, MAX_PASS_ROWS } from "../../../src/experts/host-batcher";
import { loadKernels } from "../../../src/kernels/node";
import type { ExpertForwardResult } from "../../../src/experts/protocol";
import { openModel } from "../../../src/model/architectures";
import { memoryFileStore } from "../../../src/model/safetensors";

async function store(): Promise<ExpertStore> {
  const dir = new URL("../../fixtures/mixtral-tiny/", import.meta.url);
  const files: Record<string, Uint8Array> = {};
  for (const f of readdirSync(dir)) if (f !== "golden.json") files[f] = new Uint8Array(readFileSync(new URL(f, dir)));
  const { spec, ckpt } = await openModel(memoryFileStore(files));
  return new ExpertStore({ id: "tiny", spec, ckpt }, 64 << 20, "test", (maxBytes) => loadKernels("best", { maxBytes }));
}

const rows = (n: number, d: number, seed: number) =>
  Float32Array.from({ length: n * d }, (_, i) => Math.sin(seed * 5.3 + i * 0.41) * (1 + (i % 4)));
const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

describe("HostBatcher", () => {
  it("runs one turn's calls as one pass per expert and answers each call its own rows", async () => {
    const s = await store();
    const d = s.model.spec.dModel;
    const calls = [
      {
        items: [
          { expert: 1, nTokens: 2 },
          { expert: 3, nTokens: 1 },
        ],
        x: rows(3, d, 1),
      },
      { items: [{ expert: 3, nTokens: 2 }], x: rows(2, d, 2) },
      {
        items: [
          { expert: 0, nTokens: 1 },
          { expert: 1, nTokens: 1 },
        ],
        x: rows(2, d, 3),
      },
    ];
    const alone: Float32Array[] = [];
    for (const c of calls) alone.push(await s.run(0, c.items, c.x));
    const passesBefore = s.calls;
    const b = new HostBatcher("test host");
    const got = await Promise.all(calls.map((c) => b.run(s, 0, c)));
    expect(s.calls - passesBefore).toBe(1); // one kernel pass (one run over experts 1, 3, 0)
    expect(b.stats()).toEqual({ passes: 1, calls: 3 });
    got.forEach((r, i) => {
      expect(r.ok).toBe(true);
      if (r.ok) expect(bits(r.y)).toEqual(bits(alone[i]));
    });
  });

  it("keeps a failure with the call that caused it", async () => {
    const s = await store();
    const d = s.model.spec.dModel;
    const b = new HostBatcher("test host");
    const good = { items: [{ expert: 2, nTokens: 1 }], x: rows(1, d, 4) };
    const bad = { items: [{ expert: 99, nTokens: 1 }], x: rows(1, d, 5) };
    const [g, f] = await Promise.all([b.run(s, 0, good), b.run(s, 0, bad)]);
    expect(g.ok).toBe(true);
    if (g.ok) expect(bits(g.y)).toEqual(bits(await s.run(0, good.items, good.x)));
    expect(f).toMatchObject({ ok: false, code: "bad_request" });
  });

  it("answers overloaded when the queue is full", async () => {
    const s = await store();
    const d = s.model.spec.dModel;
    const b = new HostBatcher("test host");
    // Two passes may run at once: fill both slots and the queue, the next call is refused.
    const big = (seed: number) => ({ items: [{ expert: 0, nTokens: MAX_PASS_ROWS }], x: rows(MAX_PASS_ROWS, d, seed) });
    const queued: Promise<ExpertForwardResult>[] = [];
    for (let i = 0; i < 40; i++) queued.push(b.run(s, 1, big(i)));
    const answers = await Promise.all(queued);
    const refused = answers.filter((a) => !a.ok);
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) expect(r).toMatchObject({ ok: false, code: "overloaded" });
    expect(answers.filter((a) => a.ok).length).toBeGreaterThan(0);
  });
});
