/**
 * @module Prometheus text exposition format (version 0.0.4), hand-written. The usual client,
 * prom-client, imports Node built-ins (cluster, perf_hooks, v8) and keeps one process-global
 * registry; a Worker has neither Node nor one process, and our values are merged from many
 * isolates first (`registry.ts`), so all that is needed here is the small renderer.
 */
import type { HistogramSample, Labels } from "./registry";
import type { MetricType } from "./catalog";

export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export interface Sample {
  labels: Labels;
  value: number;
}

/** One metric family: HELP, TYPE and its samples (histograms carry bucket counts instead). */
export type Family =
  | { name: string; help: string; type: "counter" | "gauge"; samples: Sample[] }
  | { name: string; help: string; type: "histogram"; histograms: HistogramSample[] };

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

export function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function labelText(labels: Labels, extra?: [string, string]): string {
  const pairs = Object.entries(labels);
  if (extra) pairs.push(extra);
  if (pairs.length === 0) return "";
  for (const [k] of pairs) if (!LABEL.test(k)) throw new Error(`invalid Prometheus label name "${k}"`);
  return `{${pairs.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`;
}

export function renderFamilies(families: Family[]): string {
  const lines: string[] = [];
  for (const f of families) {
    if (!NAME.test(f.name)) throw new Error(`invalid Prometheus metric name "${f.name}"`);
    lines.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type satisfies MetricType}`);
    if (f.type === "histogram") {
      for (const h of f.histograms) {
        let cumulative = 0;
        h.bounds.forEach((le, i) => {
          cumulative += h.counts[i];
          lines.push(`${f.name}_bucket${labelText(h.labels, ["le", formatValue(le)])} ${cumulative}`);
        });
        lines.push(`${f.name}_bucket${labelText(h.labels, ["le", "+Inf"])} ${h.count}`);
        lines.push(`${f.name}_sum${labelText(h.labels)} ${formatValue(h.sum)}`);
        lines.push(`${f.name}_count${labelText(h.labels)} ${h.count}`);
      }
    } else {
      for (const s of f.samples) lines.push(`${f.name}${labelText(s.labels)} ${formatValue(s.value)}`);
    }
  }
  return `${lines.join("\n")}\n`;
}
