/**
 * The WG-KV dual cache: per (sequence, layer, KV head) a local ring of recent tokens and a ragged list of
 * global pages holding the admitted older tokens, all pages drawn from ONE shared {@link PagePool}.
 *
 * Layout seen by the kernels: each (slot, layer, head) block-table row lists the ring's pages first
 * (`ringTokens / 16` fixed pages, allocated when the sequence opens) and then its global pages, and the
 * row's length is `min(tokens, ringTokens) + globalLength`. So the paged attention kernels read ring and
 * global keys as one logical token array; ring order is not time order, which softmax does not mind.
 * The token at absolute position p lives in ring slot `p % ringTokens`.
 *
 * Ring size: a step may bring up to `maxBatch` tokens, and its first query still needs the `window − 1`
 * tokens before it, so the ring holds `ringTokens = ⌈(window + maxBatch − 1) / 16⌉ · 16` tokens. Which
 * ring tokens a query sees is decided exactly per query row in the attention kernel from a per-slot word
 * `slotInfo = position · 2 + admitted`: visible iff `q − pos < window || admitted` (and `pos ≤ q`).
 * This is the training rule of the reference for prefill, decode and chunked prefill alike (the
 * reference's prefill kernel uses a 64-row-tile superset of the window instead; we do not replicate it).
 * The price is `maxBatch − 1` extra ring tokens per head; choose a smaller prefill batch to shrink it.
 *
 * Promotion (lazy, as in the reference): when token p is about to be overwritten by token p + ringTokens
 * it is copied into its head's global tail if admitted, else dropped. The CPU plans every copy of a step
 * in {@link DualCache.beginStep} (it mirrors the flags: rule-based policies compute them, the gate's are
 * read back after each step and passed to {@link DualCache.endStep}), allocates the global pages, and
 * uploads the plan; the `wgkv_promote` kernel executes it before the step's appends.
 *
 * Rewind ({@link DualCache.rewind}): greedy or sampled decode runs a few steps ahead of what a caller may
 * keep (a stop string ends generation mid-chain), so the cache can go back by up to
 * {@link DualCache.maxRewind} tokens, exactly: the state afterwards is the one a sequence fed only the kept
 * tokens has. The rewound steps overwrote ring tokens that are then back in the kept sequence's ring; the
 * admitted ones are still in the global tails (copied back, the tails shortened), and the dropped ones lay
 * at least `window` positions before every later query (that is what bounds `maxRewind`), so no query sees
 * them again. The CPU keeps each row's flags of the last `ringTokens + maxRewind` positions for this.
 *
 * @module
 */

import { BadFlagError, OutOfMemoryError } from "../errors.ts";
import type { Gpu } from "../gpu/device.ts";
import { BlockTables, NO_PAGE } from "./block_table.ts";
import { PAGE_TOKENS, pageBytes, PagePool, pagesForTokens } from "./page_pool.ts";
import type { PagedKvView } from "./paged_view.ts";
import { LOWER_DUAL_CACHE, PoolStorage } from "./pool_storage.ts";
import { admitsByRule, checkPolicy, type WindowedPolicy } from "./wgkv_policy.ts";

/** Sizes and policy of a {@link DualCache}. */
export interface DualCacheOptions {
  /** Decoder layers. */
  layers: number;
  /** KV heads per layer. */
  kvHeads: number;
  /** Values per head (multiple of 8, at most 256). */
  headDim: number;
  /** The admission policy (window size included). */
  policy: WindowedPolicy;
  /** Largest number of tokens in one step (the prefill chunk). */
  maxBatch: number;
  /** Most global (admitted, out-of-window) tokens one (layer, head) may hold. */
  maxGlobalTokens: number;
  /** Sequences resident at once (default 1). */
  seqSlots?: number;
  /** Pages in the pool (default: every slot's rings plus `maxGlobalTokens` per head). */
  pages?: number;
  /** Caps a pool shard's size in bytes (tests use it to force several shards). */
  maxShardBytes?: number;
  /** Most global pages a row takes at once (default {@link MAX_GLOBAL_PAGE_RUN}; 1: a page at a time). */
  globalPageRun?: number;
}

