/**
 * The client side of `npm run bench:load`: the loopback-only check on the target URL, one
 * streaming chat request timed chunk by chunk (TTFT, time per output token, what each chunk said,
 * how it ended), the prefix-cache reset, and percentiles. Kept apart from the load driver so each reads on its own.
 */

/** Hosts that reach this machine only. A benchmark that floods a server must never leave it. */
const LOOPBACK = /^(localhost|127(?:\.\d{1,3}){3}|\[::1\])$/;

/** The URL when it names a loopback host over http(s); otherwise throws naming what to pass. */
export function loopbackUrl(raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`--url must be a URL such as http://127.0.0.1:8787, got "${raw}"`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new Error(`--url must be http:// or https://, got "${url.protocol}"`);
  if (!LOOPBACK.test(url.hostname))
    throw new Error(
      `--url must be a loopback address (localhost, 127.x.x.x, [::1]): bench:load floods the server it ` +
        `drives, so it refuses "${url.hostname}"`,
    );
  return url;
}

export interface StreamResult {
  /** HTTP status (0 when the request did not get a response). */
  status: number;
  /** Retry-After was present on a refusal. */
  retryAfter: boolean;
  /** The error body's `code` of a refusal or failure, or an in-band error event's. */
  code: string | null;
  /** What went wrong (null when the stream completed with [DONE] and no error event). */
  error: string | null;
  /** Each chunk's delta content, in order: one per generated-token event. */
  chunks: string[];
  finish: string | null;
  /** usage.completion_tokens from the final usage chunk, else the chunks received (a cut stream). */
  completionTokens: number;
  /** The caller's signal ended it (the benchmark's own time limit), not the server. */
  aborted: boolean;
  /** Request sent → first chunk (ms); null without one. */
  ttftMs: number | null;
  /** Mean time per output token after the first (ms); null with fewer than 2 tokens. */
  tpotMs: number | null;
  startedAt: number;
  endedAt: number;
}

export interface ChatRequest {
  model?: string;
  content: string;
  /** null: send no max_tokens (a default chat: the server's DEFAULT_MAX_TOKENS, bounded by what fits). */
  maxTokens: number | null;
}

interface ChatChunk {
  choices?: { delta?: { content?: string }; finish_reason?: string | null }[];
  usage?: { completion_tokens?: number };
  error?: { message?: string; code?: string | null };
}

/** Sends one greedy streaming chat completion and reads it to the end (or until `signal` aborts). */
export async function streamChat(
  base: URL,
  req: ChatRequest,
  headers: Record<string, string>,
  signal?: AbortSignal,
): Promise<StreamResult> {
  const r: StreamResult = {
    status: 0,
    retryAfter: false,
    code: null,
    error: null,
    chunks: [],
    finish: null,
    completionTokens: 0,
    aborted: false,
    ttftMs: null,
    tpotMs: null,
    startedAt: performance.now(),
    endedAt: 0,
  };
  let firstAt = 0;
  let lastAt = 0;
  try {
    const res = await fetch(new URL("/v1/chat/completions", base), {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify({
        ...(req.model ? { model: req.model } : {}),
        messages: [{ role: "user", content: req.content }],
        ...(req.maxTokens === null ? {} : { max_tokens: req.maxTokens }),
        temperature: 0,
        seed: 1,
        stream: true,
        stream_options: { include_usage: true },
      }),
      signal,
    });
    r.status = res.status;
    if (res.status !== 200 || !res.body) {
      r.retryAfter = res.headers.has("retry-after");
      const text = await res.text();
      try {
        const body = JSON.parse(text) as ChatChunk;
        r.code = body.error?.code ?? null;
        r.error = `${res.status}: ${body.error?.message ?? text.slice(0, 200)}`;
      } catch {
        r.error = `${res.status}: ${text.slice(0, 200)}`;
      }
      return r;
    }
    let done = false;
    let buf = "";
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { done: end, value } = await reader.read();
      if (end) break;
      buf += value;
      let at: number;
      while ((at = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, at);
        buf = buf.slice(at + 2);
        const data = event
          .split("\n")
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart())
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") {
          done = true;
          continue;
        }
        const chunk = JSON.parse(data) as ChatChunk;
        if (chunk.error) {
          r.code = chunk.error.code ?? null;
          r.error = `in-band error after a 200: ${chunk.error.message ?? "(no message)"}`;
          continue;
        }
        if (chunk.usage) r.completionTokens = chunk.usage.completion_tokens ?? 0;
        const choice = chunk.choices?.[0];
        if (!choice) continue;
        const now = performance.now();
        if (r.chunks.length === 0) firstAt = now;
        lastAt = now;
        r.chunks.push(choice.delta?.content ?? "");
        if (choice.finish_reason) r.finish = choice.finish_reason;
      }
    }
    if (!done && !r.error) r.error = "the stream ended without [DONE]";
  } catch (err) {
    r.aborted = signal?.aborted ?? false;
    r.error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  } finally {
    r.endedAt = performance.now();
  }
  if (r.completionTokens === 0) r.completionTokens = r.chunks.length;
  if (r.chunks.length > 0) r.ttftMs = firstAt - r.startedAt;
  if (r.completionTokens > 1) r.tpotMs = (lastAt - firstAt) / (r.completionTokens - 1);
  return r;
}

/**
 * Releases the prefix-sharing donors the server's isolate keeps (`POST /admin/prefix-cache/reset`,
 * of `model` or of every model it has loaded): what they held, or an error naming the status.
 */
export async function resetPrefixCache(
  base: URL,
  adminToken: string,
  model?: string,
): Promise<{ released: number; bytes: number }> {
  const res = await fetch(new URL("/admin/prefix-cache/reset", base), {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${adminToken}` },
    body: JSON.stringify(model ? { model } : {}),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`POST /admin/prefix-cache/reset answered ${res.status}: ${text.slice(0, 200)}`);
  const body = JSON.parse(text) as { released: number; bytes: number };
  return { released: body.released, bytes: body.bytes };
}

/**
 * How a request ended, as the serving contract allows: "complete" (200, whole stream), "refused"
 * (429 or 503 with Retry-After: the client may retry), else "failed" (a 500, a cut stream, an
 * in-band error, a refusal without Retry-After).
 */
export function outcomeOf(r: StreamResult): "complete" | "refused" | "failed" {
  if (r.status === 200 && !r.error) return "complete";
  if ((r.status === 429 || r.status === 503) && r.retryAfter) return "refused";
  return "failed";
}

/** Nearest-rank percentile (p in 0..100) of `xs`; null when empty. */
export function percentile(xs: number[], p: number): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/**
 * How a stream's chunks differ from the same request run alone: `changed` counts positions whose
 * text differs, `lost` the reference's chunks the stream never got. Both 0 = the same tokens.
 */
export function compareChunks(got: string[], reference: string[], cut = false): { changed: number; lost: number } {
  let changed = 0;
  // A stream the benchmark cut short is compared on what it received; its missing tail is not lost.
  if (cut) reference = reference.slice(0, got.length);
  for (let i = 0; i < Math.min(got.length, reference.length); i++) if (got[i] !== reference[i]) changed++;
  return {
    changed: changed + Math.max(0, got.length - reference.length),
    lost: Math.max(0, reference.length - got.length),
  };
}
