/**
 * @module How ExpertHosts hold experts, from the deployment's vars: EXPERT_QUANT ("none": the
 * checkpoint's dtype, int8/int4 checkpoints stay so; "int8" / "int8-group" / "int4": quantize
 * f32/bf16 experts at load — per-row int8, int8 with one scale per 32 inputs, 4-bit groups) and
 * INT8_ACTIVATIONS ("accurate" or "7bit", the faster relaxed-dot path with more activation error)
 * and EXPERT_SLICES (slices per expert forced; 0 chooses them from the expert's bytes against
 * EXPERT_HOST_BUDGET_MB, the number every process computes the placement from).
 */
import { readBudgets } from "../platform/budgets";
import { enumVar, type Vars } from "../platform/env";
import { forcedSlices } from "./slices";
import type { ExpertStoreOptions } from "./expert-store";

export function expertStoreOptions(env: Vars): Required<ExpertStoreOptions> {
  return {
    quant: enumVar(env, "EXPERT_QUANT", ["none", "int8", "int8-group", "int4"], "none"),
    int8Activations: enumVar(env, "INT8_ACTIVATIONS", ["accurate", "7bit"], "accurate"),
    slices: forcedSlices(env),
    sliceBudgetBytes: readBudgets(env).expertHostBytes,
  };
}
