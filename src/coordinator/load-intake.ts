/**
 * @module What the Coordinator takes from Worker load reports between two re-plans (pure): routed
 * (token, expert) counts, layer calls, and rows per instance.
 *
 * A report carries the placement version its rows were routed with. Expert counts and layer calls
 * are the router's choices — the same under any placement — so every report's are kept. Rows per
 * instance are not: under an older version an instance held other replicas, and its rows say
 * nothing about the current table (instance ids are stable, so they would be silently misread).
 * They are dropped from a report made under another version than the live one.
 */
import type { LoadReport } from "../experts/protocol";
import type { Placement } from "./placement";

/** Instance ids past this are not counted (a corrupt or hostile report must not grow the arrays). */
const MAX_INSTANCE_ID = 4096;

export class LoadIntake {
  /** [row × nExperts + expert] routed pairs. */
  counts: number[] = [];
  /** [row] layer calls. */
  calls: number[] = [];
  /** [instance] rows, from reports made under the live version only. */
  instanceRows: number[] = [];
  /** Routed pairs counted since the last `take`. */
  tokens = 0;
  /** Reports whose instance rows were dropped for their version (tests and the admin status read it). */
  staleReports = 0;

  /** Adds a report; returns false (and counts nothing) when it does not fit the placement. */
  add(p: Placement, r: LoadReport): boolean {
    if (r.model !== p.model || r.nLayers !== p.nLayers || r.nExperts !== p.nExperts) return false;
    if (!Array.isArray(r.counts) || r.counts.length !== p.nLayers * p.nExperts) return false;
    if (this.counts.length !== r.counts.length) this.counts = new Array(r.counts.length).fill(0);
    for (let i = 0; i < r.counts.length; i++) {
      const c = r.counts[i];
      if (Number.isFinite(c) && c > 0) {
        this.counts[i] += c;
        this.tokens += c;
      }
    }
    if (Array.isArray(r.calls) && r.calls.length === p.nLayers) {
      for (let l = 0; l < p.nLayers; l++) {
        const c = r.calls[l];
        if (Number.isFinite(c) && c > 0) this.calls[l] = (this.calls[l] ?? 0) + c;
      }
    }
    if (r.version !== p.version) {
      this.staleReports++;
      return true;
    }
    for (const [inst, rows] of Object.entries(r.instanceRows ?? {})) {
      const i = Number(inst);
      if (Number.isInteger(i) && i >= 0 && i < MAX_INSTANCE_ID && Number.isFinite(rows) && rows > 0) {
        this.instanceRows[i] = (this.instanceRows[i] ?? 0) + rows;
      }
    }
    return true;
  }

  /** The counts gathered since the last take, shaped for `foldReplanWindow`, and a fresh start. */
  take(p: Placement): {
    expertCounts: number[][];
    calls: number[] | undefined;
    instanceCounts: number[];
    tokens: number;
  } {
    const expertCounts = Array.from({ length: p.nLayers }, (_, l) =>
      Array.from({ length: p.nExperts }, (_, e) => this.counts[l * p.nExperts + e] ?? 0),
    );
    const calls = this.calls.length > 0 ? Array.from({ length: p.nLayers }, (_, l) => this.calls[l] ?? 0) : undefined;
    const instanceCounts = Array.from(this.instanceRows, (x) => x ?? 0);
    const tokens = this.tokens;
    this.counts = new Array(p.nLayers * p.nExperts).fill(0);
    this.calls = [];
    this.instanceRows = [];
    this.tokens = 0;
    return { expertCounts, calls, instanceCounts, tokens };
  }
}