/** What the WG-KV kernels need beyond a {@link PagedKvView}. */
export interface DualKvView extends PagedKvView {
  /** The policy. */
  readonly policy: WindowedPolicy;
  /** Tokens of the local window (attended regardless of admission), including the query's own. */
  readonly window: number;
  /** Ring slots per (slot, layer, head), a multiple of {@link PAGE_TOKENS}. */
  readonly ringTokens: number;
  /** `u32 [seqSlots][layers][kvHeads][ringTokens]`: position · 2 + admitted of the token in each ring slot. */
  readonly slotInfo: GPUBuffer;
  /**
   * `u32 [1 + 2 · n]`, n ≥ {@link maxPromotions}: the count, then (source, destination) pairs of token
   * addresses `page · 16 + token` of this step's promotions (or of a rewind's restores).
   */
  readonly promotionPlan: GPUBuffer;
  /** Most promotions of one step (`maxBatch · layers · kvHeads`). */
  readonly maxPromotions: number;
}

/** Occupancy of a WG-KV dual cache (local rings and global pages), for one sequence or all. */
export interface DualCacheStats {
  /** Tokens seen (per head; summed over sequences when all). */
  readonly tokens: number;
  /** Ring pages held. */
  readonly ringPages: number;
  /** Global pages held: those holding tokens and those a row has taken ahead (see MAX_GLOBAL_PAGE_RUN). */
  readonly globalPages: number;
  /** Bytes of the held pages. */
  readonly usedBytes: number;
  /** Bytes a full cache of the same tokens would hold (every layer and head, whole pages). */
  readonly fullBytes: number;
  /** `admitted[layer · kvHeads + head]` / tokens decided: the admitted fraction per layer and head. */
  readonly admittedFraction: Float64Array;
  /** Global tokens per layer and head. */
  readonly globalTokens: Uint32Array;
}

/** Positions one sequence may reach (a ring slot's word holds position · 2 + flag in a u32). */
export const MAX_POSITIONS = 2 ** 31;

/**
 * The slot-info word of a ring slot that holds no token in a rewound row: position 2³¹ − 1, after every
 * query, so the kernels never see it (such slots also lie beyond the row's length).
 */
const EMPTY_SLOT_INFO = 0xfffffffe;

/** Ring tokens for a window and a largest step (see the module notes). */
export function ringTokensFor(window: number, maxBatch: number): number {
  return pagesForTokens(window + maxBatch - 1) * PAGE_TOKENS;
}

/**
 * Most global pages a row takes from the pool at once by default (`DualCacheOptions.globalPageRun`). A row
 * that needs a page takes a run of `clamp(held / 16, 1, MAX_GLOBAL_PAGE_RUN)` pages and fills them in turn, so that on an unfragmented pool
 * its pages lie in runs of consecutive ids (up to 256 KiB at head_dim 128) instead of one page among those
 * of all other rows (promotions interleave the rows), at most 1/16 more pages held than used.
 */
export const MAX_GLOBAL_PAGE_RUN = 32;

/** Page pool, block tables, ring mirrors and promotion planning of the WG-KV dual cache. */
export class DualCache implements DualKvView {
  /** Values per head. */
  readonly headDim: number;
  /** Decoder layers. */
  readonly layers: number;
  /** KV heads per layer. */
  readonly kvHeads: number;
  /** Sequence slots. */
  readonly seqSlots: number;
  /** The policy. */
  readonly policy: WindowedPolicy;
  /** Local window. */
  readonly window: number;
  /** Largest step. */
  readonly maxBatch: number;
  /** Ring slots per row. */
  readonly ringTokens: number;
  /** Ring pages per row. */
  readonly ringPages: number;
  /** Most global tokens per row. */
  readonly maxGlobalTokens: number;
  /** Entries per block-table row (ring pages, then global pages). */
  readonly maxPagesPerHead: number;
  /** Most promotions in one step. */
  readonly maxPromotions: number;
  /**
   * Most tokens {@link rewind} can always take back: `ringTokens − window + 1`, at least `maxBatch` (the
   * tokens the rewound steps dropped from the ring then lie a whole window before the next query).
   */
  readonly maxRewind: number;
  /** Page bookkeeping. */
  readonly pool: PagePool;
  /** Page lists and lengths. */
  readonly tables: BlockTables;
  readonly #gpu?: Gpu;
  readonly #storage?: PoolStorage;
  readonly #sequence?: GPUBuffer;
  readonly #slotInfo?: GPUBuffer;
  readonly #plan?: GPUBuffer;
  readonly #open: Uint8Array;
  /** Tokens seen per slot. */
  readonly #tokens: Float64Array;
  /** Tokens of the step begun and not yet ended, per slot (0 when none). */
  readonly #pending: Uint32Array;
  /**
   * Admission flag of each of the last {@link #flagSpan} positions, `[row][flagSpan]` (position p at
   * `p % flagSpan`): the ring's tokens, and those a rewind of up to {@link maxRewind} tokens brings back.
   */
  readonly #flags: Uint8Array;
  /** Positions of flags kept per row: `ringTokens + maxRewind`. */
  readonly #flagSpan: number;
  /** Global tokens per row. */
  readonly #globalLength: Uint32Array;
  /** Admitted tokens per row since the sequence opened. */
  readonly #admitted: Float64Array;
  /** The promotion plan a step builds (count, then pairs), reused from step to step. */
  readonly #planWords: Uint32Array<ArrayBuffer>;
  /** A step's per-row counts (promoted tokens, pages new, lacking, in a run), reused from step to step. */
  readonly #stepCounts: Uint32Array[];
  /**
   * Global pages each row holds but has not filled yet, `[row][reserveCap]`: entries `reserveFirst[row]`
   * onwards, `reserveCount[row]` of them, used in order (see {@link MAX_GLOBAL_PAGE_RUN}).
   */
  readonly #reserve: Uint32Array;
  readonly #reserveFirst: Uint32Array;
  readonly #reserveCount: Uint32Array;
  /** Reserve entries per row: a run plus the most pages one step can add to a row. */
  readonly #reserveCap: number;
  /** Most global pages a row takes at once. */
  readonly #pageRun: number;

