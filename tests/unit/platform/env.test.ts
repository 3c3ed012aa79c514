/** Deployment vars: defaults when absent or empty, and errors that name the variable and its value. */
import { describe, expect, it } from "vitest";
import {
  boolVar,
  ConfigError,
  enumVar,
  intVar,
  listVar,
  mibVar,
  numberVar,
  secretVar,
  sessionDrivers,
} from "../../../src/platform/env";
import { LIMIT_DEFAULTS, readLimits } from "../../../src/routes/limits";

describe("deployment vars", () => {
  it("reads integers in range and falls back to the default when absent or empty", () => {
    expect(intVar({ N: "12" }, "N", 5, { min: 1 })).toBe(12);
    expect(intVar({}, "N", 5, { min: 1 })).toBe(5);
    expect(intVar({ N: "  " }, "N", 5, { min: 1 })).toBe(5);
    expect(intVar({ N: 7 }, "N", 5, { min: 1 })).toBe(7); // unquoted in wrangler.toml
  });

  it.each([["abc"], ["1.5"], ["-3"], ["0"], ["1e3"], ["99999999999999999999"]])(
    "refuses N=%s naming N and the value",
    (raw) => {
      expect(() => intVar({ N: raw }, "N", 5, { min: 1 })).toThrow(ConfigError);
      expect(() => intVar({ N: raw }, "N", 5, { min: 1 })).toThrow(`N must be an integer ≥ 1, got "${raw}"`);
    },
  );

  it("reads numbers, enums and MiB sizes with one behaviour: a bad value names the var", () => {
    expect(numberVar({ X: "0.5" }, "X", 1, { above: 0 })).toBe(0.5);
    expect(numberVar({}, "X", null)).toBeNull();
    expect(() => numberVar({ X: "0" }, "X", 1, { above: 0 })).toThrow('X must be a number > 0, got "0"');
    expect(enumVar({ E: "int8" }, "E", ["none", "int8"], "none")).toBe("int8");
    expect(() => enumVar({ E: "fp4" }, "E", ["none", "int8"], "none")).toThrow('E must be one of "none", "int8"');
    expect(mibVar({ M: "1.5" }, "M", 96)).toBe(1.5 * 1024 * 1024);
    expect(mibVar({}, "M", 96)).toBe(96 * 1024 * 1024);
    expect(() => mibVar({ M: "-1" }, "M", 96)).toThrow('M must be a number of MiB > 0, got "-1"');
  });

  it("reads SESSION_DRIVERS: 1 by default, 1–64, a bad value named", () => {
    expect(sessionDrivers({})).toBe(1);
    expect(sessionDrivers({ SESSION_DRIVERS: "4" })).toBe(4);
    for (const bad of ["0", "65", "two", "1.5"]) {
      expect(() => sessionDrivers({ SESSION_DRIVERS: bad })).toThrow(ConfigError);
      expect(() => sessionDrivers({ SESSION_DRIVERS: bad })).toThrow(/SESSION_DRIVERS/);
    }
  });

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

  it("refuses a binding that is not a value under a var's name, and clips long values", () => {
    expect(() => intVar({ N: {} }, "N", 5)).toThrow('N must be a string, got "a object"');
    expect(() => intVar({ N: "x".repeat(500) }, "N", 5)).toThrow(`got "${"x".repeat(64)}…"`);
  });

  it("reads every limit with its default, and refuses a default max_tokens above the cap", () => {
    expect(readLimits({})).toEqual(LIMIT_DEFAULTS);
    expect(readLimits({ MAX_BODY_BYTES: "2048" }).maxBodyBytes).toBe(2048);
    expect(() => readLimits({ MAX_STOP_CHARS: "x" })).toThrow('MAX_STOP_CHARS must be an integer ≥ 1, got "x"');
    expect(() => readLimits({ DEFAULT_MAX_TOKENS: "100", MAX_TOKENS_CAP: "10" })).toThrow(
      'DEFAULT_MAX_TOKENS must be ≤ MAX_TOKENS_CAP (10), got "100"',
    );
  });
});
