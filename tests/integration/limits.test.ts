/**
 * Memory budgets and broken models on the real runtime: placement follows the ExpertHost budget,
 * an expert larger than a host is placed in slices, a model whose smallest slice cannot fit is
 * refused with a message naming the budget, a malformed checkpoint is
 * reported naming file and tensor, and none of it disturbs the other models being served.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, cpSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { FIXTURES, GOLDEN_TINY_IDS, greedyTinyIds, postJson, startWithModels } from "./helpers";

const EXPERT_BYTES = 3 * 64 * 96 * 4; // mixtral-tiny: w1, w3 [96, 64] and w2 [64, 96], f32

function truncatedCopy(): string {
  const dir = mkdtempSync(join(tmpdir(), "edge-moe-broken-"));
  cpSync(join(FIXTURES, "mixtral-tiny"), dir, { recursive: true });
  const file = join(dir, "model.safetensors");
  const bytes = readFileSync(file);
  writeFileSync(file, bytes.subarray(0, bytes.length - 1000));
  return dir;
}

describe("ExpertHost budget drives the placement", () => {
  let w: LocalWorker;
  beforeAll(async () => {
    // Room for exactly 3 experts per host: 16 experts need 6 instances.
    const mib = (3.5 * EXPERT_BYTES) / (1024 * 1024);
    w = await startWithModels(
      { tiny: join(FIXTURES, "mixtral-tiny") },
      { EXPERT_HOST_BUDGET_MB: String(mib), MIN_EXPERT_HOSTS: "1", SPARE_SLOT_FRACTION: "0" },
    );
  });
  afterAll(() => w?.dispose());

  it("uses as many instances as the budget needs and serves correctly", async () => {
    const p = (await (await w.fetch("/v1/placement?model=tiny")).json()) as { instances: { experts: string[] }[] };
    expect(p.instances).toHaveLength(6);
    expect(Math.max(...p.instances.map((i) => i.experts.length))).toBe(3);
    expect(await greedyTinyIds(w, 3)).toEqual(GOLDEN_TINY_IDS.slice(0, 3)); // golden greedy_ids of the fixture
  });
});

describe("an expert larger than an ExpertHost", () => {
  let w: LocalWorker;
  beforeAll(async () => {
    // Half an expert: 2 slices (64 + 32 of its 96 intermediate units) leave one too wide, 3 fit.
    w = await startWithModels(
      { tiny: join(FIXTURES, "mixtral-tiny") },
      { EXPERT_HOST_BUDGET_MB: String((0.5 * EXPERT_BYTES) / (1024 * 1024)), SPARE_SLOT_FRACTION: "0" },
    );
  });
  afterAll(() => w?.dispose());

  it("is split into the fewest slices that fit, and serves the golden tokens", async () => {
    expect(await greedyTinyIds(w, 3)).toEqual(GOLDEN_TINY_IDS.slice(0, 3)); // golden greedy_ids of the fixture
    const p = (await (await w.fetch("/v1/placement?model=tiny")).json()) as {
      expert_slices: number;
      n_experts: number;
      instances: { experts: string[] }[];
    };
    expect([p.expert_slices, p.n_experts]).toEqual([3, 8]);
    // 2 layers × 8 experts × 3 slices, each placed once.
    expect(p.instances.flatMap((i) => i.experts)).toHaveLength(48);
  });
});

describe("models that do not fit", () => {
  let w: LocalWorker;
  beforeAll(async () => {
    // A fifth of an expert: not even its smallest slice (a third) fits.
    w = await startWithModels(
      { tiny: join(FIXTURES, "mixtral-tiny"), broken: truncatedCopy() },
      { EXPERT_HOST_BUDGET_MB: String((0.2 * EXPERT_BYTES) / (1024 * 1024)) },
    );
  });
  afterAll(() => w?.dispose());

  it("refuses a model whose expert exceeds the ExpertHost budget, naming the budget", async () => {
    const r = await postJson(w, "/v1/completions", { model: "tiny", prompt: [1, 2], max_tokens: 2 });
    expect(r.status).toBe(503);
    expect(r.json.error.code).toBe("model_too_large");
    expect(r.json.error.message).toContain("EXPERT_HOST_BUDGET_MB");
  });

  it("reports a truncated checkpoint naming the file and tensor, without a stack trace", async () => {
    const r = await postJson(w, "/v1/completions", { model: "broken", prompt: [1, 2], max_tokens: 2 });
    expect(r.status).toBe(500);
    expect(r.json.error.code).toBe("model_format_error");
    expect(r.json.error.message).toContain("model.safetensors");
    expect(r.json.error.message).toMatch(/tensor "[^"]+"/);
    expect(r.json.error.message).not.toMatch(/\n\s+at /);
  });
});

describe("Worker budget", () => {
  let w: LocalWorker;
  beforeAll(async () => {
    w = await startWithModels({ tiny: join(FIXTURES, "mixtral-tiny") }, { WORKER_BUDGET_MB: "0.01" });
  });
  afterAll(() => w?.dispose());

  it("refuses a model whose dense weights exceed WORKER_BUDGET_MB", async () => {
    const r = await postJson(w, "/v1/completions", { model: "tiny", prompt: [1, 2], max_tokens: 2 });
    expect(r.status).toBe(503);
    expect(r.json.error.message).toContain("WORKER_BUDGET_MB");
    expect((await w.fetch("/health")).status).toBe(200);
  });
});

describe('EXPERT_BACKEND = "worker" (every expert in the Worker isolate)', () => {
  let w: LocalWorker;
  beforeAll(async () => {
    w = await startWithModels(
      { tiny: join(FIXTURES, "mixtral-tiny") },
      { EXPERT_BACKEND: "worker", WORKER_EXPERT_BUDGET_MB: "4" },
    );
  });
  afterAll(() => w?.dispose());

  it("serves the golden greedy tokens without any ExpertHost", async () => {
    expect(await greedyTinyIds(w, 8)).toEqual(GOLDEN_TINY_IDS.slice(0, 8));
    const p = (await (await w.fetch("/v1/placement?model=tiny")).json()) as {
      instances: { name: string; experts: string[] }[];
    };
    expect(p.instances).toHaveLength(1);
    expect(p.instances[0].experts).toHaveLength(16);
  });

  it("refuses when the experts exceed WORKER_EXPERT_BUDGET_MB", async () => {
    const small = await startWithModels(
      { tiny: join(FIXTURES, "mixtral-tiny") },
      { EXPERT_BACKEND: "worker", WORKER_EXPERT_BUDGET_MB: "0.5" },
    );
    try {
      const r = await postJson(small, "/v1/completions", { model: "tiny", prompt: [1, 2], max_tokens: 2 });
      expect(r.status).toBe(503);
      expect(r.json.error.message).toContain("WORKER_EXPERT_BUDGET_MB");
    } finally {
      await small.dispose();
    }
  });
});
