/**
 * The paged KV cache: one {@link PagePool} shared by every layer, KV head and sequence, the
 * {@link BlockTables} that say which pages each (sequence, layer, head) owns, and the GPU storage. This is
 * the full-cache policy's bookkeeping (every head of a sequence holds every token); ragged rows are
 * supported through {@link KvCache.appendHead} for policies that keep different tokens per head.
 *
 * A forward step over `n` new tokens of sequence `slot` is: `append(slot, n)` (allocates pages, raises the
 * lengths), `selectSequence(slot)` and `flush()` (queue writes), the shared step uniform set to `n` tokens,
 * then the kernels: KV append writes the new tokens at logical index `length − n + t`, attention reads
 * `length` tokens per head.
 *
 * @module
 */

import { BadFlagError, OutOfMemoryError } from "../errors.ts";
import type { Gpu } from "../gpu/device.ts";
import { BlockTables } from "./block_table.ts";
import { PAGE_TOKENS, pageBytes, PagePool, type PagePoolStats, pagesForTokens } from "./page_pool.ts";
import type { PagedKvView } from "./paged_view.ts";
import { PoolStorage } from "./pool_storage.ts";

/** Sizes of a {@link KvCache}. */
export interface KvCacheOptions {
  /** Decoder layers. */
  layers: number;
  /** KV heads per layer. */
  kvHeads: number;
  /** Values per head (multiple of 8, at most 256). */
  headDim: number;
  /** Most tokens one (layer, head) row may hold (the context length for the full policy). */
  maxTokensPerHead: number;
  /** Sequences resident at once (default 1). */
  seqSlots?: number;
  /** Pages in the pool (default: a full cache of every slot, `seqSlots·layers·kvHeads·⌈ctx/16⌉`). */
  pages?: number;
  /** Caps a pool shard's size in bytes (tests use it to force several shards). */
  maxShardBytes?: number;
}

function checkOptions(options: KvCacheOptions): void {
  const { layers, kvHeads, headDim, maxTokensPerHead, seqSlots = 1, pages = 1 } = options;
  for (const [name, v] of Object.entries({ layers, kvHeads, headDim, maxTokensPerHead, seqSlots, pages })) {
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new BadFlagError(`KV cache: ${name} must be a whole number ≥ 1, got ${v}`);
    }
  }
}

/** Pages of the pool `options` ask for: `pages`, or a full cache of every slot. */
export function poolPages(options: KvCacheOptions): number {
  const slots = options.seqSlots ?? 1;
  return options.pages ?? slots * options.layers * options.kvHeads * pagesForTokens(options.maxTokensPerHead);
}

/** Occupancy of a {@link KvCache}. */
export interface KvCacheStats extends PagePoolStats {
  /** Bytes of the used pages. */
  readonly usedBytes: number;
  /** Bytes of the whole pool. */
  readonly poolBytes: number;
  /** Sequences open. */
  readonly sequences: number;
}

/** Page pool, block tables and (optionally) their GPU buffers. */
export class KvCache implements PagedKvView {
  /** Values per head. */
  readonly headDim: number;
  /** Decoder layers. */
  readonly layers: number;
  /** KV heads per layer. */
  readonly kvHeads: number;
  /** Sequence slots. */
  readonly seqSlots: number;
  /** Entries per block-table row. */
  readonly maxPagesPerHead: number;
  /** Most tokens per row. */
  readonly maxTokensPerHead: number;
  /** Page bookkeeping. */
  readonly pool: PagePool;
  /** Page lists and lengths. */
  readonly tables: BlockTables;
  readonly #storage?: PoolStorage;
  readonly #sequence?: GPUBuffer;
  readonly #open: Uint8Array;
  readonly #gpu?: Gpu;

  private constructor(options: KvCacheOptions, gpu?: Gpu, storage?: PoolStorage) {
    checkOptions(options);
    const { layers, kvHeads, headDim, maxTokensPerHead } = options;
    const seqSlots = options.seqSlots ?? 1;
    this.headDim = headDim;
    this.layers = layers;
    this.kvHeads = kvHeads;
    this.seqSlots = seqSlots;
    this.maxTokensPerHead = maxTokensPerHead;
    this.maxPagesPerHead = pagesForTokens(maxTokensPerHead);
    this.pool = new PagePool(poolPages(options));
    this.tables = new BlockTables({ seqSlots, layers, kvHeads, maxPagesPerHead: this.maxPagesPerHead }, gpu);
    this.#open = new Uint8Array(seqSlots);
    this.#gpu = gpu;
    this.#storage = storage;
    if (gpu) this.#sequence = gpu.uniform("kv sequence", new Uint32Array(4));
  }

  /** Bookkeeping only, no GPU buffers (for planning and tests). */
  static cpuOnly(options: KvCacheOptions): KvCache {
    return new KvCache(options);
  }

  /**
   * Allocates the pool shards, block tables and step uniform on `gpu`. Throws {@link OutOfMemoryError}
   * before allocating when the pool cannot be bound, and when the driver refuses the memory.
   */
  static async create(gpu: Gpu, options: KvCacheOptions): Promise<KvCache> {
    const probe = new KvCache(options);
    const storage = await PoolStorage.create(
      gpu,
      probe.pool.capacity,
      options.headDim,
      options.maxShardBytes,
    );
    return new KvCache(options, gpu, storage);
  }

  /** Pages per pool shard. */
  get pagesPerShard(): number {
    return this.#need(this.#storage).plan.pagesPerShard;
  }

  /** Pool shard buffers. */
  get shards(): readonly GPUBuffer[] {
    return this.#need(this.#storage).shards;
  }

  /** GPU block table. */
  get blockTable(): GPUBuffer {
    return this.#need(this.tables.tableBuffer);
  }

