/**
 * @module The sizing plan on the published configs (scripts/configs) under wrangler.toml's own
 * [vars]: every number comes from the functions that place a real deployment — the plan is
 * compared with `deploymentShape`, `expertDeployment`, `countRpcs` and `worstCaseRpcs` run on the
 * same config, and where those refuse, the plan's blocker is their error. Mixtral-8x7B's int8
 * experts are placed in slices; refusals name the config field.
 */
import { readdirSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  isRefusal,
  parseWranglerVars,
  planModel,
  specForPlan,
  tableRows,
  type PlanOptions,
} from "../../../scripts/lib/plan-lib";
import { checkPlacementInvariants } from "../../../src/coordinator/placement";
import { maxSliceBytes } from "../../../src/experts/slices";
import { deploymentShape, expertDeployment } from "../../../src/stages/deployment";
import { countRpcs, worstCaseRpcs } from "../../../src/stages/rpc-count";

const CONFIGS = new URL("../../../scripts/configs/", import.meta.url);
const NAMES = readdirSync(CONFIGS)
  .filter((f) => f.endsWith(".json"))
  .map((f) => f.slice(0, -5))
  .sort();
const config = (name: string) =>
  JSON.parse(readFileSync(new URL(`${name}.json`, CONFIGS), "utf8")) as Record<string, unknown>;
const VARS = parseWranglerVars(readFileSync(new URL("../../../wrangler.toml", import.meta.url), "utf8"));
const OPTIONS: PlanOptions = { vars: VARS, expertDtype: "int8", subrequestLimit: 1000, promptTokens: 128, tokens: 256 };
const COSTS = { rpcMs: 1, userRttMs: 40, nsPerWeight: 1, kernelSource: "test" };

function parsed(name: string) {
  const r = specForPlan(name, config(name));
  if (isRefusal(r)) throw new Error(r.message);
  return r;
}

function plan(name: string, o: Partial<PlanOptions> = {}) {
  const r = parsed(name);
  return planModel(name, r.spec, { ...OPTIONS, ...o }, COSTS, r.notes);
}

describe("plan", () => {
  it("reads wrangler.toml's [vars] as the deployment does", () => {
    expect(VARS.EXPERT_HOST_BUDGET_MB).toMatch(/^\d+$/);
    expect(VARS.EXPERT_SLICES).toBe("0");
    expect(parseWranglerVars('[vars]\nA = "1"\n# c\nB = "x"\n[limits]\nC = "2"\n')).toEqual({ A: "1", B: "x" });
  });

  it.each(NAMES.filter((n) => !isRefusal(specForPlan(n, config(n)))))(
    "%s: instances, slices, longest request and subrequests are deploymentShape's and countRpcs'",
    (name) => {
      const { spec } = parsed(name);
      const p = plan(name);
      let shape: ReturnType<typeof deploymentShape> | null = null;
      let refusal: Error | null = null;
      try {
        shape = deploymentShape(spec, VARS, "q8", name);
      } catch (e) {
        refusal = e as Error;
      }
      const experts = expertDeployment(spec, VARS, "q8", name);
      expect(p.expert?.instances).toBe(experts.placement.instances.length);
      expect(p.expert?.slicesPerExpert).toBe(experts.slices);
      expect(p.expert?.unitBytes).toBe(experts.expertBytes);
      if (!shape) {
        expect(p.blockers[0]).toBe(refusal?.message);
        expect(p.stage).toBeNull();
        return;
      }
      expect(p.blockers).toEqual([]);
      expect(p.stage?.instances).toBe(shape.pipeline.stages.length);
      expect(p.head?.instances).toBe(shape.head?.shards.length ?? 0);
      expect(p.expert?.instances).toBe(shape.expertHosts);
      expect(p.maxLen).toBe(shape.maxLen);
      const generation = countRpcs(shape.rpcInput, 128, Math.min(256, shape.maxLen - 128));
      expect(p.subrequests?.generation).toEqual(generation);
      expect(p.rpcsPerToken).toEqual(generation.perToken);
      expect(p.subrequests?.worst).toEqual(worstCaseRpcs(shape.rpcInput, shape.maxLen));
      // The longest generation within the limit: its busiest invocation fits, one more token does not.
      const busiest = (n: number) => {
        const c = countRpcs(shape.rpcInput, 128, n);
        return Math.max(c.worker, c.stageCall, c.driverCall);
      };
      const max = p.subrequests?.maxTokens ?? -1;
      if (busiest(0) > 1000) {
        // The prompt alone is over the limit: no generation fits, and the plan says so.
        expect(max).toBe(0);
        expect(p.notes.some((n) => n.includes("the prompt alone"))).toBe(true);
        return;
      }
      expect(busiest(max)).toBeLessThanOrEqual(1000);
      if (max < shape.maxLen - 128) expect(busiest(max + 1)).toBeGreaterThan(1000);
    },
  );

  it("places Mixtral-8x7B's int8 experts in 2 slices over the ExpertHosts; int4 ones whole", () => {
    const { spec } = parsed("mixtral-8x7b");
    const p = plan("mixtral-8x7b");
    expect(p.expert?.slicesPerExpert).toBe(2);
    const x = expertDeployment(spec, VARS, "q8", "mixtral-8x7b");
    expect([x.placement.nExperts, x.placement.slices]).toEqual([16, 2]);
    const budget = Number(VARS.EXPERT_HOST_BUDGET_MB) << 20;
    expect(maxSliceBytes("q8", 4096, 14336, 1)).toBeGreaterThan(budget); // a whole expert does not fit …
    expect(checkPlacementInvariants(x.placement, undefined, x.expertBytes)).toEqual([]); // … its slices do
    // Experts are no longer what blocks it: only the dense stage sizing can.
    expect(p.blockers.join(" ")).not.toMatch(/expert/i);
    expect(plan("mixtral-8x7b", { expertDtype: "int4" }).expert?.slicesPerExpert).toBe(1);
    const forced = expertDeployment(spec, { ...VARS, EXPERT_SLICES: "4" }, "q8", "m");
    expect(plan("mixtral-8x7b", { vars: { ...VARS, EXPERT_SLICES: "4" } }).expert?.instances).toBe(
      forced.placement.instances.length,
    );
  });

  it("counts one fan-out row per slice in the RPC input", () => {
    const { spec } = parsed("granite-3.1-1b-a400m");
    const whole = deploymentShape(spec, VARS, "q8", "g");
    const sliced = deploymentShape(spec, { ...VARS, EXPERT_SLICES: "2" }, "q8", "g");
    expect(sliced.expertSlices).toBe(2);
    expect(sliced.rpcInput.topK).toBe(2 * whole.rpcInput.topK);
    const p = plan("granite-3.1-1b-a400m", { vars: { ...VARS, EXPERT_SLICES: "2" } });
    expect(p.subrequests?.generation).toEqual(countRpcs(sliced.rpcInput, 128, 256));
  });

  it("refuses gpt-oss and Llama 4, naming the field, and prints every config as a row", () => {
    for (const name of ["gpt-oss-20b", "llama-4-scout"]) {
      const r = specForPlan(name, config(name));
      expect(isRefusal(r) && r.field).toBe("model_type");
    }
    const rows = tableRows(
      NAMES.map((n) => (isRefusal(specForPlan(n, config(n))) ? (specForPlan(n, config(n)) as never) : plan(n))),
    );
    expect(rows).toHaveLength(NAMES.length + 2);
    expect(rows.find((r) => r.startsWith("| gpt-oss-20b"))).toMatch(/refused: `model_type`/);
  });
});
