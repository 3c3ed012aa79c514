/**
 * The OpenAI-compatible surface on the real runtime: shapes, streaming, sampling controls, and
 * bad input answered with a 4xx naming the field (never a 500).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { join } from "node:path";
import type { LocalWorker } from "../../scripts/lib/local-worker";
import { ADMIN, FIXTURES, makeSmallChatModel, postJson, sseData, startWithModels } from "./helpers";

let w: LocalWorker;

beforeAll(async () => {
  w = await startWithModels(
    { tiny: join(FIXTURES, "mixtral-tiny"), chat: makeSmallChatModel() },
    { MIN_EXPERT_HOSTS: "2", DEFAULT_MODEL: "tiny", DEFAULT_MAX_TOKENS: "5" },
  );
});
afterAll(async () => {
  await w?.dispose();
});

describe("GET routes", () => {
  it("lists models with architecture, expert count and top-k", async () => {
    const res = await w.fetch("/v1/models");
    expect(res.status).toBe(200);
    const body = (await res.json()) as { object: string; data: Record<string, unknown>[] };
    expect(body.object).toBe("list");
    const tiny = body.data.find((m) => m.id === "tiny");
    expect(tiny).toMatchObject({ object: "model", architecture: "mixtral", n_experts: 8, top_k: 2 });
    expect(body.data.map((m) => m.id).sort()).toEqual(["chat", "tiny"]);
  });

  it("answers /health", async () => {
    const res = await w.fetch("/health");
    expect(await res.json()).toEqual({ status: "ok" });
  });

  it("shows every expert placed exactly once, spread over 2 ExpertHosts", async () => {
    const res = await w.fetch("/v1/placement?model=tiny");
    const p = (await res.json()) as { version: number; instances: { name: string; experts: string[] }[] };
    expect(p.version).toBeGreaterThanOrEqual(1);
    expect(p.instances).toHaveLength(2);
    const all = p.instances.flatMap((i) => i.experts).sort();
    const want = [];
    for (let l = 0; l < 2; l++) for (let e = 0; e < 8; e++) want.push(`${l}:${e}`);
    expect(all).toEqual(want.sort());
    expect(p.instances.every((i) => i.experts.length === 8)).toBe(true);
  });

  it("reports host memory that matches the placement (admin)", async () => {
    const res = await w.fetch("/admin/hosts?model=tiny", { headers: ADMIN });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { hosts: { loaded: unknown[]; bytesLoaded: number; budgetBytes: number }[] };
    expect(body.hosts).toHaveLength(2);
    for (const h of body.hosts) {
      expect(h.loaded).toHaveLength(8);
      expect(h.bytesLoaded).toBe(8 * 3 * 64 * 96 * 4);
      expect(h.bytesLoaded).toBeLessThanOrEqual(h.budgetBytes);
    }
  });

  it("refuses admin routes without the token", async () => {
    expect((await w.fetch("/admin/hosts")).status).toBe(401);
    expect((await w.fetch("/admin/hosts", { headers: { authorization: "Bearer wrong" } })).status).toBe(401);
  });
});

describe("POST /v1/completions", () => {
  it("returns an OpenAI text_completion with token ids and usage", async () => {
    const { status, json } = await postJson(w, "/v1/completions", {
      model: "tiny",
      prompt: [1, 2, 3],
      max_tokens: 5,
      temperature: 0,
    });
    expect(status).toBe(200);
    expect(json.object).toBe("text_completion");
    expect(json.id).toMatch(/^cmpl-/);
    expect(json.choices).toHaveLength(1);
    expect(json.choices[0].token_ids).toHaveLength(5);
    expect(json.choices[0].finish_reason).toBe("length");
    expect(json.usage).toEqual({ prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 });
  });

  it("is repeatable with a seed and differs across seeds", async () => {
    const req = (seed: number) =>
      postJson(w, "/v1/completions", { model: "tiny", prompt: [[5, 6, 7]], max_tokens: 12, temperature: 1.5, seed });
    const [a, b, c] = await Promise.all([req(7), req(7), req(8)]);
    expect(a.json.choices[0].token_ids).toEqual(b.json.choices[0].token_ids);
    expect(a.json.choices[0].token_ids).not.toEqual(c.json.choices[0].token_ids);
  });

  it("streams SSE chunks ending with [DONE], equal to the non-streamed result", async () => {
    const body = { model: "tiny", prompt: [9, 8, 7, 6], max_tokens: 6, temperature: 0 };
    const plain = await postJson(w, "/v1/completions", body);
    const res = await w.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    });
    expect(res.headers.get("content-type")).toMatch(/text\/event-stream/);
    const data = sseData(await res.text());
    expect(data.at(-1)).toBe("[DONE]");
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    const ids = chunks.flatMap((c) => c.choices[0]?.token_ids ?? []);
    expect(ids).toEqual(plain.json.choices[0].token_ids);
    expect(chunks.filter((c) => c.choices.length > 0).at(-1).choices[0].finish_reason).toBe("length");
    expect(chunks.at(-1).usage).toEqual({ prompt_tokens: 4, completion_tokens: 6, total_tokens: 10 });
  });

  it("encodes text prompts with the model's tokenizer and honours stop strings", async () => {
    const base = { model: "chat", prompt: "Once upon a time", max_tokens: 20, temperature: 0 };
    const full = await postJson(w, "/v1/completions", base);
    expect(full.status).toBe(200);
    expect(full.json.usage.prompt_tokens).toBeGreaterThan(3);
    const text: string = full.json.choices[0].text;
    expect(text.length).toBeGreaterThan(3);
    const stop = text.slice(2, 4);
    const cut = await postJson(w, "/v1/completions", { ...base, stop: [stop] });
    expect(cut.json.choices[0].finish_reason).toBe("stop");
    expect(cut.json.choices[0].text).toBe(text.slice(0, text.indexOf(stop)));
  });
});

describe("POST /v1/chat/completions", () => {
  it("renders the chat template and returns a chat.completion", async () => {
    const { status, json } = await postJson(w, "/v1/chat/completions", {
      model: "chat",
      messages: [{ role: "user", content: "Hi there" }],
      max_tokens: 8,
      temperature: 0,
    });
    expect(status).toBe(200);
    expect(json.object).toBe("chat.completion");
    expect(json.choices[0].message.role).toBe("assistant");
    expect(typeof json.choices[0].message.content).toBe("string");
    // "[INST] Hi there [/INST]" with BOS: more tokens than the bare text.
    expect(json.usage.prompt_tokens).toBeGreaterThan(5);
  });

  it("streams deltas: role first, then content, finish_reason last, then [DONE]", async () => {
    const body = {
      model: "chat",
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Hello" },
      ],
      max_tokens: 10,
      temperature: 0,
    };
    const plain = await postJson(w, "/v1/chat/completions", body);
    const res = await w.fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...body, stream: true }),
    });
    const data = sseData(await res.text());
    expect(data.at(-1)).toBe("[DONE]");
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks.every((c) => c.object === "chat.completion.chunk")).toBe(true);
    expect(chunks[0].choices[0].delta.role).toBe("assistant");
    expect(chunks.map((c) => c.choices[0].delta.content ?? "").join("")).toBe(plain.json.choices[0].message.content);
    expect(chunks.at(-1).choices[0].finish_reason).toMatch(/^(length|stop)$/);
  });
});

describe("request ids, defaults and the bounded admin surface", () => {
  it("echoes a valid X-Request-Id, replaces a hostile one, and generates one otherwise", async () => {
    const mine = await w.fetch("/health", { headers: { "x-request-id": "client-req_42" } });
    expect(mine.headers.get("x-request-id")).toBe("client-req_42");
    for (const hostile of ["has space", "<script>", "r".repeat(129)]) {
      const res = await w.fetch("/health", { headers: { "x-request-id": hostile } });
      expect(res.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
    }
    const err = await w.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "text/plain", "x-request-id": "abc" },
      body: "x",
    });
    expect(err.status).toBe(415);
    expect(err.headers.get("x-request-id")).toBe("abc");
  });

  it("accepts the whole seed range [0, 2^32 - 1]", async () => {
    for (const seed of [0, 4294967295]) {
      const r = await postJson(w, "/v1/completions", {
        model: "tiny",
        prompt: [1, 2],
        max_tokens: 2,
        temperature: 1,
        seed,
      });
      expect(r.status).toBe(200);
    }
  });

  it("gives a chat request without max_tokens DEFAULT_MAX_TOKENS, not the whole context", async () => {
    const r = await postJson(w, "/v1/chat/completions", {
      model: "chat",
      messages: [{ role: "user", content: "Tell me a story" }],
      temperature: 0,
    });
    expect(r.status).toBe(200);
    expect(r.json.usage.completion_tokens).toBeLessThanOrEqual(5);
    if (r.json.choices[0].finish_reason === "length") expect(r.json.usage.completion_tokens).toBe(5);
  });

  it("sends no CORS headers unless CORS_ORIGINS allows the origin", async () => {
    const res = await w.fetch("/v1/models", { headers: { origin: "https://evil.example" } });
    expect(res.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("refuses fault injection unless ADMIN_FAULTS_ENABLED is true", async () => {
    const r = await postJson(w, "/admin/fault", { model: "tiny", instance: 0, layer: 0, expert: 0, ms: 1000 }, ADMIN);
    expect(r.status).toBe(403);
    expect(r.json.error.code).toBe("faults_disabled");
    expect(r.json.error.message).toContain("ADMIN_FAULTS_ENABLED");
  });

  it("returns only the requested positions from /admin/forward, whole or top-k", async () => {
    const tokens = [5, 6, 7, 8];
    const full = await postJson(w, "/admin/forward", { model: "tiny", tokens }, ADMIN);
    expect(full.json.positions).toEqual([0, 1, 2, 3]);
    expect(full.json.logits).toHaveLength(4);
    const last = await postJson(
      w,
      "/admin/forward",
      { model: "tiny", tokens, positions: "last", top_k: 3, greedy: 1 },
      ADMIN,
    );
    expect(last.status).toBe(200);
    expect(last.json.positions).toEqual([3]);
    const row: number[] = full.json.logits[3];
    const want = row
      .map((v, i) => [v, i])
      .sort((a, b) => b[0] - a[0] || a[1] - b[1])
      .slice(0, 3);
    expect(last.json.logits[0].ids).toEqual(want.map((p) => p[1]));
    expect(last.json.logits[0].logits).toEqual(want.map((p) => p[0]));
    expect(last.json.greedy_ids).toEqual([want[0][1]]);
    const none = await postJson(w, "/admin/forward", { model: "tiny", tokens, positions: "none" }, ADMIN);
    expect(none.json.logits).toEqual([]);
    expect(Object.keys(none.json.routing)).toHaveLength(2);
  });
});

describe("bad input gets a 4xx naming the field", () => {
  const cases: [string, string, unknown, number, string | null][] = [
    ["invalid JSON", "/v1/completions", "{not json", 400, null],
    ["missing prompt", "/v1/completions", { model: "tiny" }, 400, "prompt"],
    ["max_tokens 0", "/v1/completions", { model: "tiny", prompt: [1], max_tokens: 0 }, 400, "max_tokens"],
    ["temperature 3", "/v1/completions", { model: "tiny", prompt: [1], temperature: 3 }, 400, "temperature"],
    ["top_p 0", "/v1/completions", { model: "tiny", prompt: [1], top_p: 0 }, 400, "top_p"],
    ["n 2", "/v1/completions", { model: "tiny", prompt: [1], n: 2 }, 400, "n"],
    ["too many stops", "/v1/completions", { model: "chat", prompt: "x", stop: ["a", "b", "c", "d", "e"] }, 400, "stop"],
    ["unknown field", "/v1/completions", { model: "tiny", prompt: [1], foo: 1 }, 400, "foo"],
    ["token id outside vocab", "/v1/completions", { model: "tiny", prompt: [1, 999] }, 400, "prompt[1]"],
    ["negative token id", "/v1/completions", { model: "tiny", prompt: [1, -1] }, 400, "prompt[1]"],
    ["text prompt without tokenizer", "/v1/completions", { model: "tiny", prompt: "hello" }, 400, "prompt"],
    ["unknown model", "/v1/completions", { model: "nope", prompt: [1] }, 404, "model"],
    ["context exceeded", "/v1/completions", { model: "tiny", prompt: [1], max_tokens: 100000 }, 400, "max_tokens"],
    ["empty messages", "/v1/chat/completions", { model: "chat", messages: [] }, 400, "messages"],
    [
      "bad role",
      "/v1/chat/completions",
      { model: "chat", messages: [{ role: "robot", content: "x" }] },
      400,
      "messages[0].role",
    ],
    [
      "content not text",
      "/v1/chat/completions",
      { model: "chat", messages: [{ role: "user", content: 5 }] },
      400,
      "messages[0].content",
    ],
    [
      "chat on a model without template",
      "/v1/chat/completions",
      { model: "tiny", messages: [{ role: "user", content: "x" }] },
      400,
      "model",
    ],
    [
      "template refuses alternation",
      "/v1/chat/completions",
      {
        model: "chat",
        messages: [
          { role: "assistant", content: "x" },
          { role: "assistant", content: "y" },
        ],
      },
      400,
      "messages",
    ],
    ["admin forward bad token", "/admin/forward", { model: "tiny", tokens: [300] }, 400, "tokens[0]"],
    ["empty stop string", "/v1/completions", { model: "chat", prompt: "x", stop: "" }, 400, "stop"],
    ["empty stop in a list", "/v1/completions", { model: "chat", prompt: "x", stop: ["a", ""] }, 400, "stop[1]"],
    [
      "stop string too long",
      "/v1/completions",
      { model: "chat", prompt: "x", stop: ["s".repeat(129)] },
      400,
      "stop[0]",
    ],
    ["stop of the wrong type", "/v1/completions", { model: "chat", prompt: "x", stop: 5 }, 400, "stop"],
    ["seed above 2^32 - 1", "/v1/completions", { model: "tiny", prompt: [1], seed: 4294967297 }, 400, "seed"],
    ["negative seed", "/v1/completions", { model: "tiny", prompt: [1], seed: -1 }, 400, "seed"],
    ["fractional seed", "/v1/completions", { model: "tiny", prompt: [1], seed: 1.5 }, 400, "seed"],
    ["infinite seed", "/v1/completions", '{"model":"tiny","prompt":[1],"seed":1e999}', 400, "seed"],
    [
      "max_tokens above MAX_TOKENS_CAP",
      "/v1/completions",
      { model: "tiny", prompt: [1], max_tokens: 2049 },
      400,
      "max_tokens",
    ],
    [
      "max_completion_tokens above the cap",
      "/v1/chat/completions",
      { model: "chat", messages: [{ role: "user", content: "x" }], max_completion_tokens: 1e9 },
      400,
      "max_completion_tokens",
    ],
    // Size caps come before the model lookup: a model that does not exist is never reached.
    ["prompt above MAX_PROMPT_CHARS", "/v1/completions", { model: "nope", prompt: "p".repeat(16_385) }, 400, "prompt"],
    ["too many prompt token ids", "/v1/completions", { model: "nope", prompt: Array(8193).fill(1) }, 400, "prompt"],
    [
      "too many messages",
      "/v1/chat/completions",
      { model: "nope", messages: Array(257).fill({ role: "user", content: "x" }) },
      400,
      "messages",
    ],
    [
      "too many content parts",
      "/v1/chat/completions",
      { model: "nope", messages: [{ role: "user", content: Array(65).fill({ type: "text", text: "x" }) }] },
      400,
      "messages[0].content",
    ],
    [
      "message above MAX_MESSAGE_CHARS",
      "/v1/chat/completions",
      { model: "nope", messages: [{ role: "user", content: [{ type: "text", text: "m".repeat(16_385) }] }] },
      400,
      "messages[0].content",
    ],
    [
      "messages above MAX_PROMPT_CHARS together",
      "/v1/chat/completions",
      {
        model: "nope",
        messages: [
          { role: "user", content: "m".repeat(9000) },
          { role: "user", content: "m".repeat(9000) },
        ],
      },
      400,
      "messages",
    ],
    [
      "admin forward asks for too many logits",
      "/admin/forward",
      { model: "chat", tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9] },
      400,
      "positions",
    ],
    [
      "admin forward position past the prompt",
      "/admin/forward",
      { model: "tiny", tokens: [1, 2, 3], positions: [1, 3] },
      400,
      "positions[1]",
    ],
  ];
  it.each(cases)("%s", async (_name, path, body, status, param) => {
    const r = await postJson(w, path, body, path.startsWith("/admin") ? ADMIN : {});
    expect(r.status).toBe(status);
    expect(r.json.error).toBeDefined();
    expect(typeof r.json.error.message).toBe("string");
    expect(r.json.error.param).toBe(param);
    if (param) expect(r.json.error.message).toContain(param.split("[")[0]);
  });

  it("answers unknown routes with an OpenAI-style 404", async () => {
    const res = await w.fetch("/v1/nothing");
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { type: string } }).error.type).toBe("not_found_error");
  });

  it("answers a non-JSON content type with 415 before reading the body", async () => {
    for (const headers of [
      { "content-type": "text/plain" },
      {} as Record<string, string>,
      { "content-type": "application/x-www-form-urlencoded" },
    ]) {
      const res = await w.fetch("/v1/completions", {
        method: "POST",
        headers,
        body: JSON.stringify({ model: "tiny", prompt: [1] }),
      });
      expect(res.status).toBe(415);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("unsupported_media_type");
    }
    const ok = await w.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "Application/JSON; charset=utf-8" },
      body: JSON.stringify({ model: "tiny", prompt: [1], max_tokens: 1 }),
    });
    expect(ok.status).toBe(200);
  });

  it("refuses invalid UTF-8 and a body over MAX_BODY_BYTES, chunked or not", async () => {
    const bad = await w.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: new Uint8Array([0x7b, 0xff, 0x7d]),
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { message: string } }).error.message).toContain("UTF-8");
    const big = await postJson(w, "/v1/completions", { model: "tiny", prompt: "x".repeat(1_100_000) });
    expect(big.status).toBe(413);
    expect(big.json.error.code).toBe("request_too_large");
    let left = 2_000_000;
    const body = new ReadableStream<Uint8Array>({
      pull(ctl) {
        if (left <= 0) return ctl.close();
        ctl.enqueue(new Uint8Array(65_536).fill(0x20));
        left -= 65_536;
      },
    });
    const chunked = await w.fetch("/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
      duplex: "half",
    } as RequestInit);
    expect(chunked.headers.get("content-length")).not.toBe("2000000");
    expect(chunked.status).toBe(413);
  });

  it("still serves correctly after all the bad requests", async () => {
    const { json } = await postJson(w, "/v1/completions", {
      model: "tiny",
      prompt: [1, 2, 3],
      max_tokens: 5,
      temperature: 0,
    });
    const again = await postJson(w, "/v1/completions", {
      model: "tiny",
      prompt: [1, 2, 3],
      max_tokens: 5,
      temperature: 0,
    });
    expect(again.json.choices[0].token_ids).toEqual(json.choices[0].token_ids);
  });
});
