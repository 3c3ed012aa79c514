/** API keys: digests parsed from the secret, keys matched by SHA-256 in constant time. */
import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { constantTimeEqual, hex, matchKey, parseKeyHashes } from "../../../src/routes/api-keys";

const sha = (s: string) => createHash("sha256").update(s).digest("hex");

describe("API keys", () => {
  it("is off when API_KEY_HASHES is absent or empty", () => {
    expect(parseKeyHashes({})).toEqual([]);
    expect(parseKeyHashes({ API_KEY_HASHES: " " })).toEqual([]);
  });

  it("parses comma-separated digests, upper or lower case", () => {
    const hs = parseKeyHashes({ API_KEY_HASHES: `${sha("a")}, ${sha("b").toUpperCase()},` });
    expect(hs.map(hex)).toEqual([sha("a"), sha("b")]);
  });

  it("refuses a malformed entry naming its position, without echoing the secret", () => {
    const bad = "not-a-digest-secret";
    let msg = "";
    try {
      parseKeyHashes({ API_KEY_HASHES: `${sha("a")},${bad}` });
    } catch (err) {
      msg = (err as Error).message;
    }
    expect(msg).toContain("API_KEY_HASHES must be comma-separated SHA-256 digests");
    expect(msg).toContain("entry 2");
    expect(msg).not.toContain(bad);
  });

  it("matches a key against its digest and nothing else", async () => {
    const hs = parseKeyHashes({ API_KEY_HASHES: `${sha("first")},${sha("second")}` });
    expect(await matchKey("second", hs)).toBe(1);
    expect(await matchKey("first", hs)).toBe(0);
    expect(await matchKey("third", hs)).toBe(-1);
    expect(await matchKey(sha("first"), hs)).toBe(-1); // the digest itself is not a key
  });

  it("compares bytes without regard to where they differ", () => {
    const a = new Uint8Array([1, 2, 3]);
    expect(constantTimeEqual(a, new Uint8Array([1, 2, 3]))).toBe(true);
    expect(constantTimeEqual(a, new Uint8Array([0, 2, 3]))).toBe(false);
    expect(constantTimeEqual(a, new Uint8Array([1, 2, 4]))).toBe(false);
    expect(constantTimeEqual(a, new Uint8Array([1, 2]))).toBe(false);
  });
});
