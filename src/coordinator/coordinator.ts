/**
 * @module Coordinator: one Durable Object per model. Owns the placement table (versioned, in DO
 * SQLite), the smoothed per-expert load (EMA windows, in SQLite, so a restart keeps them), and
 * the alarm-driven re-plan loop. Every change is make-before-break: a new replica loads its
 * weights and reports ready before any version routes traffic to it; a removed replica is first
 * published away, drained, and only then unloaded. After a restart or a failed change, a reconcile
 * step tells every ExpertHost what the placement assigns it, and it unloads the rest.
 *
 * Sections: placement (creation, reads), load telemetry, re-plan (the policy is replan.ts), execution
 * (make-before-break, execute.ts), reconcile (reconcile.ts), helpers. Storage is storage.ts.
 */
import { Flight, shareWork } from "../platform/shared-work";
import { withDeadline } from "../platform/deadline";
import { DurableObject } from "cloudflare:workers";
import { balanceRatios, type Placement, type PlacementOp, type Replica } from "./placement";
import { initialPlacement, expertsByInstance, type PlacementInit } from "./initial-placement";
import { forecastLoads, type LoadWindowState } from "./load-window";
import { createReplanWindow, foldReplanWindow, replanConfigFromEnv, replanStep, type ReplanConfig } from "./replan";
import { executeMoves, executePlan, type Executed, type ExecuteTarget } from "./execute";
import { planConsolidation } from "./planner";
import { reconcileHosts, type ReconcileReport, type ReconcileTarget } from "./reconcile";
import { CoordinatorStore } from "./storage";
import { LoadIntake } from "./load-intake";
import type { LoadReport } from "../experts/protocol";
import { PLACEMENT_CHECK_MS } from "../experts/placement-timing";
import type { PipelinePlacement } from "./pipeline-placement";
import { countersFrom, noReport, type ReplanCounters, type ReplanReport } from "./replan-report";

export type { ReplanCounters, ReplanReport } from "./replan-report";

export interface CoordinatorStatus {
  placement: Placement | null;
  /** [layer][expert] smoothed tokens per window. */
  loads: number[][];
  windowMs: number;
  windows: number;
  /** Per layer: max/mean instance load of the current placement under the smoothed loads. */
  balance: number[];
  lastReplans: ReplanReport[];
  lastReconcile: ReconcileReport | null;
  /** When this instance of the Coordinator started (changes on a restart). */
  startedAt: number;
  /**
   * When the re-plan or reconcile running now began (null: none runs). A turn that finds one
   * running answers "busy" and retries 100 ms later; a value far in the past is a stuck turn
   * (a host call that never returns), which the placement alone would show as a stopped loop.
   */
  busySince: number | null;
  counters: ReplanCounters;
}

/** Workers re-check the placement version every PLACEMENT_CHECK_MS; wait that twice plus a margin. */
const DRAIN_MS = 2 * PLACEMENT_CHECK_MS + 500;
/**
 * Reconcile this long after a start: a drain the previous instance left half-done has then run
 * its course (Workers have seen the drained version), so unloading cannot race its stragglers.
 */
const RECONCILE_DELAY_MS = DRAIN_MS;
/** meta key holding the fresh placement's instance count (the experts' homes; consolidation). */
const HOME_KEY = "homeInstances";
/** meta key holding when an owed reconcile is due (survives a restart). */
const RECONCILE_KEY = "reconcilePending";

