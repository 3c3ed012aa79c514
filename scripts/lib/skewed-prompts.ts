/**
 * The skewed, moving workload shared by `npm run load:skewed` and `npm run bench:load`: phase A
 * repeats one word (its tokens route to a few hot experts per layer), phase B counts (the hot set
 * moves). Each phase has a few variants of its prompt, so a benchmark has several distinct
 * requests whose greedy output it can check, all routed to the same hot experts.
 */

export interface SkewPhase {
  name: string;
  /** The phase's prompt (what load:skewed sends). */
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
