/**
 * /metrics on the real runtime: admin-only, parses with a real Prometheus text-format parser,
 * and under load the TTFT histogram, token counters, per-(layer, expert) loads and per-instance
 * memory move. Isolates flush to the MetricsHub from waitUntil, so values show after a flush.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import parse, { type ParsedFamily } from "parse-prometheus-text-format";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, FIXTURES, postJson, startWithModels } from "./helpers";

let w: LocalWorker;

beforeAll(async () => {
  w = await startWithModels(
    { tiny: join(FIXTURES, "mixtral-tiny") },
    { MIN_EXPERT_HOSTS: "2", REPLAN_INTERVAL_MS: "300", DEFAULT_MODEL: "tiny", ADMIN_FAULTS_ENABLED: "true" },
  );
});
afterAll(() => w?.dispose());

async function scrape(): Promise<{ text: string; families: ParsedFamily[] }> {
  const res = await w.fetch("/metrics", { headers: ADMIN });
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  return { text, families: parse(text) };
}

const family = (fs: ParsedFamily[], name: string) => {
  const f = fs.find((x) => x.name === name);
  if (!f) throw new Error(`metric ${name} missing`);
  return f;
};
const value = (fs: ParsedFamily[], name: string, labels: Record<string, string>) =>
  family(fs, name)
    .metrics.filter((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))
    .reduce((s, m) => s + Number(m.value), 0);
const line = (text: string, prefix: string) => {
  const l = text.split("\n").find((x) => x.startsWith(prefix));
  return l === undefined ? 0 : Number(l.slice(prefix.length).trim());
};

/**
 * Prompt positions the load below takes from a kept donor instead of running (prefix sharing): the
 * 2nd, 3rd and 4th of the same 16-token prompt each copy 15 from the finished one before it.
 */
const SHARED_TOKENS = 3 * 15;
/**
 * Tokens each MoE layer runs for the load below: 4 × (16 prompt + 3 decode steps; the 4th token
 * needs no forward), less the shared prompt positions, + the streamed (3 + 2).
 */
const LAYER_TOKENS = 4 * (16 + 3) - SHARED_TOKENS + (3 + 2);

