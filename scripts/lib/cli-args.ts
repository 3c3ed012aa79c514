/**
 * @module The argument handling of the CLIs whose options are all counts (chaos, fuzz): `--help`
 * prints the usage and exits 0; every `--name N` must be a positive integer, else the CLI says which
 * one and what it got, and exits 2.
 */
import { parseArgs } from "node:util";

/** `--name N` options with their defaults, parsed from process.argv (exits on --help or bad input). */
export function positiveIntOptions<K extends string>(usage: string, defaults: Record<K, number>): Record<K, number> {
  if (process.argv.includes("--help") || process.argv.includes("-h")) {
    console.log(usage);
    process.exit(0);
  }
  const names = Object.keys(defaults) as K[];
  const { values } = parseArgs({
    options: Object.fromEntries(names.map((n) => [n, { type: "string", default: String(defaults[n]) }])) as Record<
      string,
      { type: "string"; default: string }
    >,
  });
  const out = {} as Record<K, number>;
  for (const name of names) {
    const raw = String(values[name]);
    const n = Number(raw);
    if (!Number.isSafeInteger(n) || n < 1) {
      console.error(`--${name} must be a positive integer, got "${raw}"`);
      process.exit(2);
    }
    out[name] = n;
  }
  return out;
}
