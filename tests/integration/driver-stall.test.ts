/**
 * The session driver (a StageHost holding no layers) under a slow or failing pipeline — what a cold
 * first request on a big model meets (ExpertHosts still loading their experts): stalled expert calls
 * (STALL_MS, 25 s by default; longer via the environment) still give the whole streamed completion; expert
 * calls that fail make the stream end with the failure's own code and message in band, where the
 * Worker used to see only "ReadableStream received over RPC disconnected prematurely"; a stage that
 * loses its sessions mid-generation (an evicted or reset instance — what the cold full-size granite
 * request met) is replayed by the driver and the completion still arrives whole, with the tokens of
 * an undisturbed run, also when the reset loses several generations that share decode steps
 * (each replayed inside the steps, `/admin/hosts` counting them); and a stage holding a session stays in memory
 * while idle (a keep-alive alarm: local workerd evicts an idle instance within seconds, which is
 * what cut the cold request).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, makeSmallChatModel, postJson, sseData, startWithModels, streamedText } from "./helpers";

const STALL_MS = Number(process.env.STALL_MS ?? 25_000);
const EXPERTS = 4; // makeSmallChatModel
const MAX_TOKENS = 6;

describe("session driver under a slow pipeline", () => {
  let w: LocalWorker;
  beforeAll(async () => {
    w = await startWithModels(
      { chat: makeSmallChatModel() },
      // HOST_KEEPALIVE_MS off: the stage must be held by its session alone (the window is keep-alive.test.ts).
      {
        PIPELINE_STAGES: "2",
        ADMIN_FAULTS_ENABLED: "true",
        EXPERT_RPC_TIMEOUT_MS: "120000",
        DENSE_QUANT: "f32",
        HOST_KEEPALIVE_MS: "0",
      },
    );
  });
  afterAll(() => w?.dispose());

  async function fault(kind: "stall" | "fail", ms: number): Promise<void> {
    for (let layer = 0; layer < 2; layer++) {
      for (let expert = 0; expert < EXPERTS; expert++) {
        const res = await w.fetch("/admin/fault", {
          method: "POST",
          headers: { ...ADMIN, "content-type": "application/json" },
          body: JSON.stringify({ model: "chat", instance: 0, layer, expert, ms, kind }),
        });
        expect(res.status).toBe(200);
      }
    }
  }

  it("streams every token of a completion whose expert calls stall for 25 s", { timeout: 400_000 }, async () => {
    await fault("stall", STALL_MS);
    const t0 = Date.now();
    const res = await w.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "chat",
        prompt: [1, 415, 2936],
        max_tokens: MAX_TOKENS,
        stream: true,
        temperature: 0,
      }),
    });
    expect(res.status).toBe(200);
    const events = sseData(await res.text());
    expect(Date.now() - t0).toBeGreaterThanOrEqual(STALL_MS - 1000);
    expect(events[events.length - 1]).toBe("[DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as { choices?: { finish_reason: string | null }[] });
    expect(chunks.some((c) => "error" in c)).toBe(false);
    expect(["length", "stop"]).toContain(chunks.at(-1)?.choices?.[0]?.finish_reason);
  });

  it("ends the stream with the driver's own failure (code and message) when expert calls fail", async () => {
    // A failure before the first token is a 503 with Retry-After (the stream's headers wait for it);
    // one after it can only travel in band: the experts start failing once the first token is out.
    await fault("stall", 0);
    const res = await w.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "chat", prompt: [1, 415, 2936], max_tokens: 200, stream: true }),
    });
    try {
      expect(res.status).toBe(200);
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      const first = await reader.read();
      expect(first.done).toBe(false);
      await fault("fail", 60_000);
      let text = new TextDecoder().decode(first.value);
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      const events = sseData(text);
      expect(events[events.length - 1]).toBe("[DONE]");
      const errors = events
        .slice(0, -1)
        .map((e) => JSON.parse(e) as { error?: { code: string; message: string } })
        .filter((e) => e.error);
      expect(errors).toHaveLength(1);
      expect(errors[0].error?.code).toBe("expert_unavailable");
      expect(errors[0].error?.message).not.toMatch(/disconnected prematurely/);
    } finally {
      await fault("fail", 0);
    }
  });

  it("answers 503 with Retry-After when the experts fail before the first token", async () => {
    await fault("fail", 60_000);
    try {
      const res = await w.fetch("/v1/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "chat", prompt: [1, 415, 2936], max_tokens: MAX_TOKENS, stream: true }),
      });
      expect(res.status).toBe(503);
      expect(Number(res.headers.get("retry-after"))).toBeGreaterThan(0);
      const body = (await res.json()) as { error: { code: string } };
      expect(body.error.code).toBe("expert_unavailable");
    } finally {
      await fault("fail", 0);
    }
  });

  it("replays the session when a stage is reset mid-generation and completes it", async () => {
    const body = { model: "chat", prompt: [1, 415, 2936], max_tokens: 10, temperature: 0 };
    const plain = await postJson(w, "/v1/completions", body);
    expect(plain.status).toBe(200);
    const ids: number[] = plain.json.choices[0].token_ids;
    expect(ids.length).toBeGreaterThan(4);
    // Both stages lose everything at the 4th decode step (position prompt + 3).
    for (const stage of [0, 1]) {
      const r = await postJson(w, "/admin/fault/stage", { model: "chat", stage, at: 3 + 3 }, ADMIN);
      expect(r.status).toBe(200);
    }
    const again = await postJson(w, "/v1/completions", body);
    expect(again.status).toBe(200);
    expect(again.json.choices[0].token_ids).toEqual(ids);
    const hosts = (await (await w.fetch("/admin/hosts?model=chat", { headers: ADMIN })).json()) as {
      stages: { sessions: number; kvBytesPeak: number }[];
    };
    for (const st of hosts.stages) {
      expect(st.sessions).toBe(0);
      expect(st.kvBytesPeak).toBeGreaterThan(0); // the fresh instance re-admitted the replayed session
    }
  });

  it("replays every session the last stage lost when it is reset under four generations sharing steps", async () => {
    // BATCHING on (the default): the driver runs the four generations in shared steps, each step one
    // runMany call a hop. All four streams are open and have their first token (every session admitted
    // on both stages, mid-generation) before stage 1 is told to reset at its next call (any position
    // ≥ 1: every running session is past it), so the reset loses every session held there —
    // whatever the timing of a loaded machine.
    const prompts = [
      [1, 415, 2936],
      [1, 306, 763, 29871],
      [1, 22172, 29991],
      [1, 450, 4996, 17354, 1701],
    ];
    const body = (prompt: number[]) => ({ model: "chat", prompt, max_tokens: 200, temperature: 0 });
    const alone: string[] = [];
    for (const p of prompts) alone.push(await streamedText(w, "/v1/completions", body(p)));
    const driver = async () => {
      const res = await w.fetch("/admin/hosts?model=chat", { headers: ADMIN });
      const h = (await res.json()) as {
        stages: { sessions: number }[];
        drivers: { replays: number; driverSteps: { steps: number; segments: number } | null }[];
      };
      const steps = h.drivers.reduce((a, d) => a + (d.driverSteps?.steps ?? 0), 0);
      const segments = h.drivers.reduce((a, d) => a + (d.driverSteps?.segments ?? 0), 0);
      return { h, steps, segments, replays: h.drivers.reduce((a, d) => a + d.replays, 0) };
    };
    const before = await driver();
    // Each stream read up to its first token; the rest is read after the reset.
    const open = await Promise.all(
      prompts.map(async (p) => {
        const res = await w.fetch("/v1/completions", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ ...body(p), stream: true }),
        });
        expect(res.status).toBe(200);
        const reader = res.body!.getReader();
        const decoder = new TextDecoder();
        let raw = "";
        while (!raw.includes('"text"')) {
          const { value, done } = await reader.read();
          if (done) break;
          raw += decoder.decode(value, { stream: true });
        }
        return { reader, decoder, raw };
      }),
    );
    const r = await postJson(w, "/admin/fault/stage", { model: "chat", stage: 1, at: 1 }, ADMIN);
    expect(r.status).toBe(200);
    const texts = await Promise.all(
      open.map(async ({ reader, decoder, raw }) => {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          raw += decoder.decode(value, { stream: true });
        }
        let text = "";
        for (const d of sseData(raw)) {
          if (d === "[DONE]") continue;
          const chunk = JSON.parse(d);
          expect(chunk.error, d).toBeUndefined();
          text += chunk.choices[0]?.text ?? "";
        }
        return text;
      }),
    );
    expect(texts).toEqual(alone);
    const after = await driver();
    // Several generations shared the steps, and the reset lost more than one of them.
    expect(after.segments - before.segments).toBeGreaterThan(after.steps - before.steps);
    expect(after.replays - before.replays).toBeGreaterThanOrEqual(2);
    for (const st of after.h.stages) expect(st.sessions).toBe(0);
  });

  it("keeps a stage that holds a session from being evicted while it is idle", { timeout: 60_000 }, async () => {
    // An idle Durable Object is evicted within seconds in local workerd (README, KV caches); the stage's
    // keep-alive alarm must hold it, with its KV caches, for as long as it holds sessions.
    const env = (await w.worker.getEnv()) as unknown as Env;
    const stub = env.STAGE_HOST.getByName("chat/s0-1");
    const opened = await stub.open("chat", { name: "chat/s0-1", first: 0, end: 1 }, "held-idle", 16);
    expect(opened.ok).toBe(true);
    await new Promise((r) => setTimeout(r, 25_000));
    const s = await stub.stats();
    expect(s.model).toBe("chat");
    expect(s.sessions).toBe(1);
    await stub.end("held-idle");
  });
});
