/**
 * Admission control on the real runtime: one slot and one queue place per isolate, so while a
 * stream holds the slot (its experts stalled) a second request waits and a third is refused with
 * 429 + Retry-After; /metrics shows the in-flight and queued gauges, and zero once both finish. A
 * stream whose prefill fails answers 503 with Retry-After before any 200, never an in-band error.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import parse from "parse-prometheus-text-format";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, FIXTURES, postJson, startWithModels } from "./helpers";

let w: LocalWorker;

beforeAll(async () => {
  w = await startWithModels(
    { tiny: join(FIXTURES, "mixtral-tiny") },
    {
      MIN_EXPERT_HOSTS: "2",
      DEFAULT_MODEL: "tiny",
      ADMIN_FAULTS_ENABLED: "true",
      MAX_INFLIGHT_REQUESTS: "1",
      MAX_QUEUED_REQUESTS: "1",
      ADMISSION_QUEUE_TIMEOUT_MS: "30000",
      RATE_LIMIT_ENABLED: "false",
    },
  );
  // Warm up: the placement exists and every expert is loaded before faults are set.
  expect((await postJson(w, "/v1/completions", { prompt: [1, 2, 3], max_tokens: 2, temperature: 0 })).status).toBe(200);
});
afterAll(() => w?.dispose());

async function gauges(): Promise<{ inflight: number; queued: number }> {
  const res = await w.fetch("/metrics", { headers: ADMIN });
  expect(res.status).toBe(200);
  const fs = parse(await res.text());
  const read = (name: string) => {
    const f = fs.find((x) => x.name === name);
    if (!f) throw new Error(`metric ${name} missing`);
    expect(f.type).toBe("GAUGE");
    return f.metrics.reduce((s, m) => s + Number(m.value), 0);
  };
  return { inflight: read("edge_moe_worker_inflight_requests"), queued: read("edge_moe_worker_queued_requests") };
}

/** Every expert of layer 0 on every instance stalls or fails for `ms`. */
async function fault(kind: "stall" | "fail", ms: number): Promise<void> {
  const placement = (await (await w.fetch("/v1/placement")).json()) as { instances: { name: string }[] };
  const env = (await w.worker.getEnv()) as unknown as Env;
  const experts = Array.from({ length: 8 }, (_, expert) => ({ layer: 0, expert }));
  for (const inst of placement.instances) await env.EXPERT_HOST.getByName(inst.name).injectFault(experts, ms, kind);
}

const stream = (prompt: number[]) =>
  w.fetch("/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, max_tokens: 3, temperature: 0, stream: true }),
  });

describe("admission control", () => {
  it("queues past the cap, refuses past the queue with 429 + Retry-After, and shows both as gauges", async () => {
    await fault("stall", 2500);
    const a = stream([4, 5, 6]); // takes the slot, stalls in its prefill
    await new Promise((r) => setTimeout(r, 300));
    const b = stream([7, 8, 9]); // waits in the queue
    await new Promise((r) => setTimeout(r, 300));
    const c = await postJson(w, "/v1/chat/completions", { messages: [{ role: "user", content: "hi" }] });
    expect(c.status).toBe(429);
    expect(c.json.error).toMatchObject({ type: "rate_limit_error", code: "too_many_concurrent_requests" });
    const during = await gauges(); // the scrape flushes this isolate's current values first
    expect(during).toEqual({ inflight: 1, queued: 1 });

    const [ra, rb] = await Promise.all([a, b]);
    for (const r of [ra, rb]) {
      expect(r.status).toBe(200);
      const text = await r.text();
      expect(text).not.toContain('"error"');
      expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);
    }
    expect(await gauges()).toEqual({ inflight: 0, queued: 0 });
  });

  it("the 429 carries Retry-After", async () => {
    await fault("stall", 1500);
    const a = stream([4, 5, 6]);
    await new Promise((r) => setTimeout(r, 300));
    const b = stream([7, 8, 9]);
    await new Promise((r) => setTimeout(r, 300));
    const c = await stream([1, 1, 1]);
    expect(c.status).toBe(429);
    expect(Number(c.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    await c.text();
    await Promise.all([(await a).text(), (await b).text()]);
  });

  it("a stream whose prefill fails is a 503 with Retry-After, not a 200 with an in-band error", async () => {
    await fault("fail", 3000);
    const r = await stream([7, 8, 9]);
    expect(r.status).toBe(503);
    expect(r.headers.get("content-type")).toMatch(/^application\/json/);
    expect(Number(r.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    const body = (await r.json()) as { error: { type: string } };
    expect(body.error.type).toBe("service_unavailable");
    expect(await gauges()).toEqual({ inflight: 0, queued: 0 }); // the refused stream gave its slot back
  });
});