  /** GPU lengths. */
  get lengths(): GPUBuffer {
    return this.#need(this.tables.lengthsBuffer);
  }

  /** Uniform `{ slot }` selecting the sequence of the current step. */
  get sequence(): GPUBuffer {
    return this.#need(this.#sequence);
  }

  #need<T>(x: T | undefined): T {
    if (x === undefined) throw new Error("KV cache: created without a GPU");
    return x;
  }

  /** Claims a free sequence slot (all rows empty); throws {@link OutOfMemoryError} when all are in use. */
  openSequence(): number {
    const slot = this.#open.indexOf(0);
    if (slot < 0) {
      throw new OutOfMemoryError(
        `KV cache: all ${this.seqSlots} sequence slots are in use (close one first)`,
      );
    }
    this.#open[slot] = 1;
    return slot;
  }

  /** Frees every page of `slot` and makes the slot available again. */
  closeSequence(slot: number): void {
    this.#checkSlot(slot);
    this.truncate(slot, 0);
    this.#open[slot] = 0;
  }

  /** Tokens held by (slot, layer, head). */
  length(slot: number, layer: number, head: number): number {
    return this.tables.lengths[this.tables.rowOf(slot, layer, head)];
  }

  /** Physical pages of (slot, layer, head), in logical order. */
  pagesOf(slot: number, layer: number, head: number): Uint32Array {
    const row = this.tables.rowOf(slot, layer, head);
    return this.tables.pagesOfRow(row, pagesForTokens(this.tables.lengths[row]));
  }

  /** Appends `n` tokens to every (layer, head) of `slot`; all rows or none (full policy). */
  append(slot: number, n: number): void {
    this.#checkSlot(slot);
    const rows: number[] = [];
    for (let l = 0; l < this.layers; l++) {
      for (let h = 0; h < this.kvHeads; h++) rows.push(this.tables.rowOf(slot, l, h));
    }
    this.#appendRows(slot, rows, n);
  }

  /** Appends `n` tokens to one (layer, head) row of `slot` (ragged policies). */
  appendHead(slot: number, layer: number, head: number, n: number): void {
    this.#checkSlot(slot);
    this.#appendRows(slot, [this.tables.rowOf(slot, layer, head)], n);
  }

  #appendRows(slot: number, rows: number[], n: number): void {
    if (!Number.isInteger(n) || n < 0) throw new BadFlagError(`KV cache: cannot append ${n} tokens`);
    const { lengths, table } = this.tables;
    let needed = 0;
    for (const row of rows) {
      const after = lengths[row] + n;
      if (after > this.maxTokensPerHead) {
        throw new OutOfMemoryError(
          `KV cache: sequence ${slot} would hold ${after} tokens per head but the limit is ${this.maxTokensPerHead} ` +
            `(raise --ctx)`,
        );
      }
      needed += pagesForTokens(after) - pagesForTokens(lengths[row]);
    }
    const pages = this.pool.allocate(needed, `KV cache (sequence ${slot}, +${n} tokens)`);
    let next = 0;
    for (const row of rows) {
      const from = pagesForTokens(lengths[row]);
      const to = pagesForTokens(lengths[row] + n);
      for (let j = from; j < to; j++) table[row * this.maxPagesPerHead + j] = pages[next++];
      if (to > from) this.tables.markPages(row, from, to - 1);
      lengths[row] += n;
    }
    this.tables.markDirty(slot, false);
  }

  /** Cuts every row of `slot` to at most `tokens` tokens, returning pages that no longer hold any. */
  truncate(slot: number, tokens: number): void {
    this.#checkSlot(slot);
    for (let l = 0; l < this.layers; l++) {
      for (let h = 0; h < this.kvHeads; h++) this.truncateHead(slot, l, h, tokens);
    }
  }

  /** Cuts one row to at most `tokens` tokens. */
  truncateHead(slot: number, layer: number, head: number, tokens: number): void {
    const row = this.tables.rowOf(slot, layer, head);
    const { lengths, table } = this.tables;
    if (lengths[row] <= tokens) return;
    const keep = pagesForTokens(tokens);
    const base = row * this.maxPagesPerHead;
    this.pool.release(table.subarray(base + keep, base + pagesForTokens(lengths[row])));
    table.fill(0xffffffff, base + keep, base + pagesForTokens(lengths[row]));
    lengths[row] = tokens;
    this.tables.markDirty(slot);
  }

  /** Makes `slot` the sequence the next submitted kernels work on (queued with `writeBuffer`). */
  selectSequence(slot: number): void {
    this.#checkSlot(slot);
    if (this.#sequence) {
      this.#gpu?.device.queue.writeBuffer(this.#sequence, 0, new Uint32Array([slot, 0, 0, 0]));
    }
  }

  /** Uploads changed block tables and lengths. */
  flush(): void {
    if (this.#gpu) this.tables.flush(this.#gpu);
  }

  /** Occupancy and bytes. */
  stats(): KvCacheStats {
    const bytes = pageBytes(this.headDim);
    const s = this.pool.stats();
    let sequences = 0;
    for (const o of this.#open) sequences += o;
    return { ...s, usedBytes: s.used * bytes, poolBytes: s.capacity * bytes, sequences };
  }

  /** Frees the GPU buffers. */
  destroy(): void {
    this.#storage?.destroy();
    this.tables.destroy();
    this.#sequence?.destroy();
  }

  #checkSlot(slot: number): void {
    if (!(Number.isInteger(slot) && slot >= 0 && slot < this.seqSlots) || !this.#open[slot]) {
      throw new BadFlagError(`KV cache: sequence slot ${slot} is not open`);
    }
  }
}

/** Tokens per page, re-exported for callers of the cache. */
export { PAGE_TOKENS };