describe("/metrics", () => {
  it("needs the admin token", async () => {
    expect((await w.fetch("/metrics")).status).toBe(401);
    expect((await w.fetch("/metrics", { headers: { authorization: "Bearer nope" } })).status).toBe(401);
    expect((await w.fetch("/metrics?model=..bad", { headers: ADMIN })).status).toBe(400);
  });

  it("parses, and under load the TTFT histogram, tokens and per-expert counters move", async () => {
    const before = await scrape();
    expect(before.families.length).toBeGreaterThan(10);
    for (let i = 0; i < 4; i++) {
      const r = await postJson(w, "/v1/completions", { prompt: new Array(16).fill(42), max_tokens: 4, temperature: 0 });
      expect(r.status).toBe(200);
    }
    const s = await w.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: [1, 2, 3], max_tokens: 3, temperature: 0, stream: true }),
    });
    expect(s.status).toBe(200);
    await s.text();
    // A refused request (bad input is a 400, counted by route and status).
    expect((await postJson(w, "/v1/completions", { prompt: [1], max_tokens: 0 })).status).toBe(400);

    // Let the Coordinator fold a load window. Meanwhile the isolate flushes on its own (from
    // waitUntil, within FLUSH_INTERVAL_MS): read the hub directly, not through a scrape.
    await new Promise((r) => setTimeout(r, 1500));
    const env = (await w.worker.getEnv()) as unknown as Env;
    const hub = await env.METRICS_HUB.getByName("global").snapshot();
    const flushed = hub.metrics.counters.find(
      (c) => c.name === "edge_moe_generation_tokens_total" && c.labels.model === "tiny",
    );
    expect(flushed?.value).toBe(4 * 4 + 3);
    expect(hub.timeline.reduce((a, s) => a + s.completionTokens, 0)).toBe(4 * 4 + 3);
    const after = await scrape();
    const fs = after.families;
    expect(family(fs, "edge_moe_time_to_first_token_seconds").type).toBe("HISTOGRAM");
    const ttftCount = line(after.text, 'edge_moe_time_to_first_token_seconds_count{model="tiny"}');
    expect(ttftCount).toBe(5);
    expect(line(after.text, 'edge_moe_time_to_first_token_seconds_bucket{model="tiny",le="+Inf"}')).toBe(5);
    expect(line(after.text, 'edge_moe_time_per_output_token_seconds_count{model="tiny"}')).toBe(5);
    expect(value(fs, "edge_moe_generation_tokens_total", { model: "tiny" })).toBe(4 * 4 + 3);
    expect(value(fs, "edge_moe_prompt_tokens_total", { model: "tiny" })).toBe(4 * 16 + 3);
    expect(value(fs, "edge_moe_prefix_shared_tokens_total", { model: "tiny" })).toBe(SHARED_TOKENS);
    expect(value(fs, "edge_moe_http_requests_total", { route: "/v1/completions", status: "200" })).toBe(5);
    expect(value(fs, "edge_moe_http_requests_total", { route: "/v1/completions", status: "400" })).toBe(1);
    expect(value(fs, "edge_moe_generations_total", { model: "tiny", finish: "length" })).toBe(5);

    // Per MoE layer: fan-out latency, tokens through the layer and the RPCs sent for them (the
    // fan-out reports them through src/platform/events.ts; experts don't import observability).
    const fanout = family(fs, "edge_moe_fanout_seconds");
    expect(fanout.type).toBe("HISTOGRAM");
    for (const layer of ["0", "1"]) {
      const calls = line(after.text, `edge_moe_fanout_seconds_count{layer="${layer}"}`);
      expect(calls).toBeGreaterThanOrEqual(5); // at least a prefill per request
      const tokens = value(fs, "edge_moe_expert_layer_tokens_total", { layer });
      expect(tokens).toBe(LAYER_TOKENS);
      const rpcs = value(fs, "edge_moe_expert_rpcs_total", { layer });
      expect(rpcs).toBeGreaterThanOrEqual(calls); // at least one RPC per layer call
      expect(rpcs / tokens).toBeLessThanOrEqual(2); // top-2: never more RPCs than (token, expert) rows
    }
    expect(family(fs, "edge_moe_expert_failovers_total").type).toBe("COUNTER");
    expect(value(fs, "edge_moe_expert_failovers_total", {})).toBe(0);
    expect(value(fs, "edge_moe_capacity_drops_total", {})).toBe(0); // CAPACITY_FACTOR unset
    expect(value(fs, "edge_moe_capacity_reroutes_total", {})).toBe(0); // no series until a re-route
    // Every ExpertHost RPC answered (no failovers above) observed its wait outside the object once.
    expect(family(fs, "edge_moe_expert_rpc_wait_seconds").type).toBe("HISTOGRAM");
    for (const layer of ["0", "1"]) {
      const waits = line(after.text, `edge_moe_expert_rpc_wait_seconds_count{layer="${layer}"}`);
      expect(waits).toBe(value(fs, "edge_moe_expert_rpcs_total", { layer }));
      const sum = line(after.text, `edge_moe_expert_rpc_wait_seconds_sum{layer="${layer}"}`);
      expect(sum).toBeGreaterThanOrEqual(0);
      expect(sum / waits).toBeLessThan(5);
    }

    // Routed load per (layer, expert) from the Coordinator, tokens per expert from the hosts.
    const load = family(fs, "edge_moe_expert_load_tokens");
    expect(load.type).toBe("GAUGE");
    expect(load.metrics.length).toBe(2 * 8); // mixtral-tiny: 2 MoE layers × 8 experts
    expect(load.metrics.reduce((a, m) => a + Number(m.value), 0)).toBeGreaterThan(0);
    const served = family(fs, "edge_moe_expert_served_tokens_total");
    expect(served.metrics.reduce((a, m) => a + Number(m.value), 0)).toBeGreaterThan(0);
    expect(value(fs, "edge_moe_placement_version", { model: "tiny" })).toBeGreaterThanOrEqual(1);
    const instances = family(fs, "edge_moe_instance_loaded_bytes").metrics;
    // At least MIN_EXPERT_HOSTS; a re-plan under this skewed load may already have added one.
    expect(instances.length).toBe(value(fs, "edge_moe_placement_instances", { model: "tiny" }));
    expect(instances.length).toBeGreaterThanOrEqual(2);
    for (const m of instances) {
      expect(value(fs, "edge_moe_instance_budget_bytes", { instance: m.labels!.instance })).toBe(96 * 1024 * 1024);
    }
    expect(value(fs, "edge_moe_instance_rpc_calls_total", { model: "tiny" })).toBeGreaterThan(0);
    // What the scrape cost: hub read, Coordinator status, one stats RPC per instance (+ flush/replans).
    expect(value(fs, "edge_moe_scrape_rpcs", {})).toBeGreaterThanOrEqual(1 + 1 + instances.length);
    expect(value(fs, "edge_moe_instance_loaded_bytes", { model: "tiny" })).toBeGreaterThan(0);

    // Re-plans are counted once however many scrapes see them: the Coordinator's alarm re-plans
    // every window here, so the second scrape may add only reports made since the first began
    // (counting twice would add every report the Coordinator keeps).
    expect((await postJson(w, "/admin/replan", {}, ADMIN)).status).toBe(200);
    const since = Date.now();
    const r1 = (await scrape()).families;
    const r2 = (await scrape()).families;
    const status = (await (await w.fetch("/admin/placement", { headers: ADMIN })).json()) as {
      lastReplans: { at: number }[];
    };
    const replans = (f: ParsedFamily[]) => value(f, "edge_moe_replans_total", { model: "tiny" });
    expect(replans(r1)).toBeGreaterThanOrEqual(1);
    expect(status.lastReplans.length).toBeGreaterThan(3);
    const made = status.lastReplans.filter((r) => r.at >= since - 100).length;
    expect(replans(r2) - replans(r1)).toBeLessThanOrEqual(made);
  });

  it("counts failed expert calls as failovers by layer and code; no forward left in flight", async () => {
    const before = value((await scrape()).families, "edge_moe_expert_failovers_total", { layer: "0" });
    // Every expert of layer 0 fails on every instance for a while (long enough to outlast setting
    // the faults on a busy machine): the fan-out retries them, then answers 503.
    const placement = (await (await w.fetch("/v1/placement", { headers: ADMIN })).json()) as {
      instances: unknown[];
    };
    for (let instance = 0; instance < placement.instances.length; instance++) {
      for (let expert = 0; expert < 8; expert++) {
        const f = await postJson(w, "/admin/fault", { instance, layer: 0, expert, ms: 3000 }, ADMIN);
        expect(f.status).toBe(200);
      }
    }
    const r = await postJson(w, "/v1/completions", { prompt: [7, 8, 9], max_tokens: 1, temperature: 0 });
    expect(r.status).toBe(503);
    const fs = (await scrape()).families; // a scrape flushes its own isolate first
    const failovers = family(fs, "edge_moe_expert_failovers_total").metrics.filter((m) => m.labels?.layer === "0");
    expect(failovers.map((m) => m.labels?.code)).toContain("model_error");
    expect(value(fs, "edge_moe_expert_failovers_total", { layer: "0" }) - before).toBeGreaterThanOrEqual(1);
    // Every forward has answered: each instance reports zero calls in flight.
    const inflight = family(fs, "edge_moe_instance_inflight_calls");
    expect(inflight.type).toBe("GAUGE");
    expect(inflight.metrics.length).toBeGreaterThanOrEqual(2);
    for (const m of inflight.metrics) expect(Number(m.value)).toBe(0);
  });
});