  private constructor(options: DualCacheOptions, gpu?: Gpu, storage?: PoolStorage) {
    const { layers, kvHeads, headDim, policy, maxBatch, maxGlobalTokens } = options;
    const seqSlots = options.seqSlots ?? 1;
    const globalPageRun = options.globalPageRun ?? MAX_GLOBAL_PAGE_RUN;
    for (const [name, v] of Object.entries({ layers, kvHeads, headDim, maxBatch, seqSlots, globalPageRun })) {
      if (!Number.isSafeInteger(v) || v < 1) {
        throw new BadFlagError(`WG-KV cache: ${name} must be a whole number ≥ 1, got ${v}`);
      }
    }
    if (!Number.isSafeInteger(maxGlobalTokens) || maxGlobalTokens < 0) {
      throw new BadFlagError(
        `WG-KV cache: maxGlobalTokens must be a whole number ≥ 0, got ${maxGlobalTokens}`,
      );
    }
    checkPolicy(policy);
    this.headDim = headDim;
    this.layers = layers;
    this.kvHeads = kvHeads;
    this.seqSlots = seqSlots;
    this.policy = policy;
    this.window = policy.window;
    this.maxBatch = maxBatch;
    this.ringTokens = ringTokensFor(policy.window, maxBatch);
    this.ringPages = this.ringTokens / PAGE_TOKENS;
    this.maxGlobalTokens = maxGlobalTokens;
    this.maxPagesPerHead = this.ringPages + pagesForTokens(maxGlobalTokens);
    this.maxPromotions = maxBatch * layers * kvHeads;
    this.maxRewind = this.ringTokens - this.window + 1;
    this.#flagSpan = this.ringTokens + this.maxRewind;
    // The plan also carries a rewind's restores, up to maxRewind tokens of every row.
    const planPairs = Math.max(this.maxPromotions, this.maxRewind * layers * kvHeads);
    const rows = seqSlots * layers * kvHeads;
    this.pool = new PagePool(options.pages ?? rows * this.maxPagesPerHead);
    this.tables = new BlockTables({ seqSlots, layers, kvHeads, maxPagesPerHead: this.maxPagesPerHead }, gpu);
    this.#open = new Uint8Array(seqSlots);
    this.#tokens = new Float64Array(seqSlots);
    this.#pending = new Uint32Array(seqSlots);
    this.#flags = new Uint8Array(rows * this.#flagSpan);
    this.#globalLength = new Uint32Array(rows);
    this.#admitted = new Float64Array(rows);
    this.#planWords = new Uint32Array(1 + 2 * planPairs);
    this.#stepCounts = Array.from({ length: 4 }, () => new Uint32Array(layers * kvHeads));
    this.#pageRun = globalPageRun;
    this.#reserveCap = globalPageRun + pagesForTokens(maxBatch) + 1;
    this.#reserve = new Uint32Array(rows * this.#reserveCap);
    this.#reserveFirst = new Uint32Array(rows);
    this.#reserveCount = new Uint32Array(rows);
    this.#gpu = gpu;
    this.#storage = storage;
    if (gpu) {
      this.#sequence = gpu.uniform("wgkv sequence", new Uint32Array(4));
      this.#slotInfo = gpu.buffer("wgkv slot info", rows * this.ringTokens * 4);
      this.#plan = gpu.buffer("wgkv promotion plan", (1 + 2 * planPairs) * 4);
    }
  }

