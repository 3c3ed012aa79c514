/**
 * The model load shared by concurrent requests (a Flight, src/platform/shared-work.ts) in the real
 * Worker: a request that arrives while another loads a cold model (tokenizer, 32000-row embedding
 * table) joins that load and picks the runtime up in its own request, streaming to the end after
 * the starter has answered. The hazard itself — a waiter stuck once the starter's request is gone,
 * and the takeover — is reproduced in tests/workerd/shared-work (a client abort does not reach
 * workerd's request through the local harness, so it cannot be staged here).
 */
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { makeSmallChatModel, sseData, startWithModels } from "./helpers";

const PROMPT = [5, 17, 99, 3, 250, 7];
const VARS = { MIN_EXPERT_HOSTS: "2", RATE_LIMIT_ENABLED: "false", DEFAULT_MODEL: "chat" };
let dir: string;
let w: LocalWorker | undefined;

beforeAll(() => {
  dir = makeSmallChatModel();
});
afterEach(async () => {
  await w?.dispose();
  w = undefined;
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function complete(body: Record<string, unknown>, signal?: AbortSignal): Promise<Response> {
  return w!.fetch("/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "chat", prompt: PROMPT, temperature: 0, ...body }),
    signal,
  });
}

/** Reads a whole SSE stream: the completion's tokens and its finish reason. */
async function streamed(res: Response): Promise<{ text: string; finish: string | null; done: boolean }> {
  const all = sseData(await res.text());
  const events = all.filter((d) => d !== "[DONE]");
  let text = "";
  let finish: string | null = null;
  for (const e of events) {
    const j = JSON.parse(e) as { choices?: { text: string; finish_reason: string | null }[]; error?: unknown };
    if (j.error) throw new Error(`in-band error: ${e}`);
    text += j.choices?.[0]?.text ?? "";
    finish = j.choices?.[0]?.finish_reason ?? finish;
  }
  return { text, finish, done: all.at(-1) === "[DONE]" };
}

describe("a cold model's load shared by two requests", () => {
  it("a waiter finishes its long stream after the request that started the load has answered", async () => {
    w = await startWithModels({ chat: dir }, VARS);
    const first = complete({ max_tokens: 1 });
    await sleep(5);
    const second = complete({ max_tokens: 48, stream: true });
    const a = await first;
    expect(a.status, await a.clone().text()).toBe(200);
    await a.text();
    const b = await second;
    expect(b.status).toBe(200);
    const got = await streamed(b);
    expect(got.done).toBe(true);
    expect(["length", "stop"]).toContain(got.finish);
  });
});
