/**
 * @module The allocator that owns the kernels' Wasm linear memory: 16-byte-aligned blocks from a
 * sorted, coalesced first-fit free list above a bump top, grown in chunks and capped by a software
 * byte budget (MemoryBudgetError when an allocation would pass it). Knows nothing of the kernels.
 */

/** Per-isolate Wasm memory cap the code is built around: 1664 pages of 64 KiB = 104 MiB
 * (scripts/build-wasm.mjs passes the same `--maximumMemory`). */
export const WASM_MAX_BYTES = 1664 * 65536;

const PAGE_BYTES = 65536;
/** Every allocation starts and ends on a 16-byte boundary, so f32x4 loads never straddle two. */
const ALIGN = 16;
/** Grow memory at least this much at a time: each grow detaches every view, keep them rare. */
const MIN_GROW_PAGES = 16;

/** An allocation would take the Wasm memory past its budget. */
export class MemoryBudgetError extends Error {
  override readonly name = "MemoryBudgetError";
  constructor(
    readonly requestedBytes: number,
    readonly bytesInUse: number,
    readonly limitBytes: number,
  ) {
    super(
      `Wasm memory budget exceeded: requested ${requestedBytes} bytes with ${bytesInUse} bytes in use, ` +
        `limit ${limitBytes} bytes. Free buffers, hold fewer weights, or raise maxBytes (≤ ${WASM_MAX_BYTES}).`,
    );
  }
}

/** A free block [ptr, ptr + size); the free list is kept sorted by ptr and fully coalesced. */
type Block = { ptr: number; size: number };

/** One Wasm memory's allocations; `Kernels` holds one and forwards alloc/free to it. */
export class Arena {
  readonly maxBytes: number;
  readonly #memory: WebAssembly.Memory;
  /** End of the highest block ever handed out and not returned; memory above it is untouched. */
  #top: number;
  readonly #free: Block[] = [];
  /** ptr → [rounded size, requested bytes] */
  readonly #live = new Map<number, [number, number]>();
  #inUse = 0;

  /** `heapBase`: end of the module's static data; allocations start above it (and above 0). */
  constructor(memory: WebAssembly.Memory, heapBase: number, maxBytes: number) {
    this.#memory = memory;
    this.maxBytes = maxBytes;
    // Static data (exp tables) ends at heapBase; pointer 0 stays reserved so 0 can mean "none".
    this.#top = Math.max(ALIGN, alignUp(heapBase, ALIGN));
  }

  /** Sum of the byte sizes asked for by live allocations. */
  get bytesInUse(): number {
    return this.#inUse;
  }

  /** Current size of the Wasm linear memory (what the isolate pays for); only ever grows. */
  get memoryBytes(): number {
    return this.#memory.buffer.byteLength;
  }

  /**
   * Reserves `bytes` (rounded up to 16) and returns a 16-byte-aligned pointer, never 0. Contents
   * are unspecified. May grow the memory, which detaches every view taken before the call.
   */
  alloc(bytes: number): number {
    if (!Number.isInteger(bytes) || bytes < 0) {
      throw new RangeError(`alloc: bytes must be a non-negative integer, got ${bytes}`);
    }
    const size = Math.max(ALIGN, alignUp(bytes, ALIGN));
    let ptr = this.#takeFree(size);
    if (ptr === 0) ptr = this.#takeTop(size, bytes);
    this.#live.set(ptr, [size, bytes]);
    this.#inUse += bytes;
    return ptr;
  }

  /** Returns an allocation to the free list, merging it with free neighbours. */
  free(ptr: number): void {
    const entry = this.#live.get(ptr);
    if (entry === undefined) throw new Error(`free: ${ptr} is not a live allocation`);
    this.#live.delete(ptr);
    const [size, requested] = entry;
    this.#inUse -= requested;
    const free = this.#free;
    if (ptr + size === this.#top) {
      // Give the block back to the top, and the free block below it if they now touch.
      this.#top = ptr;
      const last = free[free.length - 1];
      if (last !== undefined && last.ptr + last.size === ptr) {
        this.#top = last.ptr;
        free.pop();
      }
      return;
    }
    // Binary search for the first block above ptr.
    let lo = 0;
    let hi = free.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (free[mid].ptr < ptr) lo = mid + 1;
      else hi = mid;
    }
    const prev = free[lo - 1];
    const next = free[lo];
    const joinPrev = prev !== undefined && prev.ptr + prev.size === ptr;
    const joinNext = next !== undefined && ptr + size === next.ptr;
    if (joinPrev && joinNext) {
      prev.size += size + next.size;
      free.splice(lo, 1);
    } else if (joinPrev) {
      prev.size += size;
    } else if (joinNext) {
      next.ptr = ptr;
      next.size += size;
    } else {
      free.splice(lo, 0, { ptr, size });
    }
  }

  /** First fit from the free list; 0 when no free block is big enough. */
  #takeFree(size: number): number {
    const free = this.#free;
    for (let i = 0; i < free.length; i++) {
      const block = free[i];
      if (block.size < size) continue;
      const ptr = block.ptr;
      if (block.size === size) free.splice(i, 1);
      else {
        block.ptr += size;
        block.size -= size;
      }
      return ptr;
    }
    return 0;
  }

  /** Carves `size` bytes off the top, growing the memory when needed. */
  #takeTop(size: number, requested: number): number {
    const ptr = this.#top;
    const end = ptr + size;
    if (end > this.maxBytes) throw new MemoryBudgetError(requested, this.#inUse, this.maxBytes);
    const have = this.#memory.buffer.byteLength;
    if (end > have) {
      const havePages = have / PAGE_BYTES;
      const needPages = Math.ceil(end / PAGE_BYTES);
      const capPages = Math.floor(this.maxBytes / PAGE_BYTES);
      const chunkPages = Math.min(Math.max(needPages, havePages + MIN_GROW_PAGES), Math.max(capPages, needPages));
      if (!this.#grow(chunkPages - havePages) && !this.#grow(needPages - havePages)) {
        // The module's own --maximumMemory (or the engine) refused: report what it did allow.
        throw new MemoryBudgetError(requested, this.#inUse, have);
      }
    }
    this.#top = end;
    return ptr;
  }

  #grow(deltaPages: number): boolean {
    try {
      this.#memory.grow(deltaPages);
      return true;
    } catch {
      return false;
    }
  }
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