  /** Bookkeeping only, no GPU buffers (planning and tests). */
  static cpuOnly(options: DualCacheOptions): DualCache {
    return new DualCache(options);
  }

  /** Allocates the pool shards and the cache's buffers on `gpu` ({@link OutOfMemoryError} when refused). */
  static async create(gpu: Gpu, options: DualCacheOptions): Promise<DualCache> {
    const probe = new DualCache(options);
    const storage = await PoolStorage.create(
      gpu,
      probe.pool.capacity,
      options.headDim,
      options.maxShardBytes,
      LOWER_DUAL_CACHE,
    );
    return new DualCache(options, gpu, storage);
  }

  #need<T>(x: T | undefined): T {
    if (x === undefined) throw new Error("WG-KV cache: created without a GPU");
    return x;
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
  /** Uniform `{ slot }` of the current step. */
  get sequence(): GPUBuffer {
    return this.#need(this.#sequence);
  }
  /** Per-ring-slot position and flag words. */
  get slotInfo(): GPUBuffer {
    return this.#need(this.#slotInfo);
  }
  /** The current step's promotion plan. */
  get promotionPlan(): GPUBuffer {
    return this.#need(this.#plan);
  }

  /** Tokens seen by sequence `slot` (each one is in the ring, in global pages, or dropped). */
  tokens(slot: number): number {
    return this.#tokens[slot];
  }

  /** Global (promoted) tokens of (slot, layer, head). */
  globalLength(slot: number, layer: number, head: number): number {
    return this.#globalLength[this.tables.rowOf(slot, layer, head)];
  }

  /** Tokens the attention kernels read for (slot, layer, head): filled ring slots plus global tokens. */
  length(slot: number, layer: number, head: number): number {
    return this.tables.lengths[this.tables.rowOf(slot, layer, head)];
  }

  /** Claims a free sequence slot and its ring pages (all rows, all or none). */
  openSequence(): number {
    const slot = this.#open.indexOf(0);
    if (slot < 0) {
      throw new OutOfMemoryError(
        `WG-KV cache: all ${this.seqSlots} sequence slots are in use (close one first)`,
      );
    }
    const rows = this.layers * this.kvHeads;
    const pages = this.pool.allocate(rows * this.ringPages, `WG-KV cache (local rings of sequence ${slot})`);
    for (let r = 0; r < rows; r++) {
      const row = slot * rows + r;
      this.tables.table.set(
        pages.subarray(r * this.ringPages, (r + 1) * this.ringPages),
        row * this.maxPagesPerHead,
      );
      this.tables.lengths[row] = 0;
      this.#globalLength[row] = 0;
      this.#admitted[row] = 0;
      this.#flags.fill(0, row * this.#flagSpan, (row + 1) * this.#flagSpan);
    }
    this.#open[slot] = 1;
    this.#tokens[slot] = 0;
    this.#pending[slot] = 0;
    this.tables.markDirty(slot);
    return slot;
  }

