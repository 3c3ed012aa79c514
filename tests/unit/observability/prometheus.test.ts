/**
 * The hand-written Prometheus renderer and the mergeable metric set, checked with a real
 * Prometheus text-format parser: escaping, cumulative buckets, and deltas from two "isolates"
 * adding up to what one isolate recording everything would show.
 */
import { describe, expect, it } from "vitest";
import parse from "parse-prometheus-text-format";
import { METRICS } from "../../../src/observability/catalog";
import { renderFamilies, type Family } from "../../../src/observability/prometheus";
import { MetricSet } from "../../../src/observability/registry";

const families = (set: MetricSet): Family[] => {
  const d = set.toDelta();
  return [
    {
      name: METRICS.requests.name,
      help: METRICS.requests.help,
      type: "counter",
      samples: d.counters.filter((c) => c.name === METRICS.requests.name),
    },
    {
      name: METRICS.ttft.name,
      help: METRICS.ttft.help,
      type: "histogram",
      histograms: d.histograms.filter((h) => h.name === METRICS.ttft.name),
    },
  ];
};

describe("prometheus text rendering", () => {
  it("renders counters and histograms that a real parser reads back", () => {
    const m = new MetricSet();
    m.inc(METRICS.requests, { route: "/v1/completions", method: "POST", status: "200" }, 3);
    m.inc(METRICS.requests, { route: "/v1/completions", method: "POST", status: "429" });
    // Unlabelled: parse-prometheus-text-format flattens a histogram's label sets into one and keeps
    // _count/_sum only for an unlabelled one, so this is the shape it reads back completely.
    for (const v of [0.003, 0.04, 0.04, 0.7, 100]) m.observe(METRICS.ttft, {}, v);
    const parsed = parse(renderFamilies(families(m)));
    const req = parsed.find((f) => f.name === METRICS.requests.name)!;
    expect(req.type).toBe("COUNTER");
    expect(req.metrics.map((s) => [s.labels?.status, Number(s.value)])).toEqual([
      ["200", 3],
      ["429", 1],
    ]);
    const ttft = parsed.find((f) => f.name === METRICS.ttft.name)!;
    expect(ttft.type).toBe("HISTOGRAM");
    const h = ttft.metrics[0];
    expect(Number(h.count)).toBe(5);
    expect(Number(h.sum)).toBeCloseTo(100.783, 6);
    // Buckets are cumulative: ≤5 ms holds 1, ≤50 ms 3, ≤1 s 4, and the 100 s outlier only in +Inf.
    expect(Number(h.buckets!["0.005"])).toBe(1);
    expect(Number(h.buckets!["0.05"])).toBe(3);
    expect(Number(h.buckets!["1"])).toBe(4);
    expect(Number(h.buckets!["60"])).toBe(4);
  });

  it("renders labelled histograms with the label on every bucket, _sum and _count line", () => {
    const m = new MetricSet();
    m.observe(METRICS.ttft, { model: "a" }, 0.2);
    m.observe(METRICS.ttft, { model: "b" }, 2);
    const text = renderFamilies(families(m));
    expect(text).toContain(`${METRICS.ttft.name}_bucket{model="a",le="0.25"} 1`);
    expect(text).toContain(`${METRICS.ttft.name}_bucket{model="b",le="0.25"} 0`);
    expect(text).toContain(`${METRICS.ttft.name}_bucket{model="b",le="+Inf"} 1`);
    expect(text).toContain(`${METRICS.ttft.name}_sum{model="b"} 2`);
    expect(text).toContain(`${METRICS.ttft.name}_count{model="a"} 1`);
    expect(parse(text).find((f) => f.name === METRICS.ttft.name)?.type).toBe("HISTOGRAM");
  });

  it("escapes label values and help text", () => {
    const text = renderFamilies([
      {
        name: "x_total",
        help: "a \\ back\nslash",
        type: "counter",
        samples: [{ labels: { model: 'we"ird\\\nname' }, value: 1 }],
      },
    ]);
    expect(text).toContain('x_total{model="we\\"ird\\\\\\nname"} 1');
    const parsed = parse(text);
    expect(parsed[0].metrics[0].labels!.model).toBe('we"ird\\\nname');
  });

  it("rejects names Prometheus would not accept", () => {
    expect(() => renderFamilies([{ name: "bad-name", help: "", type: "gauge", samples: [] }])).toThrow(/metric name/);
    expect(() =>
      renderFamilies([{ name: "ok", help: "", type: "gauge", samples: [{ labels: { "1x": "v" }, value: 1 }] }]),
    ).toThrow(/label name/);
  });
});

describe("metric deltas", () => {
  it("two isolates' flushes merge to the totals of one isolate recording everything", () => {
    const a = new MetricSet();
    const b = new MetricSet();
    const all = new MetricSet();
    const obs = [0.02, 0.3, 0.004, 7, 0.09, 0.09];
    obs.forEach((v, i) => {
      (i % 2 ? a : b).observe(METRICS.ttft, { model: "m" }, v);
      all.observe(METRICS.ttft, { model: "m" }, v);
      (i % 2 ? a : b).inc(METRICS.completionTokens, { model: "m" }, i);
      all.inc(METRICS.completionTokens, { model: "m" }, i);
    });
    const hub = new MetricSet();
    hub.merge(a.take());
    hub.merge(b.take());
    expect(a.isEmpty && b.isEmpty).toBe(true);
    expect(hub.toDelta()).toEqual(all.toDelta());
    // A later flush from a keeps adding.
    a.inc(METRICS.completionTokens, { model: "m" }, 10);
    hub.merge(a.take());
    expect(hub.counter(METRICS.completionTokens.name, { model: "m" })).toBe(obs.reduce((s, _, i) => s + i, 0) + 10);
  });

  it("ignores negative, NaN and infinite values instead of corrupting totals", () => {
    const m = new MetricSet();
    m.inc(METRICS.promptTokens, { model: "m" }, -5);
    m.inc(METRICS.promptTokens, { model: "m" }, Number.NaN);
    m.observe(METRICS.e2e, { model: "m" }, Number.POSITIVE_INFINITY);
    expect(m.isEmpty).toBe(true);
  });
});
