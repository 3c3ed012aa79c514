/**
 * @module GET /metrics: Prometheus text exposition of the whole deployment, behind the admin
 * bearer token. Counters and histograms come merged from every isolate via the MetricsHub; loads,
 * placement and instance memory are read from the Durable Objects at scrape time (`collect`).
 */
import { Hono } from "hono";
import { ApiError } from "../errors";
import { MODEL_ID_PATTERN } from "../platform/model-store";
import { collect } from "../observability/collect";
import { PROMETHEUS_CONTENT_TYPE, renderFamilies } from "../observability/prometheus";
import { scrapeFamilies } from "../observability/scrape";
import { requireAdmin } from "./admin";

export const metrics = new Hono<{ Bindings: Env }>();

metrics.use("*", requireAdmin);

metrics.get("/", async (c) => {
  const model = c.req.query("model");
  if (model !== undefined && !MODEL_ID_PATTERN.test(model))
    throw ApiError.invalid("model", 'must be a model id such as "demo-mixtral"');
  const collected = await collect(c.env, model);
  return c.body(renderFamilies(scrapeFamilies(collected)), 200, {
    "content-type": PROMETHEUS_CONTENT_TYPE,
    "cache-control": "no-store",
  });
});
