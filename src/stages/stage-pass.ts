/**
 * @module How a StageHost runs its layers for its calls (src/stages/stage-batcher.ts): one call
 * alone through `layers` and the isolate's expert fan-out (`runExperts`), or several calls in one
 * pass through `stepLayers` and one fan-out per MoE layer whose rows are owned per call
 * (`runExpertsOwned`: a lost row fails only its call).
 */
import { currentPlacement, runExperts, runExpertsOwned } from "../experts/expert-client";
import { batchingEnabled } from "../platform/env";
import { pipelineRpcTimeoutMs } from "../platform/deadline";
import { maxServableTokens } from "../model/config";
import { STAGE_SCRATCH_BYTES } from "../serving/stage-budgets";
import { shareByRows, StageBatcher, stageQueueRows, type StagePassRunner } from "./stage-batcher";
import type { StagePart } from "./stage-host";

/** Rows one merged pass carries at most (its scratch bounds it further: `stepRowsFitting`). */
export const MAX_PASS_ROWS = 512;

/**
 * The part's pass queue. It merges calls when BATCHING is on and a merged pass gives every call
 * exactly its rows alone (`layersExact`); otherwise each pass carries one call, alone, as before —
 * but still one pass at a time: calls run side by side would each hold their scratch across their
 * expert fan-outs, and 16 concurrent prompts went past the stage's Wasm budget (a 500) where one
 * pass's STAGE_SCRATCH_BYTES is all the budget keeps for them.
 */
export function stageBatcherFor(env: Env, part: StagePart, kvBudgetBytes: number, label: string): StageBatcher {
  const { forward } = part;
  const merges = batchingEnabled(env) && forward.layersExact;
  // One pass's scratch, for sessions as long as the KV budget allows, within STAGE_SCRATCH_BYTES.
  const maxLen = Math.max(1, Math.min(maxServableTokens(forward.spec), Math.floor(kvBudgetBytes / forward.kvBytes(1))));
  const maxRows = Math.min(MAX_PASS_ROWS, forward.stepRowsFitting(STAGE_SCRATCH_BYTES, maxLen));
  const deadline = pipelineRpcTimeoutMs(env);
  return new StageBatcher(
    passRunner(env, part),
    forward.spec.dModel,
    {
      // A pass takes at least one call whatever its rows: a limit of 1 row is one call per pass.
      maxRows: merges ? maxRows : 1,
      maxQueuedRows: stageQueueRows(maxRows),
      queueDeadlineMs: deadline,
      runDeadlineMs: deadline,
    },
    `stage ${label}`,
  );
}

/** This stage's layers for one call alone (`layers`), or for several in one pass (`stepLayers`). */
function passRunner(env: Env, part: StagePart): StagePassRunner {
  const { dModel } = part.forward.spec;
  const options = { modelVersion: part.version };
  return {
    async alone(call) {
      let rpcs = 0;
      const y = await part.forward.layers(
        call.session,
        call.x,
        async (layer, routing, h) => {
          const placement = await currentPlacement(env, part.init);
          const r = await runExperts(env, placement, layer, routing, h, dModel, options);
          rpcs += r.dispatch.rpcs;
          return r.out;
        },
        call.rng,
      );
      return { y, rpcs };
    },
    async merged(calls) {
      let rpcs = 0;
      const segs = calls.map((c) => ({ session: c.session, x: c.x, rng: c.rng }));
      const out = await part.forward.stepLayers(segs, async (layer, routing, h, owner) => {
        const placement = await currentPlacement(env, part.init);
        const gone = (i: number) => calls[i]?.gone() ?? false;
        const r = await runExpertsOwned(env, placement, layer, routing, h, dModel, owner, { ...options, gone });
        rpcs += r.dispatch.rpcs;
        return { out: r.out, lost: r.lost };
      });
      // The pass's expert RPCs, shared by the calls it served by their rows (sums over calls stay true).
      const shares = shareByRows(
        rpcs,
        out.map((o, i) => (o.ok ? calls[i].x.length / dModel : 0)),
      );
      return out.map((o, i) => (o.ok ? { ok: true, value: { y: o.y, rpcs: shares[i] } } : o));
    },
  };
}
