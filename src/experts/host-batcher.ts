/**
 * @module Host-side continuous batching in an ExpertHost: `forward` calls for the same (model,
 * layer) that meet here (from several Worker isolates, stages or batches) run as ONE kernel pass
 * per expert — their rows regrouped by expert — and each call gets its own rows back in its own
 * order. Calls meet when they are delivered in the same microtask checkpoint, or while the
 * layer's passes are busy (at most 2 at once: a pass may wait for experts to load): the next pass
 * takes everything queued meanwhile (no timer: in local workerd a `setTimeout(0)` per call cost
 * more than the merge saved). Every row is computed independently of the others in a pass
 * (row-independence test), so a call's answer is the same bit for bit whoever shared it.
 *
 * Bounded: a pass holds at most MAX_PASS_ROWS rows, the queue at most HOST_QUEUE_BYTES of
 * activations, and a queued call waits at most HOST_QUEUE_DEADLINE_MS for a free slot; a call
 * refused by either answers `overloaded`, which the Worker serves on another replica or answers
 * with a 503 and Retry-After. A merged pass that fails is re-run call by call, so a failure (an
 * expert that cannot load) stays with the calls that asked for it.
 */
import { Coalescer, QueueFullError, type BatchEntry, type BatchResult } from "../platform/coalescer";
import type { ExpertStore } from "./expert-store";
import { storeFailure } from "./expert-store";
import type { ExpertForwardResult, ExpertWorkItem } from "./protocol";

/** Token rows of one merged kernel pass at most. */
export const MAX_PASS_ROWS = 1024;
/** Activation bytes queued in one host at most (JS heap outside the expert budget). */
export const HOST_QUEUE_BYTES = 4 << 20;
/** Longest a pass may take to answer (a cold pass reads its experts from R2 first). */
export const HOST_PASS_DEADLINE_MS = 60_000;
/** Longest a call waits for a free pass slot: well inside the Worker's RPC deadline. */
export const HOST_QUEUE_DEADLINE_MS = 5_000;

export interface HostCall {
  items: ExpertWorkItem[];
  x: Float32Array; // [Σ nTokens, dModel]
}

/** One host's queues, one per (model, layer). */
export class HostBatcher {
  readonly #queues = new Map<string, Coalescer<HostCall, ExpertForwardResult>>();
  /** The store each queue runs its passes on. */
  readonly #storeOf = new WeakMap<Coalescer<HostCall, ExpertForwardResult>, ExpertStore>();
  /** Passes and calls of queues replaced after a reload (stats stay cumulative). */
  readonly #retired = { passes: 0, calls: 0 };

  constructor(private readonly label: string) {}

  /** Runs `call` in the next pass of its layer; answers its own rows, or its own failure. */
  async run(store: ExpertStore, layer: number, call: HostCall): Promise<ExpertForwardResult> {
    const key = `${store.model.id}\u0000${layer}`;
    let q = this.#queues.get(key);
    // A queue runs its passes on the store it was made for: when the model was reloaded (a new
    // upload), new calls get a new queue on the new store and the old one finishes what it holds.
    if (q && this.#storeOf.get(q) !== store) {
      this.#retired.passes += q.batches;
      this.#retired.calls += q.callers;
      q = undefined;
    }
    if (!q) {
      const rowBytes = 4 * store.model.spec.dModel;
      q = new Coalescer<HostCall, ExpertForwardResult>(
        (entries) => runPass(store, layer, entries),
        {
          maxWaitMs: 0,
          maxRows: MAX_PASS_ROWS,
          maxInFlight: 2,
          maxQueuedRows: Math.max(MAX_PASS_ROWS, Math.floor(HOST_QUEUE_BYTES / rowBytes)),
          queueDeadlineMs: HOST_QUEUE_DEADLINE_MS,
          // A timer per call costs a host more than the merge saves (measured): calls merge when
          // they are delivered in one checkpoint or while a pass is busy.
          turn: "microtasks",
          runDeadlineMs: HOST_PASS_DEADLINE_MS,
          // A Durable Object runs every request in its one context: answers go straight to callers.
          handOver: "direct",
        },
        undefined,
        `${this.label} layer ${layer} queue`,
      );
      this.#queues.set(key, q);
      this.#storeOf.set(q, store);
    }
    const rows = call.items.reduce((s, it) => s + it.nTokens, 0);
    try {
      return await q.submit(call, rows);
    } catch (err) {
      if (err instanceof QueueFullError) return { ok: false, code: "overloaded", message: err.message };
      return storeFailure(err);
    }
  }

  /** Passes run and calls served (stats, tests). */
  stats(): { passes: number; calls: number } {
    let { passes, calls } = this.#retired;
    for (const q of this.#queues.values()) {
      passes += q.batches;
      calls += q.callers;
    }
    return { passes, calls };
  }
}

/** One kernel pass per expert over every queued call's rows; split back per call. */
export async function runPass(
  store: ExpertStore,
  layer: number,
  entries: readonly BatchEntry<HostCall>[],
): Promise<BatchResult<ExpertForwardResult>[]> {
  if (entries.length === 1) return [{ ok: true, value: await runOne(store, layer, entries[0].item) }];
  const { dModel } = store.model.spec;
  // Rows of each expert, in call order: [call, row within the call].
  const byExpert = new Map<number, { call: number; row: number }[]>();
  entries.forEach((e, c) => {
    let r = 0;
    for (const it of e.item.items) {
      let list = byExpert.get(it.expert);
      if (!list) byExpert.set(it.expert, (list = []));
      for (let i = 0; i < it.nTokens; i++) list.push({ call: c, row: r++ });
    }
  });
  const items: ExpertWorkItem[] = [];
  const order: { call: number; row: number }[] = [];
  for (const [expert, list] of byExpert) {
    items.push({ expert, nTokens: list.length });
    order.push(...list);
  }
  const x = new Float32Array(order.length * dModel);
  order.forEach(({ call, row }, i) => {
    x.set(entries[call].item.x.subarray(row * dModel, (row + 1) * dModel), i * dModel);
  });
  let y: Float32Array;
  try {
    y = await store.run(layer, items, x);
  } catch {
    // Which call's expert failed is not known: each call alone, so the failure stays with its owner.
    return Promise.all(entries.map(async (e) => ({ ok: true as const, value: await runOne(store, layer, e.item) })));
  }
  const outs = entries.map((e) => new Float32Array(e.item.x.length));
  order.forEach(({ call, row }, i) => {
    outs[call].set(y.subarray(i * dModel, (i + 1) * dModel), row * dModel);
  });
  return outs.map((out) => ({ ok: true, value: { ok: true, y: out } }));
}

async function runOne(store: ExpertStore, layer: number, call: HostCall): Promise<ExpertForwardResult> {
  try {
    return { ok: true, y: await store.run(layer, call.items, call.x) };
  } catch (err) {
    return storeFailure(err);
  }
}
