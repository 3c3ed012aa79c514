/**
 * Peak memory per instance from `/admin/hosts` (the Worker isolate answering, every StageHost,
 * session driver, HeadHost and ExpertHost of a model), each checked against its budget and the
 * 128 MB a production isolate has. Shared by `npm run bench:load -- --memory` and the tests.
 */

/** A production isolate's memory (128 MB), which every instance's Wasm memory must stay under. */
export const ISOLATE_BYTES = 128 * 1000 * 1000;

interface Peak {
  bytesHeldPeak: number;
  wasmMemoryPeakBytes: number;
}

interface RuntimeMemory {
  weightBytes: number;
  weightBudgetBytes: number;
  kvBytesPeak: number;
  kvBudgetBytes: number;
  wasmLimitBytes: number;
  peak: Peak;
}

/** The fields of an `/admin/hosts` answer this reads. */
export interface AdminHosts {
  hosts: { name: string; budgetBytes: number; peak: Peak }[];
  stages: { name: string; budgetBytes: number; kvBudgetBytes: number; peak: Peak }[];
  heads: { name: string; budgetBytes: number; peak: Peak }[];
  drivers?: { name: string; driver: RuntimeMemory | null }[];
  worker?: RuntimeMemory;
}

export interface InstanceMemory {
  kind: "worker" | "stage" | "driver" | "head" | "expert";
  name: string;
  /** Most budgeted bytes held at once: weights, plus KV caches for the Worker and stages. */
  bytesHeldPeak: number;
  /** What its budget vars allow those bytes. */
  budgetBytes: number;
  wasmMemoryPeakBytes: number;
  withinBudget: boolean;
  /** Wasm memory peak ≤ ISOLATE_BYTES. */
  under128MB: boolean;
}

function entry(kind: InstanceMemory["kind"], name: string, peak: Peak, budgetBytes: number): InstanceMemory {
  return {
    kind,
    name,
    bytesHeldPeak: peak.bytesHeldPeak,
    budgetBytes,
    wasmMemoryPeakBytes: peak.wasmMemoryPeakBytes,
    withinBudget: peak.bytesHeldPeak <= budgetBytes,
    under128MB: peak.wasmMemoryPeakBytes <= ISOLATE_BYTES,
  };
}

/** One row per instance of an `/admin/hosts` answer. */
export function instanceMemory(h: AdminHosts): InstanceMemory[] {
  const runtime = (kind: "worker" | "driver", name: string, m: RuntimeMemory) => {
    const row = entry(kind, name, m.peak, m.weightBudgetBytes + m.kvBudgetBytes);
    // Weights and KV have separate budgets: each must hold on its own.
    row.withinBudget &&= m.weightBytes <= m.weightBudgetBytes && m.kvBytesPeak <= m.kvBudgetBytes;
    return row;
  };
  return [
    ...(h.worker ? [runtime("worker", "worker (the isolate answering)", h.worker)] : []),
    ...h.stages.map((s) => entry("stage", s.name, s.peak, s.budgetBytes + s.kvBudgetBytes)),
    ...(h.drivers ?? []).flatMap((d) => (d.driver ? [runtime("driver", d.name, d.driver)] : [])),
    ...h.heads.map((x) => entry("head", x.name, x.peak, x.budgetBytes)),
    ...h.hosts.map((x) => entry("expert", x.name, x.peak, x.budgetBytes)),
  ];
}

/** Reads `/admin/hosts` of `model` (default: the server's) and returns one row per instance. */
export async function readHostMemory(base: URL, adminToken: string, model?: string): Promise<InstanceMemory[]> {
  const q = model ? `?model=${encodeURIComponent(model)}` : "";
  const res = await fetch(new URL(`/admin/hosts${q}`, base), { headers: { authorization: `Bearer ${adminToken}` } });
  if (!res.ok) throw new Error(`/admin/hosts answered ${res.status}: ${(await res.text()).slice(0, 200)}`);
  return instanceMemory((await res.json()) as AdminHosts);
}

const mib = (b: number) => (b / 2 ** 20).toFixed(1);

/** A Markdown table of the rows (MiB). */
export function memoryTable(rows: InstanceMemory[]): string {
  const lines = [
    "| instance | kind | peak held / budget MiB | Wasm memory peak MiB | within budget | ≤ 128 MB |",
    "|---|---|---|---|---|---|",
  ];
  for (const r of rows)
    lines.push(
      `| ${r.name} | ${r.kind} | ${mib(r.bytesHeldPeak)} / ${mib(r.budgetBytes)} | ${mib(r.wasmMemoryPeakBytes)} | ` +
        `${r.withinBudget ? "yes" : "**no**"} | ${r.under128MB ? "yes" : "**no**"} |`,
    );
  return lines.join("\n");
}
