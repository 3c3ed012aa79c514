/**
 * @module Browser access to the dashboard: a browser cannot send a bearer header when a person
 * opens a link, so `/dashboard?token=ADMIN_TOKEN` checks the token once, sets an HttpOnly cookie
 * holding a digest of it (never the token itself), and redirects to the bare URL so the token
 * leaves the address bar and history. The dashboard's data endpoint accepts that cookie or the
 * usual `Authorization: Bearer ADMIN_TOKEN`.
 */
import { secretVar } from "../platform/env";
import type { Context } from "hono";
import { getCookie, setCookie } from "hono/cookie";

export const DASHBOARD_COOKIE = "edge_moe_dashboard";

async function digest(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(`edge-moe-dashboard:${text}`)));
}

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Compares two secrets in time independent of where they differ (both are hashed to 32 bytes first). */
export async function sameSecret(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([digest(a), digest(b)]);
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i];
  return diff === 0;
}

export async function cookieValue(token: string): Promise<string> {
  return hex(await digest(`cookie:${token}`));
}

/** True when the request carries the dashboard cookie for the current ADMIN_TOKEN. */
export async function hasDashboardCookie(c: Context<{ Bindings: Env }>): Promise<boolean> {
  const token = secretVar(c.env, "ADMIN_TOKEN");
  const got = getCookie(c, DASHBOARD_COOKIE);
  if (!token || !got) return false;
  return sameSecret(got, await cookieValue(token));
}

export async function setDashboardCookie(c: Context<{ Bindings: Env }>, token: string): Promise<void> {
  const https = new URL(c.req.url).protocol === "https:";
  setCookie(c, DASHBOARD_COOKIE, await cookieValue(token), {
    httpOnly: true,
    sameSite: "Strict",
    path: "/dashboard",
    secure: https,
    maxAge: 12 * 3600,
  });
}