  /** Frees every page of `slot` (ring and global) and makes the slot available again. */
  closeSequence(slot: number): void {
    this.#checkSlot(slot);
    const rows = this.layers * this.kvHeads;
    for (let r = 0; r < rows; r++) {
      const row = slot * rows + r;
      const base = row * this.maxPagesPerHead;
      const held = this.ringPages + pagesForTokens(this.#globalLength[row]);
      this.pool.release(this.tables.table.subarray(base, base + held));
      this.tables.table.fill(0xffffffff, base, base + held);
      this.tables.lengths[row] = 0;
      this.#globalLength[row] = 0;
      this.#releaseReserve(row);
    }
    this.#open[slot] = 0;
    this.tables.markDirty(slot);
  }

  /**
   * Empties sequence `slot` (back to 0 tokens) keeping its ring pages and slot: the way back to a position
   * before {@link earliestRewind}, whose dropped tokens cannot be restored, is to reset and prefill again.
   */
  resetSequence(slot: number): void {
    this.#checkSlot(slot);
    const rows = this.layers * this.kvHeads;
    for (let r = 0; r < rows; r++) {
      const row = slot * rows + r;
      const base = row * this.maxPagesPerHead + this.ringPages;
      const held = pagesForTokens(this.#globalLength[row]);
      this.pool.release(this.tables.table.subarray(base, base + held));
      this.tables.table.fill(0xffffffff, base, base + held);
      this.tables.lengths[row] = 0;
      this.#globalLength[row] = 0;
      this.#admitted[row] = 0;
      this.#flags.fill(0, row * this.#flagSpan, (row + 1) * this.#flagSpan);
      this.#releaseReserve(row);
    }
    this.#tokens[slot] = 0;
    this.#pending[slot] = 0;
    this.tables.markDirty(slot);
  }

  /** Appends `pages` to the reserve of `row` (its unfilled pages first moved to the front). */
  #addToReserve(row: number, pages: Uint32Array): void {
    const base = row * this.#reserveCap;
    const first = this.#reserveFirst[row], count = this.#reserveCount[row];
    this.#reserve.copyWithin(base, base + first, base + first + count);
    this.#reserve.set(pages, base + count);
    this.#reserveFirst[row] = 0;
    this.#reserveCount[row] = count + pages.length;
  }

  /** The next unfilled global page of `row` (the caller counted that there is one). */
  #takeReserved(row: number): number {
    const page = this.#reserve[row * this.#reserveCap + this.#reserveFirst[row]];
    this.#reserveFirst[row]++;
    this.#reserveCount[row]--;
    return page;
  }

  /** Returns the global pages `row` holds unfilled to the pool. */
  #releaseReserve(row: number): void {
    const at = row * this.#reserveCap + this.#reserveFirst[row];
    this.pool.release(this.#reserve.subarray(at, at + this.#reserveCount[row]));
    this.#reserveFirst[row] = 0;
    this.#reserveCount[row] = 0;
  }

