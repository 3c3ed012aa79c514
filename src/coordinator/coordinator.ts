/**
 * @module Coordinator: one Durable Object per model. Owns the placement table (versioned, in DO
 * SQLite), the smoothed per-expert load (EMA windows, in SQLite, so a restart keeps them), and
 * the alarm-driven re-plan loop. Every change is make-before-break: a new replica loads its
 * weights and reports ready before any version routes traffic to it; a removed replica is first
 * published away, drained, and only then unloaded.
 */
import { DurableObject } from "cloudflare:workers";
import { modelLayer, type Placement, type PlacementOp, type Replica } from "./placement";
import { initialPlacement, expertsByInstance, type PlacementInit } from "./initial-placement";
import { createLoadWindow, decayIdle, foldWindow, forecastLoads, fromRows, loadVariance, toRows, type LoadWindowRows, type LoadWindowState } from "./load-window";
import { applyOps, drainPlacement, planPlacement, balanceRatios, type PlanResult } from "./planner";
import { releaseIdle, sharesAfter } from "./replan";
import { hostName, type ExpertRef } from "../experts/protocol";
import type { LoadReport } from "../experts/expert-client";
import { PLACEMENT_CHECK_MS } from "../experts/placement-timing";
import type { PipelinePlacement } from "./pipeline-placement";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (id INTEGER PRIMARY KEY, name TEXT NOT NULL, budget_bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (
  layer INTEGER NOT NULL, expert INTEGER NOT NULL, instance INTEGER NOT NULL, share REAL NOT NULL,
  PRIMARY KEY (layer, expert, instance)
);
CREATE TABLE IF NOT EXISTS placement_log (version INTEGER PRIMARY KEY, created_at INTEGER NOT NULL, summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS expert_load (layer INTEGER NOT NULL, expert INTEGER NOT NULL, rate REAL NOT NULL, variance REAL NOT NULL, trend REAL NOT NULL, PRIMARY KEY (layer, expert));
CREATE TABLE IF NOT EXISTS instance_load (instance INTEGER PRIMARY KEY, rate REAL NOT NULL);
`;

/** Pipeline placement tables (see "pipeline placement" below). */
const PIPELINE_SCHEMA = `
CREATE TABLE IF NOT EXISTS pipeline_versions (version INTEGER PRIMARY KEY, key TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pipeline_stages (
  version INTEGER NOT NULL, stage INTEGER NOT NULL, name TEXT NOT NULL,
  first_layer INTEGER NOT NULL, end_layer INTEGER NOT NULL, bytes INTEGER NOT NULL,
  PRIMARY KEY (version, stage)
);
`;

/** What one re-plan did (admin routes and tests read it). */
export interface ReplanReport {
  trigger: "alarm" | "admin";
  at: number;
  fromVersion: number;
  toVersion: number;
  reason: PlanResult["reason"] | "no-load" | "busy" | "released-idle";
  ops: PlacementOp[];
  failedLoads: string[];
  predicted: { before: number; after: number } | null;
  windowTokens: number;
}

export interface CoordinatorStatus {
  placement: Placement | null;
  /** [layer][expert] smoothed tokens per window. */
  loads: number[][];
  windowMs: number;
  windows: number;
  /** Per layer: max/mean instance load of the current placement under the smoothed loads. */
  balance: number[];
  lastReplans: ReplanReport[];
  /** When this instance of the Coordinator started (changes on a restart). */
  startedAt: number;
}

interface ReplanConfig {
  windowMs: number;
  maxCopies: number;
  threshold: number;
  maxInstances: number;
}

function intVar(raw: string | undefined, fallback: number, min: number): number {
  const v = raw === undefined || raw === "" ? fallback : Number(raw);
  return Number.isFinite(v) && v >= min ? v : fallback;
}

export class Coordinator extends DurableObject<Env> {
  #placement: Placement | null = null;
  #creating: Promise<Placement> | null = null;
  #window: LoadWindowState | null = null;
  #counts: number[] = [];
  #instanceCounts: number[] = [];
  #countedTokens = 0;
  #windowStart = Date.now();
  #replanning: Promise<ReplanReport> | null = null;
  #reports: ReplanReport[] = [];
  readonly #startedAt = Date.now() + Math.random() / 1000; // unique per instance even within one ms

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    ctx.blockConcurrencyWhile(async () => {
      ctx.storage.sql.exec(SCHEMA);
      this.#placement = this.#readPlacement();
      this.#window = this.#readWindow();
    });
  }

  // ── placement ─────────────────────────────────────────────────────────────────────────────

  /** The current placement, creating (and loading) the first one if there is none yet. */
  async ensurePlacement(init: PlacementInit): Promise<Placement> {
    if (this.#placement) {
      // Placements written before the Coordinator stored expert sizes learn them here.
      if (this.#meta("expertBytes") === null) this.ctx.storage.sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('expertBytes', ?)", String(init.expertBytes));
      return this.#placement;
    }
    this.#creating ??= this.#create(init).finally(() => (this.#creating = null));
    return this.#creating;
  }

  async getPlacement(): Promise<Placement | null> {
    return this.#placement;
  }

  async placementVersion(): Promise<number> {
    return this.#placement?.version ?? 0;
  }

  async #create(init: PlacementInit): Promise<Placement> {
    const spare = Number(this.env.SPARE_SLOT_FRACTION ?? "0");
    const placement = initialPlacement({ ...init, spareFraction: Number.isFinite(spare) ? spare : 0 });
    // Make before break: every instance loads its experts before the placement is published.
    const perInstance = expertsByInstance(placement);
    const results = await Promise.all(
      placement.instances.map((inst) => this.env.EXPERT_HOST.getByName(inst.name).load(init.model, perInstance[inst.id], inst.name)),
    );
    results.forEach((r, i) => {
      if (!r.ok) throw new Error(`ExpertHost ${placement.instances[i].name} could not load its experts: ${r.message}`);
    });
    this.ctx.storage.sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('expertBytes', ?)", String(init.expertBytes));
    this.#publish(placement, `initial: ${placement.instances.length} instances`);
    return placement;
  }

  // ── load telemetry ────────────────────────────────────────────────────────────────────────

  /** Batched routed-token counts from a Worker isolate. Starts the re-plan alarm if it is idle. */
  async reportLoad(r: LoadReport): Promise<void> {
    const p = this.#placement;
    if (!p || r.model !== p.model || r.nLayers !== p.nLayers || r.nExperts !== p.nExperts || r.counts.length !== p.nLayers * p.nExperts) return;
    if (this.#counts.length !== r.counts.length) this.#counts = new Array(r.counts.length).fill(0);
    for (let i = 0; i < r.counts.length; i++) {
      const c = r.counts[i];
      if (Number.isFinite(c) && c > 0) {
        this.#counts[i] += c;
        this.#countedTokens += c;
      }
    }
    for (const [inst, rows] of Object.entries(r.instanceRows)) {
      const i = Number(inst);
      if (Number.isInteger(i) && i >= 0 && i < 4096 && Number.isFinite(rows)) this.#instanceCounts[i] = (this.#instanceCounts[i] ?? 0) + rows;
    }
    if ((await this.ctx.storage.getAlarm()) === null) await this.ctx.storage.setAlarm(Date.now() + this.#config().windowMs);
  }

  override async alarm(): Promise<void> {
    const report = await this.replan("alarm");
    if (this.#active()) await this.ctx.storage.setAlarm(Date.now() + this.#config().windowMs);
    if (report.reason === "busy") await this.ctx.storage.setAlarm(Date.now() + 100);
  }

  // ── re-plan ───────────────────────────────────────────────────────────────────────────────

  /** Folds the window counted so far into the EMA loads, plans, and applies the plan. */
  async replan(trigger: ReplanReport["trigger"]): Promise<ReplanReport> {
    if (this.#replanning) {
      const p = this.#placement;
      return { trigger, at: Date.now(), fromVersion: p?.version ?? 0, toVersion: p?.version ?? 0, reason: "busy", ops: [], failedLoads: [], predicted: null, windowTokens: 0 };
    }
    this.#replanning = this.#replanOnce(trigger).finally(() => (this.#replanning = null));
    const report = await this.#replanning;
    this.#reports = [...this.#reports.slice(-19), report];
    return report;
  }

  async status(): Promise<CoordinatorStatus> {
    const p = this.#placement;
    const loads = this.#window ? forecastLoads(this.#window) : [];
    return {
      placement: p,
      loads,
      windowMs: this.#config().windowMs,
      windows: this.#window?.windows ?? 0,
      balance: p && loads.length ? balanceRatios(p, loads) : [],
      lastReplans: this.#reports,
      startedAt: this.#startedAt,
    };
  }

  async #replanOnce(trigger: ReplanReport["trigger"]): Promise<ReplanReport> {
    const cfg = this.#config();
    const live = this.#placement;
    const at = Date.now();
    if (!live) return { trigger, at, fromVersion: 0, toVersion: 0, reason: "no-load", ops: [], failedLoads: [], predicted: null, windowTokens: 0 };

    // 1. Fold the counted window into the EMA (or decay it when nothing was counted).
    const windows = Math.max(1, (at - this.#windowStart) / cfg.windowMs);
    const counted = this.#countedTokens;
    let w = this.#window && this.#window.nLayers === live.nLayers && this.#window.nExperts === live.nExperts ? this.#window : createLoadWindow(live.nLayers, live.nExperts);
    if (counted > 0) {
      const expertCounts = Array.from({ length: live.nLayers }, (_, l) => this.#counts.slice(l * live.nExperts, (l + 1) * live.nExperts));
      w = foldWindow(w, { expertCounts, instanceCounts: this.#instanceCounts.map((x) => x ?? 0), windows });
    } else {
      w = decayIdle(w, windows);
    }
    this.#counts = new Array(live.nLayers * live.nExperts).fill(0);
    this.#instanceCounts = [];
    this.#countedTokens = 0;
    this.#windowStart = at;
    this.#window = w;
    this.#writeWindow(w);

    // 2. Plan from the live placement when this window carried traffic (an idle window only decays
    //    the loads: no copies are spent on a forecast nobody is sending); release idle replicas.
    const loads = forecastLoads(w);
    const expertBytes = Number(this.#meta("expertBytes") ?? "0");
    if (!(expertBytes > 0)) {
      return { trigger, at, fromVersion: live.version, toVersion: live.version, reason: "no-load", ops: [], failedLoads: [], predicted: null, windowTokens: counted };
    }
    const plan = planPlacement({
      placement: live,
      loads,
      loadVariance: loadVariance(w),
      expertBytes,
      maxCopies: counted > 0 ? cfg.maxCopies : 0,
      threshold: cfg.threshold,
      maxInstances: Math.max(live.instances.length, cfg.maxInstances),
    });
    let ops = plan.ops;
    let shares: Replica[][][] | null = plan.shares;
    let reason: ReplanReport["reason"] = plan.reason;
    if (ops.length === 0) {
      const idle = releaseIdle(live, loads, IDLE_FRACTION);
      if (idle.length > 0) {
        ops = idle;
        shares = null;
        reason = "released-idle";
      }
    }
    const base = { trigger, at, fromVersion: live.version, windowTokens: counted, predicted: { before: plan.predicted.before, after: plan.predicted.after } };
    if (ops.length === 0) {
      // Shares alone are free to change; publish them only when they moved noticeably.
      if (sharesMoved(live.replicas, plan.shares)) {
        const next = { ...live, version: live.version + 1, replicas: plan.shares };
        this.#publish(next, `shares re-balanced (max/mean ${plan.predicted.before.toFixed(3)} → ${plan.predicted.sharesOnly.toFixed(3)})`);
        return { ...base, toVersion: next.version, reason, ops: [], failedLoads: [] };
      }
      return { ...base, toVersion: live.version, reason, ops: [], failedLoads: [] };
    }
    const { placement, failedLoads, applied } = await this.#execute(live, ops, shares);
    return { ...base, toVersion: placement.version, reason, ops: applied, failedLoads };
  }

  /** Make-before-break execution of a diff: drain and unload removals, load additions, publish. */
  async #execute(live: Placement, ops: PlacementOp[], shares: Replica[][][] | null): Promise<{ placement: Placement; failedLoads: string[]; applied: PlacementOp[] }> {
    const model = live.model;
    let current = live;
    const removes = ops.filter((o): o is Extract<PlacementOp, { op: "remove-replica" }> => o.op === "remove-replica");
    if (removes.length > 0) {
      // Publish the table without the removed replicas, wait until every Worker has seen it and
      // in-flight calls have finished, then free the memory.
      const drained = drainPlacement(current, ops);
      current = { ...drained, version: current.version + 1 };
      this.#publish(current, `drain ${removes.length} replica(s)`);
      await new Promise((r) => setTimeout(r, DRAIN_MS));
      const byInstance = groupByInstance(current, removes);
      await Promise.all([...byInstance].map(([i, refs]) => this.env.EXPERT_HOST.getByName(current.instances[i].name).unload(model, refs).catch(() => null)));
    }
    // New instances get names now; the planner numbers them after the existing ones.
    const instances = current.instances.slice();
    const budget = Math.max(...instances.map((i) => i.budgetBytes));
    for (const op of ops) if (op.op === "add-instance") instances.push({ id: instances.length, name: hostName(model, instances.length), budgetBytes: budget });
    const adds = ops.filter((o): o is Extract<PlacementOp, { op: "add-replica" }> => o.op === "add-replica");
    const failed = new Set<string>();
    const failedLoads: string[] = [];
    await Promise.all(
      [...groupByInstance(current, adds)].map(async ([i, refs]) => {
        const inst = instances[i];
        let message = "";
        try {
          const r = await this.env.EXPERT_HOST.getByName(inst.name).load(model, refs, inst.name);
          if (r.ok) return;
          message = r.message;
        } catch (err) {
          message = err instanceof Error ? err.message : String(err);
        }
        for (const o of adds) if (o.instance === i) failed.add(`${o.layer}:${o.expert}:${i}`);
        failedLoads.push(`${inst.name}: ${message}`);
      }),
    );
    const applied = ops.filter((o) => o.op !== "add-replica" || !failed.has(`${o.layer}:${o.expert}:${o.instance}`));
    const base = { ...live, instances: live.instances };
    const finalShares = sharesAfter(base, applied, shares);
    const next = applyOps(base, applied, finalShares, { newInstance: (id) => instances[id] });
    const placement = { ...next, version: current.version + 1 };
    const summary = applied.map((o) => (o.op === "add-instance" ? "+instance" : `${o.op === "add-replica" ? "+" : "-"}${o.layer}:${o.expert}@${o.instance}`)).join(" ");
    this.#publish(placement, summary || "no change");
    return { placement, failedLoads, applied };
  }

  #active(): boolean {
    const w = this.#window;
    const p = this.#placement;
    if (this.#countedTokens > 0) return true;
    if (w && w.expert.some((row) => row.some((v) => v > 0))) return true;
    return !!p && p.replicas.some((row) => row.some((reps) => reps.length > 1));
  }

  #config(): ReplanConfig {
    const e = this.env;
    return {
      windowMs: intVar(e.REPLAN_INTERVAL_MS, 2000, 100),
      maxCopies: intVar(e.MAX_COPIES_PER_REPLAN, 4, 0),
      threshold: Number(e.REPLAN_THRESHOLD ?? "0.1") || 0.1,
      maxInstances: intVar(e.MAX_EXPERT_HOSTS, 8, 1),
    };
  }

  // ── pipeline placement (v1): where the dense layers run, beside the expert placement ──────
  // Own tables, created on first use; the Worker computes the plan from the budgets
  // (pipeline-placement.ts, pure) and the Coordinator makes it the model's one published version:
  // the first plan for a given set of inputs wins, different inputs publish version + 1.

  /** The published pipeline placement for `plan`'s inputs, publishing `plan` if there is none. */
  async ensurePipeline(plan: PipelinePlacement): Promise<PipelinePlacement> {
    const sql = this.ctx.storage.sql;
    sql.exec(PIPELINE_SCHEMA);
    const live = this.#readPipeline();
    if (live && live.key === plan.key) return live;
    const next: PipelinePlacement = { ...plan, version: (live?.version ?? 0) + 1 };
    this.ctx.storage.transactionSync(() => {
      sql.exec("INSERT INTO pipeline_versions (version, key, created_at) VALUES (?, ?, ?)", next.version, next.key, Date.now());
      next.stages.forEach((st, i) =>
        sql.exec("INSERT INTO pipeline_stages (version, stage, name, first_layer, end_layer, bytes) VALUES (?, ?, ?, ?, ?, ?)", next.version, i, st.name, st.first, st.end, st.bytes),
      );
    });
    return next;
  }

  /** The published pipeline placement (null before any). */
  async getPipeline(): Promise<PipelinePlacement | null> {
    this.ctx.storage.sql.exec(PIPELINE_SCHEMA);
    return this.#readPipeline();
  }

  #readPipeline(): PipelinePlacement | null {
    const sql = this.ctx.storage.sql;
    const v = sql.exec<{ version: number; key: string }>("SELECT version, key FROM pipeline_versions ORDER BY version DESC LIMIT 1").toArray()[0];
    if (!v) return null;
    const rows = sql.exec<{ name: string; first_layer: number; end_layer: number; bytes: number }>(
      "SELECT name, first_layer, end_layer, bytes FROM pipeline_stages WHERE version = ? ORDER BY stage",
      v.version,
    );
    const stages = rows.toArray().map((r) => ({ name: r.name, first: r.first_layer, end: r.end_layer, bytes: r.bytes }));
    const model = this.#placement?.model ?? this.ctx.id.name ?? "";
    return { model, version: v.version, key: v.key, stages };
  }

  // ── storage ───────────────────────────────────────────────────────────────────────────────

  #publish(p: Placement, summary: string): void {
    const sql = this.ctx.storage.sql;
    this.ctx.storage.transactionSync(() => {
      sql.exec("DELETE FROM instances");
      sql.exec("DELETE FROM replicas");
      for (const inst of p.instances) sql.exec("INSERT INTO instances (id, name, budget_bytes) VALUES (?, ?, ?)", inst.id, inst.name, inst.budgetBytes);
      p.replicas.forEach((row, layer) =>
        row.forEach((reps, expert) =>
          reps.forEach((r) => sql.exec("INSERT INTO replicas (layer, expert, instance, share) VALUES (?, ?, ?, ?)", layer, expert, r.instance, r.share)),
        ),
      );
      const meta = { model: p.model, version: p.version, nLayers: p.nLayers, nExperts: p.nExperts, layers: JSON.stringify(p.layers ?? null) };
      for (const [k, v] of Object.entries(meta)) sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", k, String(v));
      sql.exec("INSERT OR REPLACE INTO placement_log (version, created_at, summary) VALUES (?, ?, ?)", p.version, Date.now(), summary);
    });
    this.#placement = p;
  }

  #meta(key: string): string | null {
    const row = this.ctx.storage.sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = ?", key).toArray()[0];
    return row?.value ?? null;
  }

  #readPlacement(): Placement | null {
    const sql = this.ctx.storage.sql;
    const meta = new Map(sql.exec<{ key: string; value: string }>("SELECT key, value FROM meta").toArray().map((r) => [r.key, r.value]));
    if (!meta.has("version")) return null;
    const nLayers = Number(meta.get("nLayers"));
    const nExperts = Number(meta.get("nExperts"));
    const instances = sql
      .exec<{ id: number; name: string; budget_bytes: number }>("SELECT id, name, budget_bytes FROM instances ORDER BY id")
      .toArray()
      .map((r) => ({ id: r.id, name: r.name, budgetBytes: r.budget_bytes }));
    const replicas: Replica[][][] = Array.from({ length: nLayers }, () => Array.from({ length: nExperts }, () => [] as Replica[]));
    for (const r of sql.exec<{ layer: number; expert: number; instance: number; share: number }>(
      "SELECT layer, expert, instance, share FROM replicas ORDER BY layer, expert, instance",
    )) {
      replicas[r.layer][r.expert].push({ instance: r.instance, share: r.share });
    }
    const layers = JSON.parse(meta.get("layers") ?? "null") as number[] | null;
    return { model: meta.get("model")!, version: Number(meta.get("version")), nLayers, nExperts, ...(layers ? { layers } : {}), instances, replicas };
  }

  #writeWindow(w: LoadWindowState): void {
    const rows = toRows(w);
    const sql = this.ctx.storage.sql;
    this.ctx.storage.transactionSync(() => {
      sql.exec("DELETE FROM expert_load");
      sql.exec("DELETE FROM instance_load");
      for (const r of rows.experts) sql.exec("INSERT INTO expert_load (layer, expert, rate, variance, trend) VALUES (?, ?, ?, ?, ?)", r.layer, r.expert, r.rate, r.variance, r.trend);
      for (const r of rows.instances) sql.exec("INSERT INTO instance_load (instance, rate) VALUES (?, ?)", r.instance, r.rate);
      sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('loadWindow', ?)", JSON.stringify(rows.meta));
    });
  }

  #readWindow(): LoadWindowState | null {
    const metaJson = this.#meta("loadWindow");
    if (!metaJson) return null;
    const sql = this.ctx.storage.sql;
    const rows: LoadWindowRows = {
      meta: JSON.parse(metaJson) as LoadWindowRows["meta"],
      experts: sql.exec<{ layer: number; expert: number; rate: number; variance: number; trend: number }>("SELECT layer, expert, rate, variance, trend FROM expert_load").toArray(),
      instances: sql.exec<{ instance: number; rate: number }>("SELECT instance, rate FROM instance_load").toArray(),
    };
    try {
      return fromRows(rows);
    } catch {
      return null; // incompatible rows (e.g. written by an older build): start the EMA afresh
    }
  }
}

/** An expert below this fraction of its layer's mean load (or 0.5 tokens/window) is idle. */
const IDLE_FRACTION = 0.02;

/** Workers re-check the placement version every PLACEMENT_CHECK_MS; wait that twice plus a margin. */
const DRAIN_MS = 2 * PLACEMENT_CHECK_MS + 500;

/** Ops (placement rows) grouped by instance, as ExpertHost refs (model layers). */
function groupByInstance(p: Placement, ops: { layer: number; expert: number; instance: number }[]): Map<number, ExpertRef[]> {
  const m = new Map<number, ExpertRef[]>();
  for (const o of ops) {
    let list = m.get(o.instance);
    if (!list) m.set(o.instance, (list = []));
    list.push({ layer: modelLayer(p, o.layer), expert: o.expert });
  }
  return m;
}

function sharesMoved(a: readonly (readonly (readonly Replica[])[])[], b: readonly (readonly (readonly Replica[])[])[]): boolean {
  for (let l = 0; l < a.length; l++)
    for (let e = 0; e < a[l].length; e++)
      for (const r of a[l][e]) {
        const o = b[l]?.[e]?.find((x) => x.instance === r.instance);
        if (!o || Math.abs(o.share - r.share) > 0.05) return true;
      }
  return false;
}
