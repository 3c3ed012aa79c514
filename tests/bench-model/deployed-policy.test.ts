/**
 * The benchmarks measure the policy that ships: the re-plan config they run by default is the one
 * wrangler.toml deploys (read by the Coordinator's own `replanConfigFromEnv`), the code's defaults
 * and the README's [vars] table say the same, and the benchmark's edge-moe policy makes exactly
 * the decisions of the Coordinator's `replanStep` over a recorded trace. Fails when a benchmark
 * grows its own loop or knobs again.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { applyOps, type Placement } from "../../src/coordinator/placement";
import {
  DEFAULT_REPLAN_CONFIG,
  createReplanWindow,
  foldReplanWindow,
  replanConfigFromEnv,
  replanStep,
} from "../../src/coordinator/replan";
import { edgeMoePolicy, startPlacement } from "../../scripts/lib/placement-policies";
import { shapeFor, DRIFTS, EDGE_REQUESTS } from "../../scripts/lib/placement-scenarios";
import { deployedReplanConfig, wranglerVars } from "../../scripts/lib/replan-config";
import { DEFAULT_SIM } from "../../scripts/lib/sim-config";
import { syntheticTrace } from "../../scripts/lib/workloads";

const ROOT = join(__dirname, "..", "..");

describe("the deployed re-plan policy", () => {
  const vars = wranglerVars(join(ROOT, "wrangler.toml"));

  it("is what wrangler.toml, the code's defaults, the benchmark and the simulator all use", () => {
    const deployed = replanConfigFromEnv(vars);
    expect(deployed).toEqual(DEFAULT_REPLAN_CONFIG);
    expect(deployedReplanConfig()).toEqual(deployed);
    expect(DEFAULT_SIM.replan).toEqual(deployed);
    expect(DEFAULT_SIM.windowMs).toBe(deployed.windowMs);
  });

  it("matches the README's [vars] table", () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    for (const name of [
      "REPLAN_INTERVAL_MS",
      "MAX_COPIES_PER_REPLAN",
      "REPLAN_THRESHOLD",
      "MAX_EXPERT_HOSTS",
      "SPARE_SLOT_FRACTION",
      "PLACEMENT_RPC_MS",
      "PLACEMENT_PASS_MS_PER_MIB",
      "PLACEMENT_ROW_MS_PER_MIB",
    ]) {
      const row = new RegExp(`^\\| \`${name}\` \\| ([^|]+) \\|`, "m").exec(readme);
      expect(row, `README row for ${name}`).not.toBeNull();
      expect(Number(row![1].trim()), name).toBe(Number(vars[name]));
    }
  });

  it("is run by the benchmark as the Coordinator's replanStep, decision for decision", () => {
    const config = deployedReplanConfig();
    const nExperts = 64;
    const trace = syntheticTrace({
      nExperts,
      s: 1,
      nWindows: 30,
      assignmentsPerWindow: 4096 * 8,
      drift: DRIFTS.mixed,
      requests: EDGE_REQUESTS,
      seed: 11,
    });
    // Two idle windows in the middle: the policy must decay and release, not copy.
    trace.windows[14] = trace.windows[14].map((row) => row.map(() => 0));
    trace.windows[15] = trace.windows[15].map((row) => row.map(() => 0));
    const shape = shapeFor(nExperts, 16, 2);
    const bench = edgeMoePolicy(trace, shape, config);

    // The Coordinator's loop, as coordinator.ts runs it (every load succeeding).
    let placement: Placement = startPlacement(trace, shape);
    let window = createReplanWindow(placement, config);
    let copies = 0;
    for (let t = 0; t < trace.windows.length; t++) {
      const folded = foldReplanWindow(window, trace.windows[t]);
      window = folded.state;
      const decision = replanStep({ placement, expertBytes: shape.expertBytes }, folded, config);
      if (decision.shares) placement = applyOps(placement, decision.ops, decision.shares);
      copies += decision.copies;
      const step = bench.step(t);
      expect(step.placement, `window ${t}`).toEqual(placement);
      expect(step.copies).toBe(decision.copies);
    }
    expect(copies).toBeGreaterThan(0); // the trace exercised copies, not only shares
  });
});
