/**
 * A client that goes away mid-stream stops its request's work at once: the ExpertHosts' call
 * counters stop growing as soon as the stream is aborted (the request's signal reaches the expert
 * fan-out through the generation loop), and the model keeps serving the next request.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, FIXTURES, postJson, startWithModels } from "./helpers";

const PROMPT = [29, 192, 173, 88, 189, 139, 156, 188, 151, 153];
let w: LocalWorker;

beforeAll(async () => {
  w = await startWithModels(
    { tiny: join(FIXTURES, "mixtral-tiny") },
    { MIN_EXPERT_HOSTS: "2", DEFAULT_MODEL: "tiny", RATE_LIMIT_ENABLED: "false" },
  );
});
afterAll(async () => {
  await w?.dispose();
});

async function expertCalls(): Promise<number> {
  const res = await w.fetch("/admin/hosts?model=tiny", { headers: ADMIN });
  const body = (await res.json()) as { hosts: { calls: number }[] };
  return body.hosts.reduce((n, h) => n + h.calls, 0);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("a client that goes away", () => {
  it("stops the expert calls of its streaming request at once", async () => {
    // Warm up (placement, hosts loaded) so the counters below only see the streamed request.
    const warm = await postJson(w, "/v1/completions", { prompt: PROMPT, max_tokens: 2, temperature: 0 });
    expect(warm.status, JSON.stringify(warm.json)).toBe(200);

    const ctl = new AbortController();
    const body = { prompt: PROMPT, max_tokens: 2000, temperature: 1, seed: 7, stream: true };
    const res = await fetch(new URL("/v1/completions", w.url), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: ctl.signal,
    });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    let events = 0;
    while (events < 20) {
      const { done, value } = await reader.read();
      if (done) throw new Error("the stream ended before the client went away");
      events += new TextDecoder().decode(value).split("data:").length - 1;
    }
    const during = await expertCalls();
    expect(during).toBeGreaterThan(0);
    ctl.abort();
    await reader.cancel().catch(() => {});

    // The request's last expert calls may still be answering; after that nothing new starts.
    await sleep(500);
    const after = await expertCalls();
    await sleep(1500);
    expect(await expertCalls()).toBe(after);
    // Far fewer calls than the 2000 tokens asked for would have made (2 MoE layers per token).
    expect(after).toBeLessThan(during + 2 * 2 * 200);

    const next = await postJson(w, "/v1/completions", { prompt: PROMPT, max_tokens: 4, temperature: 0 });
    expect(next.status, JSON.stringify(next.json)).toBe(200);
  });
});