  /**
   * Plans a step of `nTokens` new tokens at positions `pos0 …` of `slot` (pos0 must equal the tokens seen:
   * {@link rewind} first to go back): promotes the ring tokens that the new ones overwrite (admitted ones
   * to newly allocated global pages, all or nothing), updates the lengths, and queues the uploads of the
   * promotion plan, block tables and sequence selector. Returns the number of promoted tokens.
   */
  beginStep(slot: number, nTokens: number, pos0: number): number {
    this.#checkSlot(slot);
    if (this.#pending[slot]) throw new Error(`WG-KV cache: sequence ${slot} has a step that was not ended`);
    if (!Number.isInteger(nTokens) || nTokens < 1 || nTokens > this.maxBatch) {
      throw new BadFlagError(`WG-KV cache: a step holds 1 … ${this.maxBatch} tokens, got ${nTokens}`);
    }
    const seen = this.#tokens[slot];
    if (pos0 !== seen) {
      throw new BadFlagError(
        `WG-KV cache: sequence ${slot} holds ${seen} tokens, a step at position ${pos0} would ` +
          (pos0 < seen ? "rewind it (call rewind first)" : "leave a gap"),
      );
    }
    if (seen + nTokens > MAX_POSITIONS) {
      throw new BadFlagError(`WG-KV cache: positions are limited to ${MAX_POSITIONS} per sequence`);
    }
    const C = this.ringTokens, F = this.#flagSpan, P = this.maxPagesPerHead;
    const rows = this.layers * this.kvHeads;
    const first = Math.max(seen, C) - C; // leaving positions [first, seen + nTokens − C)
    const last = seen + nTokens - C;
    // Count first so the allocation is all or none: each row's new pages come from its reserve, and a row
    // whose reserve falls short takes a run (see MAX_GLOBAL_PAGE_RUN), or only what it lacks when the pool
    // cannot give every such row its run; when it cannot give even that, every row's reserve goes back to
    // the pool first (so runs never make a pool run out sooner than pages taken one at a time).
    let short = 0, runs = 0, needed = 0;
    const [promote, newPages, lacking, run] = this.#stepCounts;
    run.fill(0);
    const maxPages = pagesForTokens(this.maxGlobalTokens);
    for (let r = 0; r < rows; r++) {
      const row = slot * rows + r;
      let n = 0;
      for (let p = first; p < last; p++) n += this.#flags[row * F + (p % F)];
      const after = this.#globalLength[row] + n;
      if (after > this.maxGlobalTokens) {
        throw new OutOfMemoryError(
          `WG-KV cache: layer ${Math.floor(r / this.kvHeads)} head ${r % this.kvHeads} of sequence ${slot} ` +
            `would hold ${after} global tokens but the limit is ${this.maxGlobalTokens} (raise --ctx)`,
        );
      }
      promote[r] = n;
      const held = pagesForTokens(this.#globalLength[row]);
      const reserved = this.#reserveCount[row];
      newPages[r] = pagesForTokens(after) - held;
      needed += newPages[r];
      lacking[r] = Math.max(0, newPages[r] - reserved);
      if (lacking[r] > 0) {
        const wanted = Math.min(Math.max(1, Math.floor(held / 16)), this.#pageRun);
        run[r] = Math.min(Math.max(lacking[r], wanted), maxPages - held - reserved);
      }
      short += lacking[r];
      runs += run[r];
    }
    let take = runs <= this.pool.freePages ? run : lacking;
    if (short > this.pool.freePages) {
      for (let row = 0; row < this.#reserveCount.length; row++) this.#releaseReserve(row);
      take = newPages;
      short = needed;
    }
    const pages = this.pool.allocate(
      take === run ? runs : short,
      `WG-KV cache (sequence ${slot}, promotions)`,
      "raise --kv-global, the share of a full cache kept for admitted tokens, or --ctx",
    );
    let taken = 0;
    for (let r = 0; r < rows; r++) {
      if (take[r] > 0) {
        this.#addToReserve(slot * rows + r, pages.subarray(taken, taken + take[r]));
        taken += take[r];
      }
    }
    const plan = this.#planWords;
    let copies = 0;
    for (let r = 0; r < rows; r++) {
      const row = slot * rows + r;
      const table = this.tables.table;
      for (let p = first; p < last && promote[r] > 0; p++) {
        if (!this.#flags[row * F + (p % F)]) continue;
        const s = p % C;
        const g = this.#globalLength[row]++;
        const j = this.ringPages + Math.floor(g / PAGE_TOKENS);
        if (g % PAGE_TOKENS === 0) {
          table[row * P + j] = this.#takeReserved(row);
          this.tables.markPages(row, j, j);
        }
        plan[1 + 2 * copies] = table[row * P + Math.floor(s / PAGE_TOKENS)] * PAGE_TOKENS + (s % PAGE_TOKENS);
        plan[2 + 2 * copies] = table[row * P + j] * PAGE_TOKENS + (g % PAGE_TOKENS);
        copies++;
      }
      this.tables.lengths[row] = Math.min(seen + nTokens, C) + this.#globalLength[row];
    }
    plan[0] = copies;
    this.#pending[slot] = nTokens;
    this.tables.markDirty(slot, false);
    this.#upload(
      copies,
      (queue) => queue.writeBuffer(this.sequence, 0, new Uint32Array([slot, 0, 0, 0])),
    );
    return copies;
  }

  /**
   * Ends the step begun by {@link beginStep}: records each new token's admission. For the `wgkv` policy
   * `flags` is the gate's readback, u32 `[nTokens][layers][kvHeads]` (non-zero = admitted); the other
   * policies decide by rule and ignore it.
   */
  endStep(slot: number, flags?: ArrayLike<number>): void {
    this.#checkSlot(slot);
    const n = this.#pending[slot];
    if (!n) throw new Error(`WG-KV cache: sequence ${slot} has no step to end`);
    const L = this.layers, H = this.kvHeads, F = this.#flagSpan;
    if (this.policy.kind === "wgkv" && !(flags && flags.length >= n * L * H)) {
      throw new BadFlagError(`WG-KV cache: the gate flags of ${n} tokens need ${n * L * H} values`);
    }
    const seen = this.#tokens[slot];
    for (let t = 0; t < n; t++) {
      const pos = seen + t;
      for (let l = 0; l < L; l++) {
        for (let h = 0; h < H; h++) {
          const row = (slot * L + l) * H + h;
          const admitted = admitsByRule(this.policy, l, h, pos) ?? (flags![(t * L + l) * H + h] !== 0);
          this.#flags[row * F + (pos % F)] = admitted ? 1 : 0;
          if (admitted) this.#admitted[row]++;
        }
      }
    }
    this.#tokens[slot] = seen + n;
    this.#pending[slot] = 0;
  }

  /**
   * Replaces the admission flags of positions `pos0 …` (steps ended with placeholder flags, e.g. greedy
   * steps chained on the GPU whose gate flags are read back together afterwards) by `flags`, u32
   * `[tokens][layers][kvHeads]`. The positions must still be in the ring (not yet promoted or dropped).
   */
  rewriteFlags(slot: number, pos0: number, flags: ArrayLike<number>): void {
    this.#checkSlot(slot);
    const L = this.layers, H = this.kvHeads, C = this.ringTokens, F = this.#flagSpan;
    const n = Math.floor(flags.length / (L * H));
    const seen = this.#tokens[slot];
    if (this.#pending[slot] || pos0 < Math.max(0, seen - C) || pos0 + n > seen) {
      throw new Error(`WG-KV cache: positions ${pos0} … ${pos0 + n - 1} cannot be re-flagged (${seen} seen)`);
    }
    for (let t = 0; t < n; t++) {
      const pos = pos0 + t;
      for (let l = 0; l < L; l++) {
        for (let h = 0; h < H; h++) {
          const row = (slot * L + l) * H + h;
          const admitted = admitsByRule(this.policy, l, h, pos) ?? (flags[(t * L + l) * H + h] !== 0);
          const i = row * F + (pos % F);
          this.#admitted[row] += (admitted ? 1 : 0) - this.#flags[i];
          this.#flags[i] = admitted ? 1 : 0;
        }
      }
    }
  }

  /**
   * The earliest position {@link rewind} can take sequence `slot` back to: 0 while nothing has left its
   * ring, else `maxRewind` tokens before its end (further back, a token dropped from the ring would be in
   * the window of the next query). Position 0 is always reachable by {@link resetSequence}.
   */
  earliestRewind(slot: number): number {
    this.#checkSlot(slot);
    const seen = this.#tokens[slot];
    return seen <= this.ringTokens ? 0 : seen - this.maxRewind;
  }

  /**
   * Takes sequence `slot` back to its first `pos` tokens, from {@link earliestRewind} up to the tokens seen,
   * exactly as if only those had been fed: the later tokens are forgotten (their admissions too), the ring
   * tokens their steps promoted leave the global tails again (emptied pages go back to the pool) and are
   * copied back to their ring slots, and the ring's slot-info words are rewritten. Queues the plan of those
   * copies (run it with the `wgkv_promote` kernel before the next step), the block tables and the slot-info
   * words; returns the number of copies. Throws {@link BadFlagError} for a position out of that range.
   */
  rewind(slot: number, pos: number): number {
    this.#checkSlot(slot);
    if (this.#pending[slot]) throw new Error(`WG-KV cache: sequence ${slot} has a step that was not ended`);
    const seen = this.#tokens[slot];
    const earliest = this.earliestRewind(slot);
    if (!Number.isInteger(pos) || pos < earliest || pos > seen) {
      throw new BadFlagError(
        `WG-KV cache: sequence ${slot} holds ${seen} tokens and can rewind to positions ${earliest} … ${seen} ` +
          `only, not ${pos} (tokens it dropped cannot be restored; reset it to start again from 0)`,
      );
    }
    if (pos === seen) return 0;
    const C = this.ringTokens, F = this.#flagSpan, P = this.maxPagesPerHead, R = this.ringPages;
    const rows = this.layers * this.kvHeads, table = this.tables.table, plan = this.#planWords;
    // The rewound steps moved positions [lost0, lost1) out of the ring: to the global tails if admitted.
    const lost0 = Math.max(0, pos - C), lost1 = Math.max(0, seen - C);
    let copies = 0;
    for (let r = 0; r < rows; r++) {
      const row = slot * rows + r;
      const flags = this.#flags.subarray(row * F, (row + 1) * F);
      let promoted = 0;
      for (let p = lost0; p < lost1; p++) promoted += flags[p % F];
      // Promotions append in position order, so those tokens are the tail of the row's global tokens.
      const kept = this.#globalLength[row] - promoted;
      let g = kept;
      for (let p = lost0; p < lost1; p++) {
        if (!flags[p % F]) continue;
        const s = p % C;
        plan[1 + 2 * copies] = table[row * P + R + Math.floor(g / PAGE_TOKENS)] * PAGE_TOKENS +
          (g % PAGE_TOKENS);
        plan[2 + 2 * copies] = table[row * P + Math.floor(s / PAGE_TOKENS)] * PAGE_TOKENS + (s % PAGE_TOKENS);
        copies++;
        g++;
      }
      // Pages only the removed tokens filled go back to the pool. Their contents stay as they are until a
      // later step's promotions, queued after the copies above, write them again.
      const pagesBefore = pagesForTokens(this.#globalLength[row]), pagesAfter = pagesForTokens(kept);
      if (pagesAfter < pagesBefore) {
        const at = row * P + R;
        this.pool.release(table.subarray(at + pagesAfter, at + pagesBefore));
        table.fill(NO_PAGE, at + pagesAfter, at + pagesBefore);
        this.tables.markPages(row, R + pagesAfter, R + pagesBefore - 1);
      }
      this.#globalLength[row] = kept;
      for (let p = pos; p < seen; p++) this.#admitted[row] -= flags[p % F];
      this.tables.lengths[row] = Math.min(pos, C) + kept;
    }
    plan[0] = copies;
    this.#tokens[slot] = pos;
    this.tables.markDirty(slot, false);
    this.#upload(
      copies,
      (queue) => queue.writeBuffer(this.slotInfo, slot * rows * C * 4, this.#slotInfoWords(slot, pos)),
    );
    return copies;
  }

  /**
   * On a GPU, queues the promotion plan's first `copies` copies, then the writes of `also`, then the page
   * tables' changed entries (CPU-only caches keep them on the host).
   */
  #upload(copies: number, also: (queue: GPUQueue) => void): void {
    if (!this.#gpu) return;
    const queue = this.#gpu.device.queue;
    queue.writeBuffer(this.promotionPlan, 0, this.#planWords, 0, 1 + 2 * copies);
    also(queue);
    this.tables.flush(this.#gpu);
  }

  /**
   * The slot-info words of every ring slot of `slot`'s rows, `[row][ringTokens]`, for a sequence of `pos`
   * tokens: slot s holds the latest position p < pos with p ≡ s (mod ringTokens), as `p · 2 + admitted`.
   */
  #slotInfoWords(slot: number, pos: number): Uint32Array<ArrayBuffer> {
    const C = this.ringTokens, F = this.#flagSpan, rows = this.layers * this.kvHeads;
    const words = new Uint32Array(rows * C);
    for (let r = 0; r < rows; r++) {
      const flags = this.#flags.subarray((slot * rows + r) * F, (slot * rows + r + 1) * F);
      for (let s = 0; s < C; s++) {
        const p = pos - 1 - ((((pos - 1 - s) % C) + C) % C);
        words[r * C + s] = p < 0 ? EMPTY_SLOT_INFO : p * 2 + flags[p % F];
      }
    }
    return words;
  }

  /** Occupancy of sequence `slot`, or of all open sequences. */
  stats(slot?: number): DualCacheStats {
    const L = this.layers, H = this.kvHeads;
    const slots = slot === undefined ? [...this.#open.keys()].filter((s) => this.#open[s]) : [slot];
    let tokens = 0, ringPages = 0, globalPages = 0, fullPages = 0;
    const admitted = new Float64Array(L * H), globalTokens = new Uint32Array(L * H);
    let decided = 0;
    for (const s of slots) {
      this.#checkSlot(s);
      tokens += this.#tokens[s];
      decided += this.#tokens[s];
      fullPages += L * H * pagesForTokens(this.#tokens[s]);
      for (let r = 0; r < L * H; r++) {
        const row = s * L * H + r;
        ringPages += this.ringPages;
        globalPages += pagesForTokens(this.#globalLength[row]) + this.#reserveCount[row];
        admitted[r] += this.#admitted[row];
        globalTokens[r] += this.#globalLength[row];
      }
    }
    const bytes = pageBytes(this.headDim);
    return {
      tokens,
      ringPages,
      globalPages,
      usedBytes: (ringPages + globalPages) * bytes,
      fullBytes: fullPages * bytes,
      admittedFraction: admitted.map((a) => decided ? a / decided : 0),
      globalTokens,
    };
  }

  /** Frees the GPU buffers. */
  destroy(): void {
    this.#storage?.destroy();
    this.tables.destroy();
    this.#sequence?.destroy();
    this.#slotInfo?.destroy();
    this.#plan?.destroy();
  }

  #checkSlot(slot: number): void {
    if (!(Number.isInteger(slot) && slot >= 0 && slot < this.seqSlots) || !this.#open[slot]) {
      throw new BadFlagError(`WG-KV cache: sequence slot ${slot} is not open`);
    }
  }
}
