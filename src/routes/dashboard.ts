/**
 * @module GET /dashboard (the live expert heat-map page) and GET /dashboard/data (the JSON it
 * polls). Open `/dashboard?token=<ADMIN_TOKEN>` once: the token is exchanged for an HttpOnly
 * cookie and the page reloads without it. The data endpoint also takes the admin bearer token.
 */
import { secretVar } from "../platform/env";
import { Hono } from "hono";
import { ApiError } from "../errors";
import { MODEL_ID_PATTERN } from "../platform/model-store";
import { collect } from "../observability/collect";
import { dashboardData } from "../observability/dashboard-data";
import { hasDashboardCookie, sameSecret, setDashboardCookie } from "../observability/dashboard-auth";
import { DASHBOARD_HTML, LOGIN_HTML } from "../observability/dashboard-page";
import { requireAdmin } from "./admin";

export const dashboard = new Hono<{ Bindings: Env }>();

dashboard.use("*", async (c, next) => {
  const adminToken = secretVar(c.env, "ADMIN_TOKEN");
  if (!adminToken)
    throw new ApiError(403, "the dashboard is disabled: set the ADMIN_TOKEN secret to enable it", "permission_error");
  if (await hasDashboardCookie(c)) return next();
  const token = c.req.query("token");
  if (token !== undefined && new URL(c.req.url).pathname === "/dashboard") {
    if (!(await sameSecret(token, adminToken))) {
      return c.html(LOGIN_HTML.replace("<!--error-->", '<p class="err">That token is not the admin token.</p>'), 401);
    }
    await setDashboardCookie(c, token);
    const url = new URL(c.req.url);
    url.searchParams.delete("token");
    return c.redirect(url.pathname + url.search, 303);
  }
  if (c.req.header("authorization")) return requireAdmin(c, next);
  if (new URL(c.req.url).pathname === "/dashboard") return c.html(LOGIN_HTML, 401);
  return requireAdmin(c, next);
});

dashboard.get("/", (c) => c.html(DASHBOARD_HTML, 200, { "cache-control": "no-store" }));

dashboard.get("/data", async (c) => {
  const model = c.req.query("model") ?? c.env.DEFAULT_MODEL;
  if (!MODEL_ID_PATTERN.test(model)) throw ApiError.invalid("model", 'must be a model id such as "demo-mixtral"');
  const collected = await collect(c.env, model);
  return c.json(dashboardData(collected, model), 200, { "cache-control": "no-store" });
});
