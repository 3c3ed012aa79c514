/**
 * @module The k largest logits of a row without sorting the vocabulary: one pass keeping a
 * min-heap of the best k (O(V log k)), then the k sorted. /admin/forward's `top_k` on a
 * 150,000-id vocabulary costs a scan, not a sort per row.
 */

export interface TopLogits {
  ids: number[];
  logits: number[];
}

/** The k largest values of `row`, largest first (ties: lower id first; NaN ranks below everything). */
export function topLogits(row: Float32Array, k: number): TopLogits {
  const m = Math.max(0, Math.min(k, row.length));
  const key = (i: number) => (Number.isNaN(row[i]) ? Number.NEGATIVE_INFINITY : row[i]);
  // a ranks below b: smaller value, or the same value and a higher id.
  const below = (a: number, b: number) => key(a) < key(b) || (key(a) === key(b) && a > b);
  const heap = new Int32Array(m); // ids; heap[0] is the worst one kept
  let size = 0;
  const down = (at: number) => {
    for (;;) {
      const l = 2 * at + 1;
      const r = l + 1;
      let w = at;
      if (l < size && below(heap[l], heap[w])) w = l;
      if (r < size && below(heap[r], heap[w])) w = r;
      if (w === at) return;
      [heap[at], heap[w]] = [heap[w], heap[at]];
      at = w;
    }
  };
  for (let i = 0; i < row.length && m > 0; i++) {
    if (size < m) {
      let at = size++;
      heap[at] = i;
      while (at > 0) {
        const up = (at - 1) >> 1;
        if (!below(heap[at], heap[up])) break;
        [heap[at], heap[up]] = [heap[up], heap[at]];
        at = up;
      }
    } else if (below(heap[0], i)) {
      heap[0] = i;
      down(0);
    }
  }
  const ids = Array.from(heap.subarray(0, size)).sort((a, b) => (below(a, b) ? 1 : below(b, a) ? -1 : 0));
  return { ids, logits: ids.map((i) => row[i]) };
}
