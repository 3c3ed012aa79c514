/**
 * @module `npm run lint`'s second half: no line over 120 characters in the project's own source
 * (Biome's formatter wraps code at 120 but leaves long strings and comments as they are).
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

const MAX = 120;

if (process.argv.includes("--help")) {
  console.log(
    "usage: tsx scripts/check-line-length.ts\n\n" +
      "Lists every tracked .ts/.mjs line longer than 120 characters; exits 1 if any.",
  );
  process.exit(0);
}

const files = execFileSync(
  "git",
  ["ls-files", "-co", "--exclude-standard", "src", "scripts", "tests", "assembly", "*.ts"],
  {
    encoding: "utf8",
  },
)
  .split("\n")
  .filter((f) => /\.(ts|mjs)$/.test(f) && !f.startsWith("tests/fixtures/"));

const long: string[] = [];
for (const file of new Set(files)) {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    continue; // listed but deleted in the work tree
  }
  text.split("\n").forEach((line, i) => {
    if ([...line].length > MAX) long.push(`${file}:${i + 1}: ${[...line].length} characters`);
  });
}
if (long.length > 0) {
  console.error(`${long.length} line(s) over ${MAX} characters:\n${long.join("\n")}`);
  process.exit(1);
}
console.log(`line length: ${files.length} files, none over ${MAX} characters`);
