/**
 * Continuous batching over a pipeline stage's layers (ModelForward.stepLayers): sessions whose
 * residual rows share one pass over a layer range — prompt chunks beside other sessions' decode
 * rows — get, bit for bit, the rows each gets alone from `layers`, with the stage's matrices held
 * as int8-group (the StageHost default), bf16 or f32; a session whose expert rows were lost fails
 * alone and does not advance. Also a whole-model `step` on the families `stepExact` newly admits
 * (gated shared experts, a dense layer, Granite's multipliers).
 */
import { describe, expect, it } from "vitest";
import { buildTensors, checkpointFiles } from "../../support/family-checkpoints";
import { GRANITE_MOE, MIXTRAL, QWEN2_MOE, type Config } from "../../support/family-configs";
import { localExperts, nodeModel } from "../../support/forward-helpers";
import { openModel } from "../../../src/model/architectures";
import { loadLayer } from "../../../src/model/dense-layers";
import { memoryFileStore } from "../../../src/model/safetensors";
import { loadKernels } from "../../../src/kernels/node";
import type { DenseFormat } from "../../../src/kernels/dense";
import type { ExpertRunner, LayerSegment, OwnedExpertRunner, StepSegment } from "../../../src/serving/forward";
import { ModelForward } from "../../../src/serving/forward";
import { createRng } from "../../../src/serving/sampling";
import { ROUTING_OFF, type RoutingOptions } from "../../../src/gating/options";

const MIXTRAL8: Config = { ...MIXTRAL, num_local_experts: 8 };
const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

/** Layers [first, nLayers) of a family's checkpoint as a StageHost holds them, and its experts. */
async function stagePart(cfg: Config, format: DenseFormat, first: number, routing: RoutingOptions = ROUTING_OFF) {
  const { spec, ckpt } = await openModel(memoryFileStore(checkpointFiles(cfg, buildTensors(cfg))));
  const k = loadKernels("best", { maxBytes: 64 << 20 });
  const load = (l: number) => loadLayer(k, ckpt, spec, l, { format, chunkBytes: 4096 });
  const part = await ModelForward.loadLayers(k, spec, first, spec.nLayers, load, routing);
  return { spec, part, experts: localExperts(k, ckpt, spec) };
}

function owned(experts: ExpertRunner, lose: number | null = null): OwnedExpertRunner {
  return async (layer, routing, h, owner) => {
    const out = await experts(layer, routing, h);
    const lost = new Map<number, unknown>();
    if (lose !== null && owner) lost.set(lose, new Error(`rows of ${lose} lost`));
    return { out, lost };
  };
}

/** Deterministic residual rows [n, dModel], different per session and position. */
function rows(session: number, start: number, n: number, dModel: number): Float32Array {
  return Float32Array.from({ length: n * dModel }, (_, i) => Math.sin((session + 1) * 1.7 + (start + i) * 0.31) * 2);
}

const PROMPT_ROWS = [7, 2, 11];
const DECODE_STEPS = 3;

describe.each([
  ["mixtral", MIXTRAL8, 1],
  ["qwen2-moe (gated shared expert, a dense layer)", QWEN2_MOE, 1],
  ["granite (multipliers)", GRANITE_MOE, 0],
])("a batched pass over a stage's layers on %s", (_, cfg, first) => {
  it.each(["int8", "bf16", "f32"] as const)("gives every session its rows alone, bit for bit (%s)", async (format) => {
    const { spec, part, experts } = await stagePart(cfg, format, first);
    expect(part.layersExact).toBe(true);
    const d = spec.dModel;
    // Alone: each session's chunks through `layers`, one call each.
    const chunks = PROMPT_ROWS.map((n, i) => [
      rows(i, 0, n, d),
      ...Array.from({ length: DECODE_STEPS }, (_, t) => rows(i, n + t, 1, d)),
    ]);
    const want = await Promise.all(
      chunks.map(async (cs, i) => {
        const s = part.startSession(32);
        const out: number[][] = [];
        for (const x of cs) out.push(bits(await part.layers(s, x, experts, createRng(i))));
        part.endSession(s);
        return out;
      }),
    );
    // Batched: session 0 starts alone, 1 joins, 2's prompt arrives beside the others' decode rows.
    const sessions = PROMPT_ROWS.map(() => part.startSession(32));
    const rngs = PROMPT_ROWS.map((_, i) => createRng(i));
    const done = PROMPT_ROWS.map(() => 0);
    const got: number[][][] = PROMPT_ROWS.map(() => []);
    const plan = [[0], [0, 1], [0, 1, 2], [0, 1, 2], [1, 2], [2]];
    for (const members of plan) {
      const who = members.filter((i) => done[i] < chunks[i].length);
      const segs: LayerSegment[] = who.map((i) => ({ session: sessions[i], x: chunks[i][done[i]], rng: rngs[i] }));
      const out = await part.stepLayers(segs, owned(experts));
      who.forEach((i, j) => {
        const r = out[j];
        if (!r.ok) throw r.error;
        got[i].push(bits(r.y));
        done[i]++;
      });
    }
    PROMPT_ROWS.forEach((_, i) => {
      expect(got[i].length, `session ${i}`).toBe(chunks[i].length);
      expect(got[i], `session ${i}`).toEqual(want[i]);
    });
  });
});

