/** Benchmark workloads: deterministic traces and the user load-file validation messages. */
import { describe, expect, it } from "vitest";
import { parseLoadFile, popularityTrace, syntheticTrace, zipfProbabilities } from "../../scripts/lib/workloads";

describe("synthetic workloads", () => {
  const opts = {
    nExperts: 16,
    s: 1,
    nWindows: 20,
    assignmentsPerWindow: 10_000,
    drift: { kind: "rotate" as const, speed: 0.5 },
    burstiness: 0.1,
    seed: 3,
  };
  it("are deterministic per seed", () => {
    expect(syntheticTrace(opts).windows).toEqual(syntheticTrace(opts).windows);
    expect(syntheticTrace({ ...opts, seed: 4 }).windows).not.toEqual(syntheticTrace(opts).windows);
  });
  it("have probability rows summing to 1 and a moving hot set", () => {
    for (const kind of ["none", "rotate", "swap", "mixed"] as const) {
      const drift =
        kind === "none"
          ? { kind }
          : kind === "rotate"
            ? { kind, speed: 0.5 }
            : kind === "swap"
              ? { kind, rate: 1, hotSet: 4, rampWindows: 2 }
              : { kind, speed: 0.1, rate: 0.5, hotSet: 2 };
      const pop = popularityTrace({ ...opts, drift });
      for (const w of pop) expect(w[0].reduce((a, b) => a + b, 0)).toBeCloseTo(1, 9);
      const hottest = pop.map((w) => w[0].indexOf(Math.max(...w[0])));
      if (kind === "none") expect(new Set(hottest).size).toBe(1);
      else expect(new Set(hottest).size).toBeGreaterThan(1);
    }
  });
  it("with requests: deterministic, about the asked assignments per window, and burstier than Poisson", () => {
    const base = {
      ...opts,
      nExperts: 32,
      nWindows: 40,
      assignmentsPerWindow: 4096,
      drift: { kind: "none" as const },
      burstiness: 0,
    };
    const req = { ...base, requests: { active: 8, meanWindows: 4, affinity: 1 } };
    expect(syntheticTrace(req).windows).toEqual(syntheticTrace(req).windows);
    const dispersion = (windows: number[][][]): number => {
      // Mean over experts of variance / mean across windows (1 for Poisson).
      let acc = 0;
      for (let e = 0; e < 32; e++) {
        const xs = windows.map((w) => w[0][e]);
        const m = xs.reduce((a, b) => a + b, 0) / xs.length;
        const v = xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1);
        acc += m > 0 ? v / m : 1;
      }
      return acc / 32;
    };
    const plain = syntheticTrace(base).windows;
    const mixed = syntheticTrace(req).windows;
    for (const w of mixed) expect(Math.abs(w[0].reduce((a, b) => a + b, 0) - 4096)).toBeLessThan(400);
    expect(dispersion(plain)).toBeLessThan(1.6);
    expect(dispersion(mixed)).toBeGreaterThan(3);
  });
  it("put Zipf weight (1 + rank)^-s on the expert at each rank", () => {
    const p = zipfProbabilities(3, 1, [2, 0, 1]);
    const z = 1 + 1 / 2 + 1 / 3;
    expect(p[2]).toBeCloseTo(1 / z, 12);
    expect(p[0]).toBeCloseTo(1 / 2 / z, 12);
  });
});

describe("load files", () => {
  it("accept [window][expert] and [window][layer][expert]", () => {
    const a = parseLoadFile("[[1,2,3],[4,5,6]]", "a.json");
    expect(a).toMatchObject({ nLayers: 1, nExperts: 3, windows: [[[1, 2, 3]], [[4, 5, 6]]] });
    const b = parseLoadFile("[[[1,2],[3,4]],[[5,6],[7,8]],[[0,0],[1,1]]]", "b.json");
    expect(b).toMatchObject({ nLayers: 2, nExperts: 2 });
    expect(b.windows).toHaveLength(3);
  });
  const bad: [string, RegExp][] = [
    ["{", /f\.json: not valid JSON/],
    ['{"windows": []}', /expected a JSON array of windows .* got object/],
    ["[[1,2]]", /need at least 2 windows .* got 1/],
    ["[[1,2],[1,2,3]]", /loads\[1\] has 3 experts, but the first window has 2/],
    ["[[1,2],[1,-2]]", /loads\[1\]\[1\] must be a finite number ≥ 0, got -2/],
    ['[[1,"2"],[1,2]]', /loads\[0\]\[1\] must be a finite number ≥ 0, got "2"/],
    ["[[1,2],[1,null]]", /loads\[1\]\[1\] must be a finite number ≥ 0, got null/],
    ["[[[1,2]],[[1,2],[3,4]]]", /loads\[1\] has 2 layers, but loads\[0\] has 1/],
    ["[[[1,2]],[1,2]]", /loads\[1\]\[0\] must be an array of per-expert counts, got number \(mixing/],
    ["[[],[]]", /loads\[0\] is empty/],
    ["[5,6]", /loads\[0\] must be an array, got number/],
  ];
  for (const [text, message] of bad) {
    it(`rejects ${text} with a message naming the place`, () => {
      expect(() => parseLoadFile(text, "f.json")).toThrow(message);
    });
  }
});
