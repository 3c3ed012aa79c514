/**
 * A seed reproduces its tokens, and the logits are bit-identical, whatever the placement (one
 * ExpertHost, four, or every expert in the Worker's isolate), the replica that served each expert
 * (hot experts replicated under a skewed load, replicas chosen by each isolate's load view), and a
 * failing replica whose rows are retried on another (issue 15).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, FIXTURES, postJson, REPLICATION_VARS, startWithModels } from "./helpers";

const PROMPT = [29, 192, 173, 88, 189, 139, 156, 188, 151, 153];
const SAMPLED = { prompt: PROMPT, max_tokens: 8, temperature: 1.5, top_p: 1, seed: 1234 };

interface Run {
  tokens: number[];
  logits: number[][];
  greedyLogits: number[][];
}

async function run(w: LocalWorker): Promise<Run> {
  const c = await postJson(w, "/v1/completions", SAMPLED);
  expect(c.status, JSON.stringify(c.json)).toBe(200);
  const f = await postJson(w, "/admin/forward", { tokens: PROMPT, greedy: 4 }, ADMIN);
  expect(f.status, JSON.stringify(f.json)).toBe(200);
  return { tokens: c.json.choices[0].token_ids, logits: f.json.logits, greedyLogits: f.json.greedy_logits };
}

interface Status {
  placement: { instances: unknown[]; replicas: { instance: number; share: number }[][][] };
}
const replicatedExperts = (s: Status) =>
  s.placement.replicas.flatMap((row, layer) =>
    row.flatMap((reps, expert) => (reps.length > 1 ? [{ layer, expert, reps }] : [])),
  );

const model = { tiny: join(FIXTURES, "mixtral-tiny") };
let one: LocalWorker;
let four: LocalWorker;
let local: LocalWorker;

beforeAll(async () => {
  [one, four, local] = await Promise.all([
    startWithModels(model, { MIN_EXPERT_HOSTS: "1", DEFAULT_MODEL: "tiny" }),
    startWithModels(model, { ...REPLICATION_VARS, ADMIN_FAULTS_ENABLED: "true" }),
    startWithModels(model, { EXPERT_BACKEND: "worker", WORKER_EXPERT_BUDGET_MB: "64", DEFAULT_MODEL: "tiny" }),
  ]);
});
afterAll(async () => {
  await Promise.all([one?.dispose(), four?.dispose(), local?.dispose()]);
});

describe("seeded requests are reproducible whatever the dispatch", () => {
  it("gives the same tokens and bit-identical logits on 1 host, 4 hosts with replicas, in-isolate", async () => {
    const want = await run(one);
    expect(want.tokens).toHaveLength(8);
    expect(await run(local)).toEqual(want);
    expect(await run(four)).toEqual(want);

    // Replicate hot experts with a skewed load, and keep it on while the seeded request is served.
    let stop = false;
    const load = (async () => {
      while (!stop) {
        const skewed = { prompt: new Array(24).fill(42), max_tokens: 4, temperature: 0 };
        const r = await postJson(four, "/v1/completions", skewed);
        if (r.status !== 200) throw new Error(`skewed load failed: ${JSON.stringify(r.json)}`);
      }
    })();
    const status = async () =>
      (await (await four.fetch("/admin/placement?model=tiny", { headers: ADMIN })).json()) as Status;
    let hot: ReturnType<typeof replicatedExperts> = [];
    for (let i = 0; i < 100 && hot.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 200));
      hot = replicatedExperts(await status());
    }
    expect(hot.length).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 1500)); // the Worker checks its placement every second
    for (let i = 0; i < 3; i++) expect(await run(four)).toEqual(want);

    // One replica of a hot expert fails: its rows are retried on another, with the same result.
    const victim = hot[0];
    const { layer, expert } = victim;
    const instance = victim.reps[0].instance;
    const fault = await postJson(four, "/admin/fault", { instance, layer, expert, ms: 3000 }, ADMIN);
    expect(fault.status).toBe(200);
    expect(await run(four)).toEqual(want);

    stop = true;
    await load;
    expect(await run(four)).toEqual(want);
  });
});