describe("stepLayers", () => {
  it("fails only the session whose expert rows were lost, which stays where it was", async () => {
    const { spec, part, experts } = await stagePart(MIXTRAL8, "int8", 1);
    const d = spec.dModel;
    const a = part.startSession(32);
    const b = part.startSession(32);
    const out = await part.stepLayers(
      [
        { session: a, x: rows(0, 0, 3, d), rng: () => 0 },
        { session: b, x: rows(1, 0, 2, d), rng: () => 0 },
      ],
      owned(experts, 1),
    );
    expect(out[0].ok).toBe(true);
    expect(out[1].ok).toBe(false);
    expect([a.length, b.length]).toEqual([3, 0]);
    const alone = part.startSession(32);
    const y = await part.layers(alone, rows(0, 0, 3, d), experts, () => 0);
    if (out[0].ok) expect(bits(out[0].y)).toEqual(bits(y));
  });

  it("names each kept slot's session when capacity dropped slots, so a lost row fails only its own", async () => {
    // A capacity of one slot per expert per session: most slots are dropped, the runner gets kept slots.
    const { spec, part, experts } = await stagePart(MIXTRAL8, "f32", 1, { ...ROUTING_OFF, capacityFactor: 0.1 });
    const d = spec.dModel;
    const a = part.startSession(32);
    const b = part.startSession(32);
    let flattened = 0;
    // As runExpertsOwned: session 1's rows are lost; without owners a lost row fails the whole pass.
    const runner: OwnedExpertRunner = async (layer, routing, h, owner) => {
      if (owner === null) throw new Error("a row was lost and no owner was given");
      expect(owner.length).toBe(routing.n);
      if (routing.topK === 1) flattened++;
      const lost = new Map<number, unknown>();
      if (owner.includes(1)) lost.set(1, new Error("rows of 1 lost"));
      return { out: await experts(layer, routing, h), lost };
    };
    const out = await part.stepLayers(
      [
        { session: a, x: rows(0, 0, 12, d), rng: () => 0 },
        { session: b, x: rows(1, 0, 10, d), rng: () => 0 },
      ],
      runner,
    );
    expect(flattened).toBeGreaterThan(0);
    expect(out.map((o) => o.ok)).toEqual([true, false]);
    expect([a.length, b.length]).toEqual([12, 0]);
    const alone = part.startSession(32);
    const y = await part.layers(alone, rows(0, 0, 12, d), experts, () => 0);
    if (out[0].ok) expect(bits(out[0].y)).toEqual(bits(y));
  });

  it("refuses rows that are not whole residual rows, and a session without room, before touching any", async () => {
    const { spec, part, experts } = await stagePart(MIXTRAL8, "f32", 1);
    const a = part.startSession(4);
    const b = part.startSession(4);
    await expect(
      part.stepLayers([{ session: a, x: new Float32Array(spec.dModel + 1), rng: () => 0 }], owned(experts)),
    ).rejects.toThrow(/x must hold/);
    await expect(
      part.stepLayers(
        [
          { session: a, x: rows(0, 0, 2, spec.dModel), rng: () => 0 },
          { session: b, x: rows(1, 0, 5, spec.dModel), rng: () => 0 },
        ],
        owned(experts),
      ),
    ).rejects.toThrow(/holds 4 positions/);
    expect([a.length, b.length]).toEqual([0, 0]);
  });
});

describe.each([
  ["qwen2-moe (gated shared expert, a dense layer)", QWEN2_MOE],
  ["granite (multipliers)", GRANITE_MOE],
])("a batched whole-model step on %s", (_, cfg) => {
  it("gives every session the logits it gets alone", async () => {
    const m = await nodeModel(checkpointFiles(cfg, buildTensors(cfg)));
    expect(m.model.stepExact).toBe(true);
    const prompts = [
      [3, 17, 40, 5, 9],
      [61, 2],
      [7, 30, 44, 15, 23, 50, 1],
    ];
    const want = await Promise.all(
      prompts.map(async (p) => {
        const s = m.model.startSession(16);
        const l = await m.model.forward(s, p, m.experts, () => 0);
        m.model.endSession(s);
        return bits(l);
      }),
    );
    const segs: StepSegment[] = prompts.map((p) => ({
      session: m.model.startSession(16),
      tokens: p,
      nOut: 1,
      rng: () => 0,
    }));
    const out = await m.model.step(segs, owned(m.experts));
    out.forEach((r, i) => {
      if (!r.ok) throw r.error;
      expect(bits(r.logits), `session ${i}`).toEqual(want[i]);
    });
  });
});
