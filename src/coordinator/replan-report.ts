/**
 * @module What a re-plan reports (admin routes, /metrics and tests read it): one re-plan's report,
 * the monotonic counters the Coordinator keeps in SQLite, and the helpers that build both.
 */
import type { PlacementOp } from "./placement";
import type { ReplanDecision } from "./replan";

/** What one re-plan did (admin routes and tests read it). */
export interface ReplanReport {
  trigger: "alarm" | "admin";
  at: number;
  fromVersion: number;
  toVersion: number;
  reason: ReplanDecision["reason"] | "no-load" | "busy";
  ops: PlacementOp[];
  failedLoads: string[];
  predicted: { before: number; after: number } | null;
  windowTokens: number;
  /** Expert weight bytes the applied copies moved. */
  bytesMoved: number;
  /** With the latency model: modelled ms per token over all layers, live and after the plan. */
  latency?: { before: number; after: number };
}

/**
 * Monotonic totals since the model's Coordinator was created, kept in its SQLite (a restart keeps
 * them; /metrics exports them as counters, whatever the number of re-plans between two scrapes).
 */
export interface ReplanCounters {
  replans: { trigger: string; reason: string; count: number }[];
  /** Ops applied, by op (add-replica = a copy). */
  ops: Record<string, number>;
  loadFailures: number;
  bytesMoved: number;
  /** Load reports made under another placement version (their per-instance rows were dropped). */
  staleReports: number;
  /** Re-plan turns that found a re-plan or reconcile still running (and did nothing). */
  busyTurns: number;
}

/** A report of a re-plan that did nothing. */
export function noReport(trigger: ReplanReport["trigger"], version: number): ReplanReport {
  return {
    trigger,
    at: Date.now(),
    fromVersion: version,
    toVersion: version,
    reason: "no-load",
    ops: [],
    failedLoads: [],
    predicted: null,
    windowTokens: 0,
    bytesMoved: 0,
  };
}

/** The store's counter rows ("replans|trigger|reason", "ops|op", …) as `ReplanCounters`. */
export function countersFrom(raw: Record<string, number>): ReplanCounters {
  const c: ReplanCounters = { replans: [], ops: {}, loadFailures: 0, bytesMoved: 0, staleReports: 0, busyTurns: 0 };
  for (const [key, value] of Object.entries(raw)) {
    const [kind, a, b] = key.split("|");
    if (kind === "replans") c.replans.push({ trigger: a ?? "", reason: b ?? "", count: value });
    else if (kind === "ops") c.ops[a ?? ""] = value;
    else if (kind === "loadFailures") c.loadFailures = value;
    else if (kind === "bytesMoved") c.bytesMoved = value;
    else if (kind === "staleReports") c.staleReports = value;
    else if (kind === "busyTurns") c.busyTurns = value;
  }
  return c;
}
