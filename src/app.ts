/**
 * @module The Hono app: request ids and CORS for every route, sub-apps mounted by surface, and one
 * error mapping — ApiError to its OpenAI-style body (with its headers), a misconfigured var to a
 * 500 naming it, a budget or model-format problem to a clear 5xx, anything else to a 500 without
 * internals.
 */
import { RpcDeadlineError } from "./platform/deadline";
import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import { cors } from "hono/cors";
import { requestId, type RequestIdVariables } from "hono/request-id";
import { isModelChanged } from "./platform/model-store";
import { ApiError, BudgetError } from "./errors";
import { ModelFormatError } from "./model/errors";
import { ConfigError, listVar, perEnv } from "./platform/env";
import { openai } from "./routes/openai";
import { admin } from "./routes/admin";
import { metrics } from "./routes/metrics";
import { dashboard } from "./routes/dashboard";
import { observe } from "./observability/http";
import { installExpertMetrics } from "./observability/recorder";
import { DRAIN_LIMIT_BYTES, drainBody, REFUSAL_DRAIN_BYTES } from "./routes/guards";

// The expert fan-out reports layer latency, RPCs, failovers and capacity drops through a sink
// (src/platform/events.ts), since experts may not import observability. Installed at load, so
// every isolate running this script records them; only Worker requests flush them to the hub.
installExpertMetrics();

export const app = new Hono<{ Bindings: Env; Variables: RequestIdVariables }>();

/** Longest accepted X-Request-Id; longer ones (or other characters than [A-Za-z0-9_=-]) are replaced. */
export const MAX_REQUEST_ID_CHARS = 128;

app.use("*", requestId({ limitLength: MAX_REQUEST_ID_CHARS }));
app.use("*", observe());
/** The CORS middleware of a deployment's CORS_ORIGINS (null: none), built once per env. */
const corsFor = perEnv((env) => {
  const origins = corsOrigins(env);
  if (origins.length === 0) return null;
  return cors({
    origin: origins.includes("*") ? "*" : origins,
    allowMethods: ["GET", "POST", "OPTIONS"],
    allowHeaders: ["Authorization", "Content-Type", "X-Request-Id"],
    exposeHeaders: ["X-Request-Id", "Retry-After"],
    maxAge: 600,
  });
});

app.use("*", async (c, next) => {
  const mw = corsFor(c.env);
  return mw ? mw(c, next) : next();
});

app.get("/", (c) =>
  c.json({
    name: "edge-moe",
    endpoints: [
      "GET /v1/models",
      "POST /v1/completions",
      "POST /v1/chat/completions",
      "GET /v1/placement",
      "GET /health",
    ],
  }),
);
app.get("/health", (c) => c.json({ status: "ok" }));
app.route("/v1", openai);
app.route("/admin", admin);
app.route("/metrics", metrics);
app.route("/dashboard", dashboard);

app.notFound(async (c) => {
  await drainBody(c.req.raw);
  return c.json(
    new ApiError(404, `no route for ${c.req.method} ${clip(new URL(c.req.url).pathname)}`, "not_found_error").toBody(),
    404,
  );
});

app.onError(async (err, c) => {
  // An early refusal must not cut off a client still uploading its body; a 413 (the key already
  // checked) reads up to DRAIN_LIMIT_BYTES of it, any other refusal only a little.
  await drainBody(c.req.raw, err instanceof ApiError && err.status === 413 ? DRAIN_LIMIT_BYTES : REFUSAL_DRAIN_BYTES);
  if (err instanceof ApiError) return c.json(err.toBody(), err.status, err.headers);
  if (err instanceof HTTPException) {
    const res = err.getResponse();
    return res;
  }
  if (err instanceof BudgetError) {
    return c.json(new ApiError(503, err.message, "service_unavailable", null, "model_too_large").toBody(), 503);
  }
  if (err instanceof ModelFormatError) {
    return c.json(
      new ApiError(
        500,
        `the stored model is malformed: ${err.message}`,
        "server_error",
        null,
        "model_format_error",
      ).toBody(),
      500,
    );
  }
  if (isModelChanged(err)) {
    const e = ApiError.modelChanged((err as Error).message);
    return c.json(e.toBody(), 503, e.headers);
  }
  if (err instanceof RpcDeadlineError) {
    // A host that did not answer in time: the client may retry (another instance, or after a reload).
    console.error(`request ${c.get("requestId")}: ${err.message}`);
    const e = new ApiError(503, err.message, "service_unavailable", null, "upstream_timeout", ApiError.retryIn(1));
    return c.json(e.toBody(), 503, e.headers);
  }
  if (err instanceof ConfigError) {
    // The deployment's own configuration is wrong: say which variable, so the operator can fix it.
    console.error(`request ${c.get("requestId")}: configuration error`, err.message);
    const body = new ApiError(500, `server misconfigured: ${err.message}`, "server_error", null, "config_error");
    return c.json(body.toBody(), 500);
  }
  console.error(`request ${c.get("requestId")}: unhandled error`, err);
  return c.json(new ApiError(500, "internal error; see the Worker's logs", "server_error").toBody(), 500);
});

/** CORS_ORIGINS: comma-separated origins (`https://app.example.com`) or `*`; empty = no CORS headers. */
export function corsOrigins(env: object): string[] {
  const origins = listVar(env, "CORS_ORIGINS");
  for (const o of origins) {
    if (o !== "*" && !/^https?:\/\/[A-Za-z0-9.-]+(:[0-9]{1,5})?$/.test(o)) {
      throw new ConfigError("CORS_ORIGINS", '"*" or comma-separated origins such as https://app.example.com', o);
    }
  }
  return origins;
}

/** Paths are echoed in 404s; a hostile one is cut short. */
function clip(s: string): string {
  return s.length > 200 ? `${s.slice(0, 200)}…` : s;
}
