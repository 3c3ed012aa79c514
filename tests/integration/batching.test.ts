/**
 * Continuous batching (issue 11) in real workerd: several greedy requests served at the same time
 * with BATCHING on give exactly the tokens each gives alone with BATCHING off, while their expert
 * work really is merged (fewer ExpertHost kernel passes than requests × layers × steps).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import {
  ADMIN,
  greedyIds,
  makeSmallChatModel,
  modelMetrics,
  postJson,
  sseData,
  startWithModels,
  streamedText,
  waitFor,
} from "./helpers";

const CHATS = ["Hello!", "What is the capital of France?", "Write a haiku about rain.", "Count to five."];
const PROMPTS = [
  [29, 192, 173, 88, 189],
  [1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975],
  [1, 306, 763],
  [1, 1724, 338, 278, 1900, 982, 310, 263, 25273, 29973, 13, 13],
];

let on: LocalWorker;
let off: LocalWorker;

beforeAll(async () => {
  const model = { chat: makeSmallChatModel() };
  const vars = { DEFAULT_MODEL: "chat", MIN_EXPERT_HOSTS: "2" };
  [on, off] = await Promise.all([
    startWithModels(model, { ...vars, BATCHING: "on" }),
    startWithModels(model, { ...vars, BATCHING: "off" }),
  ]);
});
afterAll(async () => {
  await Promise.all([on?.dispose(), off?.dispose()]);
});

/** A streamed greedy chat: its text. */
function chat(w: LocalWorker, content: string, maxTokens: number): Promise<string> {
  const messages = [{ role: "user", content }];
  return streamedText(w, "/v1/chat/completions", { messages, max_tokens: maxTokens, temperature: 0 });
}

/** A greedy completion: its token ids. */
function complete(w: LocalWorker, prompt: number[], maxTokens: number): Promise<number[]> {
  return greedyIds(w, prompt, maxTokens);
}

/** Kernel passes the ExpertHosts ran so far. */
async function hostPasses(w: LocalWorker): Promise<number> {
  const res = await w.fetch("/admin/hosts?model=chat", { headers: ADMIN });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { hosts: { calls: number }[] };
  return body.hosts.reduce((s, h) => s + h.calls, 0);
}

describe("BATCHING", () => {
  it("gives every concurrent greedy request the tokens it gets alone, with its expert work merged", async () => {
    const steps = 12;
    // Alone, batching off: the reference.
    const wantChat: string[] = [];
    for (const c of CHATS) wantChat.push(await chat(off, c, steps));
    const wantIds: number[][] = [];
    for (const p of PROMPTS) wantIds.push(await complete(off, p, steps));
    for (const ids of wantIds) expect(ids).toHaveLength(steps);

    // Alone, batching on: the same (a batch of one).
    expect(await chat(on, CHATS[0], steps)).toBe(wantChat[0]);
    expect(await complete(on, PROMPTS[0], steps)).toEqual(wantIds[0]);

    // All at once, twice over, on both: merged on one, alone on the other, the same tokens.
    const passesOf = new Map<LocalWorker, number>();
    for (const w of [on, off]) {
      const before = await hostPasses(w);
      const [texts, ids] = await Promise.all([
        Promise.all([...CHATS, ...CHATS].map((c) => chat(w, c, steps))),
        Promise.all([...PROMPTS, ...PROMPTS].map((p) => complete(w, p, steps))),
      ]);
      expect(texts).toEqual([...wantChat, ...wantChat]);
      expect(ids).toEqual([...wantIds, ...wantIds]);
      const passes = (await hostPasses(w)) - before;
      console.log(`BATCHING ${w === on ? "on" : "off"}: ${passes} ExpertHost kernel passes for 16 concurrent requests`);
      passesOf.set(w, passes);
    }
    // 16 requests × 12 steps × 2 MoE layers, one or two hosts each: alone, at least one pass each;
    // merged, far fewer. How many requests meet in a step depends on how close together they arrive
    // (a loaded machine spreads them: 124–204 passes measured merged), so merging is judged against
    // the unmerged run of the same requests, not against a fixed count.
    const alone = passesOf.get(off) ?? 0;
    expect(alone).toBeGreaterThanOrEqual(16 * steps * 2);
    expect(passesOf.get(on)).toBeLessThan(alone * 0.75);
  });
});

/** Prompt tokens the Worker copied from live sessions (edge_moe_prefix_shared_tokens_total). */
async function sharedTokens(w: LocalWorker): Promise<number> {
  const name = "edge_moe_prefix_shared_tokens_total";
  return (await modelMetrics(w, "chat", [name]))[name];
}