export class Coordinator extends DurableObject<Env> {
  readonly #store: CoordinatorStore;
  readonly #config: ReplanConfig;
  #placement: Placement | null = null;
  /** The first placement being made, shared by calls arriving meanwhile (src/platform/shared-work.ts). */
  #creating: Flight<Placement> | null = null;
  #window: LoadWindowState | null = null;
  #intake = new LoadIntake();
  #windowStart = Date.now();
  /** A re-plan or reconcile in progress: they never overlap (a reconcile would unload new loads). */
  #busy: Promise<unknown> | null = null;
  /** When #busy began (status). */
  #busySince: number | null = null;
  #reports: ReplanReport[] = [];
  /** Re-plans in a row that changed no replica set (replan.ts waits on it before consolidating). */
  #stableWindows = 0;
  #lastReconcile: ReconcileReport | null = null;
  readonly #startedAt = Date.now() + Math.random() / 1000; // unique per instance even within one ms

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.#config = replanConfigFromEnv(env);
    this.#store = new CoordinatorStore(ctx.storage.sql, (fn) => ctx.storage.transactionSync(fn));
    ctx.blockConcurrencyWhile(async () => {
      this.#store.migrate();
      this.#placement = this.#store.readPlacement();
      this.#window = this.#store.readWindow();
      // A restart may have cut a make-before-break short: reconcile the hosts soon after.
      if (this.#placement) await this.#oweReconcile(RECONCILE_DELAY_MS);
    });
  }

  // ── placement ─────────────────────────────────────────────────────────────────────────────

