/**
 * bench:load's workload (scripts/lib/bench-load.ts `runLoad`) against a fake OpenAI-style streaming
 * server on loopback that records what it is sent: by default every request of a run has its own
 * prompt, each level's requests are run alone just before it, then the prefix cache is reset
 * (with the admin token) before the level; without a token the run says its levels may copy their
 * references; `repeatPrompts` sends the earlier workload (8 prompts repeated, no reset).
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { runLoad, type LoadOptions } from "../../../scripts/lib/bench-load";
import { SKEW_PHASES } from "../../../scripts/lib/skewed-prompts";

type Event = { kind: "chat"; prompt: string } | { kind: "reset"; auth: string | undefined; body: string };

const TOKEN = "test-token";

/** A server streaming 2 chunks per chat (the prompt's length, then "."), recording chats and resets in order. */
async function fake(): Promise<{ url: string; server: Server; events: Event[] }> {
  const events: Event[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      if (req.url === "/admin/prefix-cache/reset" && req.method === "POST") {
        events.push({ kind: "reset", auth: req.headers.authorization, body });
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ released: 3, bytes: 1024, models: [] }));
        return;
      }
      if (req.url !== "/v1/chat/completions") {
        res.writeHead(404).end();
        return;
      }
      const prompt = (JSON.parse(body) as { messages: { content: string }[] }).messages[0].content;
      events.push({ kind: "chat", prompt });
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (const text of [String(prompt.length), "."])
        res.write(`data: ${JSON.stringify({ choices: [{ delta: { content: text }, finish_reason: null }] })}\n\n`);
      res.write(`data: ${JSON.stringify({ choices: [], usage: { completion_tokens: 2 } })}\n\n`);
      res.end("data: [DONE]\n\n");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server, events };
}

const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

const base = (url: string): LoadOptions => ({
  url,
  concurrency: [1, 3],
  requests: (n) => 2 * n,
  maxTokens: 2,
  levelMs: 30_000,
  graceMs: 5_000,
  phaseMs: 60_000,
});

describe("runLoad's prompts", () => {
  it("distinct by default: each level's requests alone first, then a reset, then the level", async () => {
    const f = await fake();
    servers.push(f.server);
    const r = await runLoad({ ...base(f.url), adminToken: TOKEN, model: "m" });
    expect(r.prompts).toBe("distinct");
    expect(r.warnings).toEqual([]);
    expect(r.references).toBe(2 + 6);
    // Level by level: its references one at a time, the reset, then its own requests (any order).
    const resets = f.events.flatMap((e, i) => (e.kind === "reset" ? [i] : []));
    expect(resets).toHaveLength(2);
    const chats = (from: number, to: number) =>
      f.events.slice(from, to).map((e) => (e.kind === "chat" ? e.prompt : "reset"));
    const levels = [
      { refs: chats(0, resets[0]), load: chats(resets[0] + 1, resets[0] + 3) },
      { refs: chats(resets[0] + 3, resets[1]), load: chats(resets[1] + 1, f.events.length) },
    ];
    expect(levels.map((l) => [l.refs.length, l.load.length])).toEqual([
      [2, 2],
      [6, 6],
    ]);
    for (const l of levels) expect([...l.load].sort()).toEqual([...l.refs].sort());
    // Every prompt of the run numbered and sent under load once: 1..8 over the two levels.
    const load = levels.flatMap((l) => l.load);
    expect(load.map((p) => Number(p.split(".")[0])).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    for (const e of f.events)
      if (e.kind === "reset") {
        expect(e.auth).toBe(`Bearer ${TOKEN}`);
        expect(JSON.parse(e.body)).toEqual({ model: "m" });
      }
    for (const l of r.levels) {
      expect(l.prefixCacheReset).toEqual({ released: 3, bytes: 1024 });
      expect(l.references).toBe(l.requests);
      expect(l.tokensChanged + l.tokensLost).toBe(0);
    }
  });

  it("keeps the phase's hot experts: the phase moves every max(4, N) requests", async () => {
    const f = await fake();
    servers.push(f.server);
    await runLoad({ ...base(f.url), concurrency: [1], requests: 8, references: false, adminToken: TOKEN });
    const words = f.events.flatMap((e) => (e.kind === "chat" ? [e.prompt.replace(/^\d+\. /, "")] : []));
    const phaseOf = (p: string) => SKEW_PHASES.findIndex((ph) => ph.variants.includes(p));
    expect(words.map(phaseOf)).toEqual([0, 0, 0, 0, 1, 1, 1, 1]);
    // No references: the reset still comes first (earlier levels' donors), no warning.
    expect(f.events[0].kind).toBe("reset");
  });

  it("without an admin token: no reset, and a warning in the report that references may be copied", async () => {
    const f = await fake();
    servers.push(f.server);
    const warned: string[] = [];
    const r = await runLoad({ ...base(f.url), concurrency: [2], onWarning: (m) => warned.push(m) });
    expect(f.events.some((e) => e.kind === "reset")).toBe(false);
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]).toMatch(/admin token.*copy/);
    expect(warned).toEqual(r.warnings);
    expect(r.levels[0].prefixCacheReset).toBeNull();
  });

  it("repeatPrompts: the 8 variants run alone once, repeated under load, no reset", async () => {
    const f = await fake();
    servers.push(f.server);
    const r = await runLoad({ ...base(f.url), repeatPrompts: true, adminToken: TOKEN });
    expect(r.prompts).toBe("repeated");
    expect(r.references).toBe(8);
    expect(f.events.some((e) => e.kind === "reset")).toBe(false);
    const variants = SKEW_PHASES.flatMap((p) => p.variants);
    const sent = f.events.flatMap((e) => (e.kind === "chat" ? [e.prompt] : []));
    expect(sent.slice(0, 8)).toEqual(variants);
    for (const p of sent) expect(variants).toContain(p);
    expect(r.levels.map((l) => l.references)).toEqual([0, 0]);
  });
});
