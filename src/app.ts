/**
 * @module The Hono app: sub-apps mounted by surface, and one error mapping — ApiError to its
 * OpenAI-style body, a budget or model-format problem to a clear 5xx, anything else to a 500
 * without internals.
 */
import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import { ApiError, BudgetError } from "./errors";
import { ModelFormatError } from "./model/errors";
import { ConfigError } from "./platform/env";
import { openai } from "./routes/openai";
import { admin } from "./routes/admin";

export const app = new Hono<{ Bindings: Env }>();

app.get("/", (c) =>
  c.json({ name: "edge-moe", endpoints: ["GET /v1/models", "POST /v1/completions", "POST /v1/chat/completions", "GET /v1/placement", "GET /health"] }),
);
app.get("/health", (c) => c.json({ status: "ok" }));
app.route("/v1", openai);
app.route("/admin", admin);

app.notFound((c) => c.json(new ApiError(404, `no route for ${c.req.method} ${new URL(c.req.url).pathname}`, "not_found_error").toBody(), 404));

app.onError((err, c) => {
  if (err instanceof ApiError) {
    if (err.retryAfter !== null) c.header("Retry-After", String(err.retryAfter));
    return c.json(err.toBody(), err.status);
  }
  if (err instanceof HTTPException) {
    const res = err.getResponse();
    return res;
  }
  if (err instanceof BudgetError) {
    return c.json(new ApiError(503, err.message, "service_unavailable", null, "model_too_large").toBody(), 503);
  }
  if (err instanceof ModelFormatError) {
    return c.json(new ApiError(500, `the stored model is malformed: ${err.message}`, "server_error", null, "model_format_error").toBody(), 500);
  }
  if (err instanceof ConfigError) {
    // The deployment's own configuration is wrong: say which variable, so the operator can fix it.
    console.error("configuration error", err.message);
    const body = new ApiError(500, `server misconfigured: ${err.message}`, "server_error", null, "config_error").toBody();
    return c.json(body, 500);
  }
  console.error("unhandled error", err);
  return c.json(new ApiError(500, "internal error; see the Worker's logs", "server_error").toBody(), 500);
});
