/**
 * bench:load --after-burst's comparison in turn (scripts/lib/alternate-single.ts), against two fake
 * OpenAI-style streaming servers on loopback: the requests alternate A B, B A, …, never overlap,
 * both servers get the same prompts, each side's tok/s is its tokens over its own requests' time,
 * and answers that differ between the servers are counted.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { alternateSingle } from "../../../scripts/lib/alternate-single";

interface Fake {
  url: string;
  server: Server;
  prompts: string[];
}

const log: { server: string; event: "start" | "end"; at: number }[] = [];

/** A server answering every chat with `tokens` chunks, `msPerToken` apart; `word` is each chunk's text. */
async function fake(name: string, msPerToken: number, word: (prompt: string) => string, tokens = 4): Promise<Fake> {
  const prompts: string[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", async () => {
      const prompt = (JSON.parse(body) as { messages: { content: string }[] }).messages[0].content;
      prompts.push(prompt);
      log.push({ server: name, event: "start", at: performance.now() });
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (let i = 0; i < tokens; i++) {
        await new Promise((r) => setTimeout(r, msPerToken));
        const chunk = {
          choices: [{ delta: { content: word(prompt) }, finish_reason: i === tokens - 1 ? "length" : null }],
        };
        res.write(`data: ${JSON.stringify(chunk)}\n\n`);
      }
      res.write(`data: ${JSON.stringify({ choices: [], usage: { completion_tokens: tokens } })}\n\n`);
      res.write("data: [DONE]\n\n");
      log.push({ server: name, event: "end", at: performance.now() });
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, server, prompts };
}

const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  log.length = 0;
});

describe("alternateSingle", () => {
  it("alternates the two servers request by request, never overlapping, with the same prompts", async () => {
    const a = await fake("a", 2, () => "x");
    const b = await fake("b", 8, () => "x");
    servers.push(a.server, b.server);
    const r = await alternateSingle({ url: a.url }, { url: b.url }, { maxTokens: 4, requests: 6, phaseRequests: 2 });
    // Order: A B, B A, A B, … (the pair order flips so neither side always runs second).
    const starts = log.filter((e) => e.event === "start").map((e) => e.server);
    expect(starts.join("")).toBe("abbaabbaabba");
    // One request at a time: every start comes after the previous request's end.
    for (let i = 1; i < log.length; i++) expect(log[i].event).toBe(i % 2 === 0 ? "start" : "end");
    expect(a.prompts).toEqual(b.prompts);
    expect(new Set(a.prompts).size).toBeGreaterThan(1); // the hot set moved (phaseRequests 2)
    expect(r.a.requests).toBe(6);
    expect(r.b.requests).toBe(6);
    expect(r.a.completionTokens).toBe(24);
    expect(r.a.failed + r.b.failed).toBe(0);
    // b streams 4× slower per token: its tok/s (its tokens over its own requests' time) is lower.
    expect(r.ratio).toBeGreaterThan(1.5);
    expect(r.a.decodeTokensPerSec).toBeCloseTo(r.a.completionTokens / r.a.seconds, 6);
    expect(r.tokensDiffering).toBe(0);
    expect(r.a.serverCpuMsPerToken).toBeNull();
  });

  it("aborts a request that runs past its limit and counts it failed, instead of waiting for ever", async () => {
    const a = await fake("a", 1, () => "x");
    const b = await fake("b", 400, () => "x"); // 4 tokens 400 ms apart: past a 200 ms limit
    servers.push(a.server, b.server);
    const t0 = performance.now();
    const r = await alternateSingle(
      { url: a.url },
      { url: b.url },
      { maxTokens: 4, requests: 2, phaseRequests: 2, requestTimeoutMs: 200 },
    );
    expect(r.b.failed).toBe(2);
    expect(r.a.failed).toBe(0);
    expect(performance.now() - t0).toBeLessThan(1500);
  });

  it("counts the chunks that differ between the two servers' answers to the same request", async () => {
    const a = await fake("a", 1, () => "x");
    const b = await fake("b", 1, (p) => (p.includes("apple") ? "y" : "x"));
    servers.push(a.server, b.server);
    const r = await alternateSingle({ url: a.url }, { url: b.url }, { maxTokens: 4, requests: 4, phaseRequests: 2 });
    // The first 2 requests are phase A's ("apple …"): their 4 chunks each differ.
    expect(r.tokensDiffering).toBe(8);
  });
});
