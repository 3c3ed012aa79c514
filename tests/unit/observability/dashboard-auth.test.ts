/** The dashboard cookie holds a digest of the admin token, never the token, and follows token changes. */
import { describe, expect, it } from "vitest";
import { cookieValue, sameSecret } from "../../../src/observability/dashboard-auth";

describe("dashboard auth", () => {
  it("compares secrets by value", async () => {
    expect(await sameSecret("s3cret", "s3cret")).toBe(true);
    expect(await sameSecret("s3cret", "s3cres")).toBe(false);
    expect(await sameSecret("s3cret", "s3cret ")).toBe(false);
    expect(await sameSecret("", "x")).toBe(false);
  });

  it("derives a cookie that does not reveal the token and changes when the token does", async () => {
    const a = await cookieValue("token-a");
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(a).not.toContain("token-a");
    expect(await cookieValue("token-a")).toBe(a);
    expect(await cookieValue("token-b")).not.toBe(a);
    // The cookie is not the digest the token comparison uses, so it cannot be replayed as a token.
    expect(await sameSecret(a, "token-a")).toBe(false);
  });
});
