/**
 * Bookkeeping of the KV page pool: a fixed number of pages, each holding the f16 keys and values of
 * {@link PAGE_TOKENS} tokens of one (layer, KV head). Pages are handed out and returned in O(1) through a
 * free-list stack; the pool never grows. It knows nothing about GPU buffers ({@link ./pool_storage.ts})
 * or about who owns a page ({@link ./kv_cache.ts}).
 *
 * @module
 */

import { BadFlagError, OutOfMemoryError } from "../errors.ts";
import { formatBytes } from "../gpu/device.ts";

/** Tokens per page (the WG-KV reference uses 16 as well). */
export const PAGE_TOKENS = 16;

/** Pages needed to hold `tokens` tokens of one (layer, KV head). */
export function pagesForTokens(tokens: number): number {
  return Math.ceil(tokens / PAGE_TOKENS);
}

/**
 * Bytes of one page: K then V, each {@link PAGE_TOKENS} × `headDim` f16 values
 * (so `PAGE_TOKENS · headDim` u32 words in all).
 */
export function pageBytes(headDim: number): number {
  return 2 * PAGE_TOKENS * headDim * 2;
}

/**
 * Pages of a full cache: every one of `sequences` sequences may hold `contextTokens` tokens in each of
 * `layers` × `kvHeads` (layer, head) pairs.
 */
export function fullCachePages(
  contextTokens: number,
  layers: number,
  kvHeads: number,
  sequences = 1,
): number {
  return sequences * layers * kvHeads * pagesForTokens(contextTokens);
}

/** Occupancy of a {@link PagePool}. */
export interface PagePoolStats {
  /** Pages in the pool. */
  readonly capacity: number;
  /** Pages handed out. */
  readonly used: number;
  /** Pages on the free list. */
  readonly free: number;
}

/** A fixed set of page ids `0 … capacity−1` with O(1) allocate and release. */
export class PagePool {
  /** Number of pages in the pool. */
  readonly capacity: number;
  readonly #freeStack: Uint32Array;
  #freeCount: number;
  readonly #inUse: Uint8Array;

  /** A pool of `capacity` pages, all free; ids come out in increasing order at first. */
  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity >= 2 ** 32 - 1) {
      throw new BadFlagError(`KV page pool: capacity must be a whole number of pages ≥ 1, got ${capacity}`);
    }
    this.capacity = capacity;
    this.#freeStack = new Uint32Array(capacity);
    for (let i = 0; i < capacity; i++) this.#freeStack[i] = capacity - 1 - i;
    this.#freeCount = capacity;
    this.#inUse = new Uint8Array(capacity);
  }

  /** Pages on the free list. */
  get freePages(): number {
    return this.#freeCount;
  }

  /** Pages handed out. */
  get usedPages(): number {
    return this.capacity - this.#freeCount;
  }

  /** Whether page `id` is currently handed out. */
  isUsed(id: number): boolean {
    return this.#inUse[id] === 1;
  }

  /**
   * Takes `count` pages, all or none: throws {@link OutOfMemoryError} (saying how many were asked for and
   * how many are free, `what` naming the cache and `hint` what to change) without taking any when the
   * pool cannot supply them all.
   */
  allocate(count: number, what = "KV cache", hint = "raise --ctx or free a sequence"): Uint32Array {
    if (count > this.#freeCount) {
      throw new OutOfMemoryError(
        `${what}: needs ${count} more pages of ${PAGE_TOKENS} tokens but only ${this.#freeCount} of ` +
          `${this.capacity} are free (${hint})`,
      );
    }
    const out = new Uint32Array(count);
    for (let i = 0; i < count; i++) {
      const id = this.#freeStack[--this.#freeCount];
      this.#inUse[id] = 1;
      out[i] = id;
    }
    return out;
  }

  /** Returns pages to the free list. Releasing a page that is not in use is a bug and throws. */
  release(ids: ArrayLike<number>): void {
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!(id >= 0 && id < this.capacity) || this.#inUse[id] !== 1) {
        throw new Error(`KV page pool: page ${id} released but not in use`);
      }
      this.#inUse[id] = 0;
      this.#freeStack[this.#freeCount++] = id;
    }
  }

  /** Current occupancy. */
  stats(): PagePoolStats {
    return { capacity: this.capacity, used: this.usedPages, free: this.#freeCount };
  }

  /** One line for people, e.g. "KV pages: 12/4096 used (48.00 KiB of 16.00 MiB)". */
  describe(headDim: number): string {
    const b = pageBytes(headDim);
    return `KV pages: ${this.usedPages}/${this.capacity} used (${formatBytes(this.usedPages * b)} of ${
      formatBytes(this.capacity * b)
    })`;
  }
}
