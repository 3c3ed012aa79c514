/**
 * The skewed, moving workload shared by `npm run load:skewed`, `npm run bench:load` and
 * `npm run profile:load`: phase A repeats one word (its tokens route to a few hot experts per
 * layer), phase B counts (the hot set moves). Each phase has a few variants of its prompt, so a
 * benchmark has requests of several lengths, all routed to the same hot experts.
 *
 * Each request's prompt is made its own by a number at its start ("17. apple apple …",
 * `numberedPrompt`): with prefix sharing a repeated prompt copies the K/V of a live or kept
 * generation instead of running it, so a workload of a few repeated prompts measures copies, not
 * what distinct users get, and its experts see decode rows only — not the skew.
 */

export interface SkewPhase {
  name: string;
  /** The phase's prompt (what load:skewed sends, numbered). */
  prompt: string;
  /** Variants with the same skew: repeated words or counts of different lengths. */
  variants: string[];
}

const words = (w: string, n: number) => Array.from({ length: n }, () => w).join(" ");
const count = (n: number) => Array.from({ length: n }, (_, i) => String(i + 1)).join(" ");

export const SKEW_PHASES: readonly SkewPhase[] = [
  { name: "A", prompt: words("apple", 12), variants: [12, 9, 14, 10].map((n) => words("apple", n)) },
  { name: "B", prompt: count(24), variants: [24, 18, 28, 20].map(count) },
];

/**
 * `content` as user `n`'s own prompt: its number first, so two requests share only what comes
 * before it (the chat template's opening) and the rest keeps its phase's skew.
 */
export function numberedPrompt(n: number, content: string): string {
  return `${n}. ${content}`;
}

/** One request of the workload: its phase (an index into SKEW_PHASES) and its prompt. */
export interface SkewedRequest {
  phase: number;
  content: string;
}

/**
 * `total` requests with distinct prompts, numbered `first`, `first + 1`, …: the hot set moves every
 * `phaseEvery` requests (A, B, A, …), and within a phase the variants are taken in turn. A run
 * numbers on from its last request, so no prompt of a run repeats another.
 */
export function distinctRequests(first: number, total: number, phaseEvery: number): SkewedRequest[] {
  if (!Number.isInteger(phaseEvery) || phaseEvery < 1)
    throw new RangeError(`phaseEvery must be a whole number ≥ 1, got ${phaseEvery}`);
  return Array.from({ length: total }, (_, k) => {
    const phase = Math.floor(k / phaseEvery) % SKEW_PHASES.length;
    const { variants } = SKEW_PHASES[phase];
    return { phase, content: numberedPrompt(first + k, variants[k % variants.length]) };
  });
}
