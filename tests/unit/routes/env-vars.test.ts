/** Env var parsing: defaults when absent or empty, and errors that name the variable and its value. */
import { describe, expect, it } from "vitest";
import { boolVar, EnvVarError, intVar, listVar, secretVar } from "../../../src/routes/env-vars";
import { LIMIT_DEFAULTS, readLimits } from "../../../src/routes/limits";

describe("env vars", () => {
  it("reads integers in range and falls back to the default when absent or empty", () => {
    expect(intVar({ N: "12" }, "N", 5, 1)).toBe(12);
    expect(intVar({}, "N", 5, 1)).toBe(5);
    expect(intVar({ N: "  " }, "N", 5, 1)).toBe(5);
  });

  it.each([["abc"], ["1.5"], ["-3"], ["0"], ["1e3"], ["99999999999999999999"]])(
    "refuses N=%s naming N and the value",
    (raw) => {
      expect(() => intVar({ N: raw }, "N", 5, 1)).toThrow(EnvVarError);
      expect(() => intVar({ N: raw }, "N", 5, 1)).toThrow(`N must be an integer ≥ 1, got "${raw}"`);
    },
  );

  it("reads booleans strictly", () => {
    expect(boolVar({ B: "TRUE" }, "B", false)).toBe(true);
    expect(boolVar({ B: "false" }, "B", true)).toBe(false);
    expect(boolVar({}, "B", true)).toBe(true);
    expect(() => boolVar({ B: "yes" }, "B", false)).toThrow('B must be "true" or "false", got "yes"');
  });

  it("splits lists and treats empty secrets as unset", () => {
    expect(listVar({ L: " a, ,b " }, "L")).toEqual(["a", "b"]);
    expect(listVar({ L: "" }, "L")).toEqual([]);
    expect(secretVar({ S: "  " }, "S")).toBeUndefined();
    expect(secretVar({ S: "tok" }, "S")).toBe("tok");
  });

  it("refuses a non-string binding under a var's name", () => {
    expect(() => intVar({ N: 3 }, "N", 5, 1)).toThrow("N must be a string var, got a number");
  });

  it("reads every limit with its default, and refuses a default max_tokens above the cap", () => {
    expect(readLimits({})).toEqual(LIMIT_DEFAULTS);
    expect(readLimits({ MAX_BODY_BYTES: "2048" }).maxBodyBytes).toBe(2048);
    expect(() => readLimits({ MAX_STOP_CHARS: "x" })).toThrow('MAX_STOP_CHARS must be an integer ≥ 1, got "x"');
    expect(() => readLimits({ DEFAULT_MAX_TOKENS: "100", MAX_TOKENS_CAP: "10" })).toThrow(
      "DEFAULT_MAX_TOKENS (100) must be ≤ MAX_TOKENS_CAP (10)",
    );
  });
});
