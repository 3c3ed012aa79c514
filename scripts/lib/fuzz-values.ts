/**
 * @module The fuzz's value generators: a seeded pick, random text over awkward characters, deep
 * nesting, and the table of hostile JSON values one field of a valid body is replaced with.
 */

export type Rng = () => number;

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)];
export const int = (rng: Rng, lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1));

export function randomText(rng: Rng, n: number): string {
  const alphabet = [
    "a",
    "Z",
    "0",
    " ",
    "\n",
    "\t",
    '"',
    "\\",
    "/",
    "{",
    "}",
    "é",
    "中",
    "😀",
    "\u0000",
    "\u202e",
    "\ufeff",
  ];
  let s = "";
  for (let i = 0; i < n; i++) s += pick(rng, alphabet);
  return s;
}

function nested(depth: number, leaf: Json): Json {
  let v: Json = leaf;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

/** A hostile JSON value; `raw` marks values JSON cannot express but the wire can (1e999). */
export function hostileValue(rng: Rng): { value?: Json; raw?: string } {
  switch (int(rng, 0, 27)) {
    case 0:
      return { value: null };
    case 1:
      return { value: true };
    case 2:
      return { value: -1 };
    case 3:
      return { value: 0 };
    case 4:
      return { value: 1.5 };
    case 5:
      return { value: 1e308 };
    case 6:
      return { value: -1e308 };
    case 7:
      return { raw: "1e999" };
    case 8:
      return { raw: "-1e999" };
    case 9:
      return { value: 2 ** 53 + 2 };
    case 10:
      return { value: 4294967296 };
    case 11:
      return { value: -0.0000001 };
    case 12:
      return { value: "" };
    case 13:
      return { value: "NaN" };
    case 14:
      return { value: randomText(rng, int(rng, 1, 40)) };
    case 15:
      return { value: "x".repeat(int(rng, 1000, 200_000)) };
    case 16:
      return { value: [] };
    case 17:
      return { value: {} };
    case 18:
      return { value: nested(int(rng, 10, 2000), 1) };
    case 19:
      return { raw: "[".repeat(20_000) + "]".repeat(20_000) };
    case 20:
      return { value: Array.from({ length: int(rng, 100, 20_000) }, () => int(rng, -5, 300)) };
    case 21:
      return { value: Array.from({ length: int(rng, 5, 300) }, () => "s") };
    case 22:
      return { value: Object.fromEntries(Array.from({ length: int(rng, 10, 2000) }, (_, i) => [`k${i}`, i])) };
    case 23:
      return { raw: '"\\ud800"' };
    case 24:
      return { value: [{ role: "user", content: "x" }] };
    case 25:
      return { value: [{ type: "image_url", image_url: { url: "http://127.0.0.1/x.png" } }] };
    case 26:
      return { value: "tiny" };
    default:
      return { value: int(rng, -1000, 100_000) };
  }
}
