/**
 * Continuous batching in the StageHosts and HeadHosts (issue 11) in real workerd: concurrent
 * streamed greedy sessions on a two-stage pipeline (int8-group stage matrices, the default) with the
 * head on two HeadHost shards give, with BATCHING on, exactly the tokens each gives alone with
 * BATCHING off, while the stages really merged their calls (passes that carried several calls'
 * rows, in their stats) and the one session driver ran the generations' decode steps together
 * (steps of several generations; one head call a step); with SESSION_DRIVERS = 2 the generations
 * spread over two drivers, each sharing steps among its own, with the same tokens.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, greedyIds, makeSmallChatModel, startWithModels, streamedText } from "./helpers";
import type { StageHostStats } from "../../src/serving/stage-protocol";
import type { HeadHostStats } from "../../src/head/protocol";

const PROMPTS = [
  [29, 192, 173, 88, 189],
  [1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975],
  [1, 306, 763],
  [1, 1724, 338, 278, 1900, 982, 310, 263, 25273, 29973, 13, 13],
  [1, 415, 2936, 9060, 285, 1142],
  [1, 22172, 29991],
];
const STEPS = 14;

let on: LocalWorker;
let off: LocalWorker;
let spread: LocalWorker;

beforeAll(async () => {
  const model = { chat: makeSmallChatModel() };
  const vars = { DEFAULT_MODEL: "chat", PIPELINE_STAGES: "2", HEAD_SHARDS: "2" };
  [on, off, spread] = await Promise.all([
    startWithModels(model, { ...vars, BATCHING: "on" }),
    startWithModels(model, { ...vars, BATCHING: "off" }),
    startWithModels(model, { ...vars, BATCHING: "on", SESSION_DRIVERS: "2" }),
  ]);
});
afterAll(async () => {
  await Promise.all([on?.dispose(), off?.dispose(), spread?.dispose()]);
});

/** A streamed greedy completion: its text, from the stream's chunks. */
function streamed(w: LocalWorker, prompt: number[]): Promise<string> {
  return streamedText(w, "/v1/completions", { prompt, max_tokens: STEPS, temperature: 0 });
}

function complete(w: LocalWorker, prompt: number[]): Promise<number[]> {
  return greedyIds(w, prompt, STEPS);
}

interface Hosts {
  stages: StageHostStats[];
  heads: HeadHostStats[];
  drivers: StageHostStats[];
}

async function hosts(w: LocalWorker): Promise<Hosts> {
  const res = await w.fetch("/admin/hosts?model=chat", { headers: ADMIN });
  expect(res.status).toBe(200);
  return (await res.json()) as Hosts;
}

/** Each prompt alone with batching off, one request at a time: the reference token ids and text. */
async function alone(): Promise<{ wantIds: number[][]; wantText: string[] }> {
  const wantIds: number[][] = [];
  const wantText: string[] = [];
  for (const p of PROMPTS) {
    wantIds.push(await complete(off, p));
    wantText.push(await streamed(off, p));
  }
  return { wantIds, wantText };
}

describe("StageHost batching", () => {
  it("gives concurrent streamed sessions the tokens each gets alone, with their stage calls merged", async () => {
    const { wantIds, wantText } = await alone();
    expect(wantIds.every((ids) => ids.length > 0)).toBe(true);
    // Together, batching on: streamed and plain at once.
    const [text, ids] = await Promise.all([
      Promise.all(PROMPTS.map((p) => streamed(on, p))),
      Promise.all(PROMPTS.map((p) => complete(on, p))),
    ]);
    expect(ids).toEqual(wantIds);
    expect(text).toEqual(wantText);

    const { stages: st, heads, drivers } = await hosts(on);
    expect(st).toHaveLength(2);
    const merged = st.reduce((t, s) => t + (s.batching?.mergedPasses ?? 0), 0);
    const mergedRows = st.reduce((t, s) => t + (s.batching?.mergedRows ?? 0), 0);
    expect(merged).toBeGreaterThan(0);
    expect(mergedRows).toBeGreaterThan(merged);
    for (const s of st) {
      expect(s.batching?.maxCalls ?? 0).toBeLessThanOrEqual(2 * PROMPTS.length);
      expect(s.sessions).toBe(0);
    }
    // One session driver ran every generation's decode steps, several generations a step: each
    // step one pass through the chain and one head call for all its rows.
    expect(drivers).toHaveLength(1);
    const steps = drivers[0].driverSteps;
    expect(steps).not.toBeNull();
    const tokens = 2 * PROMPTS.length * STEPS;
    expect(steps!.steps).toBeLessThan(tokens);
    expect(steps!.segments).toBeGreaterThan(1.5 * steps!.steps);
    expect(heads).toHaveLength(2);
    for (const h of heads) {
      expect(h.batching?.calls ?? 0).toBeGreaterThan(0);
      expect(h.batching!.calls).toBeLessThanOrEqual(steps!.steps);
    }
    const plain = await hosts(off);
    for (const s of plain.stages) expect(s.batching).toBeNull();
    for (const h of plain.heads) expect(h.batching).toBeNull();
    // Batching off: a driver per stage, each running its generations alone (no shared steps).
    expect(plain.drivers).toHaveLength(2);
    for (const d of plain.drivers) expect(d.driverSteps).toBeNull();
  });

  it("spreads generations over SESSION_DRIVERS drivers, each sharing steps, with the same tokens", async () => {
    const { wantIds: want, wantText } = await alone();
    // 24 sessions at once (each prompt streamed and plain, twice): random session ids put some on
    // each of the 2 drivers (all on one: 2 × 2⁻²⁴).
    const runs = [...PROMPTS, ...PROMPTS];
    const [text, ids] = await Promise.all([
      Promise.all(runs.map((p) => streamed(spread, p))),
      Promise.all(runs.map((p) => complete(spread, p))),
    ]);
    expect(ids).toEqual([...want, ...want]);
    expect(text).toEqual([...wantText, ...wantText]);
    const { drivers, stages } = await hosts(spread);
    expect(drivers).toHaveLength(2);
    for (const d of drivers) {
      expect(d.driverSteps, d.name).not.toBeNull();
      expect(d.driverSteps!.segments).toBeGreaterThan(d.driverSteps!.steps);
    }
    for (const s of stages) expect(s.sessions).toBe(0);
  });
});