describe("PREFIX_SHARING (on by default with BATCHING)", () => {
  it("gives requests sharing a prompt prefix with a live request the tokens they get alone", async () => {
    const prefix = Array.from({ length: 90 }, (_, i) => 1 + ((i * 53) % 900));
    const donor = { prompt: prefix, max_tokens: 40, temperature: 0 };
    const others = [prefix, [...prefix, 17, 4], [...prefix.slice(0, 70), 5, 6, 7]];
    const wantDonor = await streamedText(off, "/v1/completions", donor);
    const want: number[][] = [];
    for (const p of others) want.push(await complete(off, p, 6));

    const before = await sharedTokens(on);
    // The donor streams; once its first token is out (its prompt's K/V are in its session), the
    // others are sent together while it still decodes.
    const res = await on.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...donor, stream: true }),
    });
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let raw = "";
    while (!raw.includes("\n\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      raw += decoder.decode(value, { stream: true });
    }
    const got = await Promise.all(others.map((p) => complete(on, p, 6)));
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      raw += decoder.decode(value, { stream: true });
    }
    expect(got).toEqual(want);
    const text = sseData(raw)
      .filter((d) => d !== "[DONE]")
      .map((d) => JSON.parse(d).choices[0]?.text ?? "")
      .join("");
    expect(text).toBe(wantDonor);
    // Each copies what it shares with the donor (or with an earlier one of them), never its last
    // token: at least 89 + 90 + 70 positions, however the three met in the steps.
    const shared = await waitFor(
      "the shared tokens' metric",
      () => sharedTokens(on),
      (v) => v - before >= 89 + 90 + 70,
    );
    expect(shared - before).toBeLessThanOrEqual(89 + 91 + 70);
  });
});

describe("PREFIX_SHARING keeps finished generations as donors, within the KV budget", () => {
  let small: LocalWorker;
  beforeAll(async () => {
    // 256 B a position (2 layers × 2 kv heads × 8 × K and V, f32): 0.07 MiB holds ~286 positions,
    // two finished 120-position requests kept, not a third beside them.
    small = await startWithModels(
      { chat: makeSmallChatModel() },
      { DEFAULT_MODEL: "chat", MIN_EXPERT_HOSTS: "2", WORKER_KV_BUDGET_MB: "0.07" },
    );
  });
  afterAll(() => small?.dispose());

  it("serves a request repeating an ended one from its kept K/V; kept ones make room for new sessions", async () => {
    const a = Array.from({ length: 90 }, (_, i) => 1 + ((i * 71) % 900));
    const b = [...a, 17, 4, 23];
    const c = Array.from({ length: 90 }, (_, i) => 5 + ((i * 29) % 800));
    const want = [];
    for (const p of [a, b, c]) want.push(await complete(off, p, 30));
    const sharedBefore = await sharedTokens(small);
    expect(await complete(small, a, 30)).toEqual(want[0]);
    // a has ended: b repeats its prompt and its first generated tokens' positions are kept too.
    expect(await complete(small, b, 30)).toEqual(want[1]);
    await waitFor(
      "the shared tokens' metric",
      () => sharedTokens(small),
      (v) => v - sharedBefore >= 90,
    );
    // a and b are kept (~61 KB of the 73 KB budget): c needs ~31 KB, so the oldest kept one goes.
    const kvUsed = async () => {
      const res = await small.fetch("/admin/hosts?model=chat", { headers: ADMIN });
      return ((await res.json()) as { worker: { kvBytesUsed: number } }).worker.kvBytesUsed;
    };
    // Each ran to max_tokens, so its session was mostly used: kept as it is (all its 30 + prompt positions).
    expect(await kvUsed()).toBe((a.length + 30 + b.length + 30) * 256);
    expect(await complete(small, c, 30)).toEqual(want[2]);
    expect(await kvUsed()).toBe((b.length + 30 + c.length + 30) * 256);
  });
});

describe("BATCHING with routing noise and a capacity factor", () => {
  let noisyOn: LocalWorker;
  let noisyOff: LocalWorker;
  beforeAll(async () => {
    const model = { chat: makeSmallChatModel() };
    const vars = { DEFAULT_MODEL: "chat", MIN_EXPERT_HOSTS: "2", ROUTER_NOISE_STD: "0.5", CAPACITY_FACTOR: "1" };
    [noisyOn, noisyOff] = await Promise.all([
      startWithModels(model, { ...vars, BATCHING: "on" }),
      startWithModels(model, { ...vars, BATCHING: "off" }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([noisyOn?.dispose(), noisyOff?.dispose()]);
  });

  it("gives seeded requests the tokens they get alone (prompts longer than one prefill chunk)", async () => {
    // Noise draws and capacity follow the per-request prefill chunks: such a model keeps that path.
    const long = Array.from({ length: 200 }, (_, i) => 1 + ((i * 37) % 900));
    const prompts = [long, long.slice(0, 150).reverse(), PROMPTS[1]];
    const run = (w: LocalWorker) =>
      Promise.all(
        prompts.map(async (prompt) => {
          const r = await postJson(w, "/v1/completions", { prompt, max_tokens: 6, temperature: 0, seed: 7 });
          expect(r.status, JSON.stringify(r.json)).toBe(200);
          return r.json.choices[0].token_ids as number[];
        }),
      );
    const want = await run(noisyOff);
    expect(await run(noisyOn)).toEqual(want);
  });
});
