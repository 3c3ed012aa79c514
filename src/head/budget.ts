/**
 * @module The HeadHost byte budget (HEAD_HOST_BUDGET_MB), read one way by the DO, the placement
 * and the tests. Local workerd enforces no isolate limit, so the code holds each shard to it.
 */
import { WASM_MAX_BYTES } from "../kernels/index";
import { ConfigError, mibVar, type Vars } from "../platform/env";

const MIB = 1024 * 1024;
/** Wasm memory a HeadHost keeps beyond its weights (one token chunk's hidden + logits, slack). */
export const HEAD_HOST_SCRATCH_BYTES = 4 * MIB;

/** HEAD_HOST_BUDGET_MB in bytes (default 96 MiB); with its scratch it must fit one Wasm memory. */
export function headHostBudgetBytes(env: Vars): number {
  const bytes = mibVar(env, "HEAD_HOST_BUDGET_MB", 96);
  if (bytes + HEAD_HOST_SCRATCH_BYTES > WASM_MAX_BYTES) {
    const cap = (WASM_MAX_BYTES - HEAD_HOST_SCRATCH_BYTES) / MIB;
    throw new ConfigError(
      "HEAD_HOST_BUDGET_MB",
      `at most ${cap} MiB (the rest of the ${WASM_MAX_BYTES / MIB} MiB Wasm memory is the shard's scratch)`,
      String(bytes / MIB),
    );
  }
  return bytes;
}