  /** The current placement, creating (and loading) the first one if there is none yet. */
  async ensurePlacement(init: PlacementInit): Promise<Placement> {
    if (this.#placement) {
      // Placements written before the Coordinator stored expert sizes learn them here.
      if (this.#store.meta("expertBytes") === null) this.#store.setMeta("expertBytes", String(init.expertBytes));
      if (this.#store.meta(HOME_KEY) === null)
        this.#store.setMeta(HOME_KEY, String(this.#fresh(init).instances.length));
      return this.#placement;
    }
    return shareWork(
      () => this.#creating,
      () => {
        const f: Flight<Placement> = new Flight(() =>
          this.#create(init).finally(() => {
            if (this.#creating === f) this.#creating = null;
          }),
        );
        this.#creating = f;
        return f;
      },
    );
  }

  async getPlacement(): Promise<Placement | null> {
    return this.#placement;
  }

  async placementVersion(): Promise<number> {
    return this.#placement?.version ?? 0;
  }

  /** The fresh placement `init` gives under this deployment's spare fraction. */
  #fresh(init: PlacementInit): Placement {
    return initialPlacement({ ...init, spareFraction: this.#config.spareSlotFraction });
  }

  async #create(init: PlacementInit): Promise<Placement> {
    const placement = this.#fresh(init);
    // Make before break: every instance loads its experts before the placement is published.
    const perInstance = expertsByInstance(placement);
    const results = await Promise.all(
      placement.instances.map((inst) => this.#host(inst.name).load(init.model, perInstance[inst.id], inst.name)),
    );
    results.forEach((r, i) => {
      if (!r.ok) throw new Error(`ExpertHost ${placement.instances[i].name} could not load its experts: ${r.message}`);
    });
    this.#store.setMeta("expertBytes", String(init.expertBytes));
    this.#store.setMeta(HOME_KEY, String(placement.instances.length));
    this.#publish(placement, `initial: ${placement.instances.length} instances`);
    return placement;
  }

  // ── load telemetry ────────────────────────────────────────────────────────────────────────

  /**
   * Batched routed-token counts from a Worker isolate (load-intake.ts: rows routed under another
   * placement version are dropped). Starts the re-plan alarm if it is idle. Answers the live
   * placement version, so an isolate routing with an older one re-checks at once.
   */
  async reportLoad(r: LoadReport): Promise<number> {
    const p = this.#placement;
    if (!p) return 0;
    const stale = this.#intake.staleReports;
    if (!this.#intake.add(p, r)) return p.version;
    if (this.#intake.staleReports > stale) this.#store.addCounters(new Map([["staleReports", 1]]));
    if ((await this.ctx.storage.getAlarm()) === null)
      await this.ctx.storage.setAlarm(Date.now() + this.#config.windowMs);
    return p.version;
  }

  /**
   * One turn of the re-plan loop; it re-arms itself whatever happens in it (the runtime retries a
   * throwing handler only a few times, and after a burst no load report would arm it again).
   */
  override async alarm(): Promise<void> {
    let next: number | null = Date.now() + this.#config.windowMs;
    try {
      next = await this.#alarmTurn();
    } catch (err) {
      console.error(`Coordinator alarm failed, retrying next window: ${err instanceof Error ? err.message : err}`);
    }
    const owed = this.#reconcileDue(); // a failed change during the re-plan may have owed one
    if (owed !== null) next = next === null ? owed : Math.min(next, owed);
    if (next !== null) await this.ctx.storage.setAlarm(next);
  }

  /** An owed reconcile when due, then the re-plan; when the loop should run next (null: idle). */
  async #alarmTurn(): Promise<number | null> {
    const due = this.#reconcileDue();
    if (due !== null && Date.now() >= due) {
      if (this.#busy) {
        this.#store.addCounters(new Map([["busyTurns", 1]]));
        return Date.now() + 100;
      }
      // Owed (restart or failed change). A failed one is retried a window later and the re-plan
      // runs anyway: a host that never answers must not freeze the placement.
      const done = await this.reconcile();
      if (done.failed.length > 0) this.#store.setMeta(RECONCILE_KEY, String(Date.now() + this.#config.windowMs));
    }
    const report = await this.replan("alarm");
    if (report.reason === "busy") return Date.now() + 100;
    return this.#active() ? Date.now() + this.#config.windowMs : null;
  }

  // ── re-plan ───────────────────────────────────────────────────────────────────────────────

  /** Folds the window counted so far into the EMA loads, plans, and applies the plan. */
  async replan(trigger: ReplanReport["trigger"]): Promise<ReplanReport> {
    if (this.#busy) {
      const v = this.#placement?.version ?? 0;
      // Counted apart from the re-plans (a long turn retried every 100 ms would swamp them), not listed.
      this.#store.addCounters(new Map([["busyTurns", 1]]));
      return { ...noReport(trigger, v), reason: "busy" };
    }
    const running = this.#replanOnce(trigger);
    this.#busy = this.#track(running);
    const report = await running;
    this.#reports = [...this.#reports.slice(-19), report];
    this.#count(report);
    return report;
  }

  /** `#busy` for a running turn: settles (never rejects) when it ends, and keeps `#busySince`. */
  #track(running: Promise<unknown>): Promise<unknown> {
    this.#busySince = Date.now();
    return running
      .catch(() => null)
      .finally(() => {
        this.#busy = null;
        this.#busySince = null;
      });
  }

  /** Adds a finished re-plan to the SQLite counters. */
  #count(r: ReplanReport): void {
    const d = new Map<string, number>([[`replans|${r.trigger}|${r.reason}`, 1]]);
    for (const op of r.ops) d.set(`ops|${op.op}`, (d.get(`ops|${op.op}`) ?? 0) + 1);
    d.set("loadFailures", r.failedLoads.length);
    d.set("bytesMoved", r.bytesMoved);
    this.#store.addCounters(d);
  }

  async status(): Promise<CoordinatorStatus> {
    const p = this.#placement;
    const loads = this.#window ? forecastLoads(this.#window) : [];
    return {
      placement: p,
      loads,
      windowMs: this.#config.windowMs,
      windows: this.#window?.windows ?? 0,
      balance: p && loads.length ? balanceRatios(p, loads) : [],
      lastReplans: this.#reports,
      lastReconcile: this.#lastReconcile,
      startedAt: this.#startedAt,
      busySince: this.#busySince,
      counters: countersFrom(this.#store.counters()),
    };
  }

  async #replanOnce(trigger: ReplanReport["trigger"]): Promise<ReplanReport> {
    const cfg = this.#config;
    const live = this.#placement;
    const at = Date.now();
    if (!live) return noReport(trigger, 0);

    // Fold the counted window into the EMA (or decay it when nothing was counted).
    const windows = Math.max(1, (at - this.#windowStart) / cfg.windowMs);
    const fits = this.#window && this.#window.nLayers === live.nLayers && this.#window.nExperts === live.nExperts;
    const start = fits && this.#window ? this.#window : createReplanWindow(live, cfg);
    const taken = this.#intake.take(live);
    const counted = taken.tokens;
    const window = foldReplanWindow(start, taken.expertCounts, windows, taken.instanceCounts, taken.calls);
    this.#windowStart = at;
    this.#window = window.state;
    this.#store.writeWindow(window.state);

    const expertBytes = Number(this.#store.meta("expertBytes") ?? "0");
    if (!(expertBytes > 0)) return { ...noReport(trigger, live.version), windowTokens: counted };
    const homeInstances = this.#homeInstances();
    const step = replanStep(
      { placement: live, expertBytes, stableWindows: this.#stableWindows, ...(homeInstances ? { homeInstances } : {}) },
      window,
      cfg,
    );
    this.#stableWindows = step.ops.length === 0 ? this.#stableWindows + 1 : 0;
    const base = {
      trigger,
      at,
      fromVersion: live.version,
      windowTokens: counted,
      reason: step.reason,
      predicted: { before: step.predicted.before, after: step.predicted.after },
      bytesMoved: 0,
      ...(step.latency ? { latency: step.latency } : {}),
    };
    if (step.ops.length === 0) {
      if (!step.shares) return { ...base, toVersion: live.version, ops: [], failedLoads: [] };
      // Shares alone are free to change: publish them without any copy.
      const next = { ...live, version: live.version + 1, replicas: step.shares };
      const { before, sharesOnly } = step.predicted;
      const summary = `shares re-balanced (max/mean ${before.toFixed(3)} → ${sharesOnly.toFixed(3)})`;
      this.#publish(next, summary);
      return { ...base, toVersion: next.version, ops: [], failedLoads: [] };
    }
    let done: Executed;
    try {
      done =
        step.reason === "consolidated"
          ? await executeMoves(live, step.ops, this.#executeDeps())
          : await this.#execute(live, step.ops, step.shares);
    } catch (err) {
      // Hosts may hold copies no published version references: reconcile them soon.
      await this.#oweReconcile(DRAIN_MS);
      throw err;
    }
    if (done.failedLoads.length > 0 || (done.failedUnloads?.length ?? 0) > 0) await this.#oweReconcile(100);
    const bytesMoved = done.applied.filter((o) => o.op === "add-replica").length * expertBytes;
    return { ...base, toVersion: done.placement.version, ops: done.applied, failedLoads: done.failedLoads, bytesMoved };
  }

  // ── make-before-break ─────────────────────────────────────────────────────────────────────

  /** Make-before-break execution of a diff (execute.ts), publishing each version it makes. */
  async #execute(live: Placement, ops: PlacementOp[], shares: Replica[][][] | null): Promise<Executed> {
    return executePlan(live, ops, shares, this.#executeDeps());
  }

  #executeDeps() {
    return {
      host: (name: string) => this.#host(name),
      publish: (p: Placement, summary: string) => this.#publish(p, summary),
      drainMs: DRAIN_MS,
    };
  }

  // ── reconcile ─────────────────────────────────────────────────────────────────────────────

  /** Reconciles every ExpertHost with the placement (reconcile.ts), outside any re-plan. */
  async reconcile(): Promise<ReconcileReport> {
    while (this.#busy) await this.#busy.catch(() => null);
    const running = this.#reconcileOnce();
    const busy = this.#track(running);
    this.#busy = busy;
    await busy; // not busy any more when it returns: the alarm re-plans right after it
    return running;
  }

  async #reconcileOnce(): Promise<ReconcileReport> {
    const p = this.#placement;
    const report = p
      ? await reconcileHosts(p, this.#config.maxInstances, (name) => this.#host(name))
      : { at: Date.now(), version: 0, unloaded: {}, failed: [] };
    if (report.failed.length === 0) this.#store.setMeta(RECONCILE_KEY, null);
    this.#lastReconcile = report;
    return report;
  }

  /** Records that a reconcile is owed within `delayMs` (the earliest owed wins) and sets an alarm for it. */
  async #oweReconcile(delayMs: number): Promise<void> {
    const owed = this.#reconcileDue();
    const due = Math.min(Date.now() + delayMs, owed ?? Infinity);
    this.#store.setMeta(RECONCILE_KEY, String(due));
    const alarm = await this.ctx.storage.getAlarm();
    if (alarm === null || alarm > due) await this.ctx.storage.setAlarm(due);
  }

  /** When the owed reconcile is due (ms since the epoch), or null when none is owed. */
  #reconcileDue(): number | null {
    const v = this.#store.meta(RECONCILE_KEY);
    return v === null ? null : Number(v) || 0;
  }

  // ── helpers ───────────────────────────────────────────────────────────────────────────────

  /**
   * An ExpertHost whose calls have deadlines: a host that never answers must not hold the
   * Coordinator's creation, re-plan or reconcile forever (the callers report a late host as failed).
   */
  #host(name: string): ExecuteTarget & ReconcileTarget {
    const stub = this.env.EXPERT_HOST.getByName(name);
    const what = `ExpertHost ${name}`;
    return {
      load: (model, experts, label) =>
        withDeadline(Promise.resolve(stub.load(model, experts, label)), HOST_LOAD_DEADLINE_MS, what),
      unload: (model, experts) =>
        withDeadline(Promise.resolve(stub.unload(model, experts)), HOST_CALL_DEADLINE_MS, what),
      reconcile: (model, assigned) =>
        withDeadline(Promise.resolve(stub.reconcile(model, assigned)), HOST_CALL_DEADLINE_MS, what),
    };
  }

  #active(): boolean {
    const w = this.#window;
    const p = this.#placement;
    if (this.#intake.tokens > 0) return true;
    if (w?.expert.some((row) => row.some((v) => v > 0))) return true;
    if (!p) return false;
    if (p.replicas.some((row) => row.some((reps) => reps.length > 1))) return true;
    // Lone experts a burst left away from home: keep re-planning until they are moved back.
    const home = this.#homeInstances();
    const expertBytes = Number(this.#store.meta("expertBytes") ?? "0");
    return (
      !!home &&
      expertBytes > 0 &&
      planConsolidation({ placement: p, expertBytes, homeInstances: home, maxCopies: 1 }).length > 0
    );
  }

  /** Instances of the model's fresh placement (its experts' homes), or null when not known yet. */
  #homeInstances(): number | null {
    const v = Number(this.#store.meta(HOME_KEY) ?? "0");
    return v > 0 ? v : null;
  }

  // ── pipeline placement (v1): where the dense layers run, beside the expert placement ──────
  // Own tables (storage.ts migration 3); the Worker computes the plan from the budgets
  // (pipeline-placement.ts, pure) and the Coordinator makes it the model's one published version:
  // the first plan for a given set of inputs wins, different inputs publish version + 1.

  /** The published pipeline placement for `plan`'s inputs, publishing `plan` if there is none. */
  async ensurePipeline(plan: PipelinePlacement): Promise<PipelinePlacement> {
    const live = this.#readPipeline();
    if (live && live.key === plan.key) return live;
    const next: PipelinePlacement = { ...plan, version: (live?.version ?? 0) + 1 };
    this.#store.publishPipeline(next);
    return next;
  }

  /** The published pipeline placement (null before any). */
  async getPipeline(): Promise<PipelinePlacement | null> {
    return this.#readPipeline();
  }

  #readPipeline(): PipelinePlacement | null {
    return this.#store.readPipeline(this.#placement?.model ?? this.ctx.id.name ?? "");
  }

  #publish(p: Placement, summary: string): void {
    this.#store.publish(p, summary);
    this.#placement = p;
  }
}

/** A host's load reads its experts from R2 first; the other host calls only touch memory. */
const HOST_LOAD_DEADLINE_MS = 60_000;
const HOST_CALL_DEADLINE_MS = 10_000;
