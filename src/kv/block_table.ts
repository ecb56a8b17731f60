/**
 * Block tables and token counts of the paged KV cache, on the CPU with a GPU mirror.
 *
 * For every (sequence slot, layer, KV head) a row of `maxPagesPerHead` page ids maps logical page j to a
 * physical page of the pool, and a count says how many tokens the row holds; logical token i is slot
 * `i % PAGE_TOKENS` of page `i / PAGE_TOKENS`. Rows are independent, so lengths may be ragged across
 * layers and heads (WG-KV). GPU layout: `u32 table[seqSlots][layers][kvHeads][maxPagesPerHead]` and
 * `u32 lengths[seqSlots][layers][kvHeads]`; {@link BlockTables.flush} uploads the slots changed since the
 * last flush with `queue.writeBuffer`: their lengths, and of their page lists only the entries that changed
 * (see {@link BlockTables.markPages}). A slot's page lists are 8 MiB for Llama-3.1-8B at 128K, while a
 * decode step changes a handful of entries: a full cache adds a page to every row each 16 tokens, and a
 * WG-KV cache's ragged rows take a new global page in some row almost every step.
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";

/** Sizes of the block tables. */
export interface BlockTableShape {
  /** Sequences that can be resident at once. */
  readonly seqSlots: number;
  /** Decoder layers. */
  readonly layers: number;
  /** KV heads per layer. */
  readonly kvHeads: number;
  /** Longest page list of one (layer, head). */
  readonly maxPagesPerHead: number;
}

/** Marks unused table entries (never read by kernels: only entries below the row's length are). */
export const NO_PAGE = 0xffffffff;

/**
 * Bytes of a page-list range that cost about what one more `writeBuffer` call does (a few µs of the CPU's
 * time each): {@link BlockTables.flush} uploads the changed entries of a slot as one range spanning them
 * all when that range is at most this many bytes per changed row, otherwise a range per row.
 */
const BYTES_PER_UPLOAD_CALL = 8 * 1024;

/** Page lists and lengths of every (slot, layer, head), mirrored into two GPU buffers. */
export class BlockTables {
  /** Sizes. */
  readonly shape: BlockTableShape;
  /** `table[row · maxPagesPerHead + j]` = physical page of logical page j of row {@link rowOf}. */
  readonly table: Uint32Array<ArrayBuffer>;
  /** `lengths[row]` = tokens held by the row. */
  readonly lengths: Uint32Array<ArrayBuffer>;
  /** GPU mirror of {@link table} (absent for CPU-only bookkeeping). */
  readonly tableBuffer?: GPUBuffer;
  /** GPU mirror of {@link lengths}. */
  readonly lengthsBuffer?: GPUBuffer;
  /** Per slot: 0 clean, 1 lengths changed (and the entries in {@link #changed}), 2 all page lists too. */
  readonly #dirty: Uint8Array;
  /** Per slot: rows whose page-list entries first … last changed, while the slot is not wholly dirty. */
  readonly #changed: Map<number, [number, number]>[];

  /** Empty tables; with a `gpu`, also the two mirror buffers. */
  constructor(shape: BlockTableShape, gpu?: Gpu) {
    this.shape = shape;
    const rows = shape.seqSlots * shape.layers * shape.kvHeads;
    this.table = new Uint32Array(rows * shape.maxPagesPerHead).fill(NO_PAGE);
    this.lengths = new Uint32Array(rows);
    this.#dirty = new Uint8Array(shape.seqSlots);
    this.#changed = Array.from({ length: shape.seqSlots }, () => new Map());
    if (gpu) {
      this.tableBuffer = gpu.buffer("kv block table", this.table.byteLength, this.table);
      this.lengthsBuffer = gpu.buffer("kv lengths", this.lengths.byteLength, this.lengths);
    }
  }

  /** Row index of (slot, layer, head). */
  rowOf(slot: number, layer: number, head: number): number {
    return (slot * this.shape.layers + layer) * this.shape.kvHeads + head;
  }

  /** The page ids of a row in use (a view of length ⌈length / PAGE_TOKENS⌉ is what holds tokens). */
  pagesOfRow(row: number, count: number): Uint32Array {
    const base = row * this.shape.maxPagesPerHead;
    return this.table.subarray(base, base + count);
  }

  /**
   * Notes that `slot` changed and must be uploaded: its lengths, and its page lists unless `pagesChanged`
   * is false (only lengths moved within pages already listed).
   */
  markDirty(slot: number, pagesChanged = true): void {
    this.#dirty[slot] = Math.max(this.#dirty[slot], pagesChanged ? 2 : 1);
    if (pagesChanged) this.#changed[slot].clear();
  }

  /**
   * Notes that entries `first … last` of row `row`'s page list changed (and the lengths of its slot): the
   * next flush uploads those entries rather than the slot's whole page lists.
   */
  markPages(row: number, first: number, last: number): void {
    const slot = Math.floor(row / (this.shape.layers * this.shape.kvHeads));
    if (this.#dirty[slot] === 2) return;
    this.#dirty[slot] = 1;
    const span = this.#changed[slot].get(row);
    this.#changed[slot].set(row, span ? [Math.min(span[0], first), Math.max(span[1], last)] : [first, last]);
  }

  /** Uploads the rows of every slot changed since the last call (a no-op without GPU buffers). */
  flush(gpu: Gpu): void {
    const { layers, kvHeads, maxPagesPerHead } = this.shape;
    const rowsPerSlot = layers * kvHeads;
    for (let slot = 0; slot < this.#dirty.length; slot++) {
      const dirty = this.#dirty[slot];
      if (!dirty) continue;
      this.#dirty[slot] = 0;
      const changed = this.#changed[slot];
      if (!this.tableBuffer || !this.lengthsBuffer) {
        changed.clear();
        continue;
      }
      if (dirty === 2) {
        const t0 = slot * rowsPerSlot * maxPagesPerHead;
        const tn = rowsPerSlot * maxPagesPerHead;
        gpu.device.queue.writeBuffer(this.tableBuffer, t0 * 4, this.table, t0, tn);
      } else if (changed.size > 0) {
        // The entries that changed: one range over all of them, or one per row where that range is large.
        let lo = Infinity, hi = -1;
        for (const [row, [first, last]] of changed) {
          lo = Math.min(lo, row * maxPagesPerHead + first);
          hi = Math.max(hi, row * maxPagesPerHead + last);
        }
        if ((hi - lo + 1) * 4 <= changed.size * BYTES_PER_UPLOAD_CALL) {
          gpu.device.queue.writeBuffer(this.tableBuffer, lo * 4, this.table, lo, hi - lo + 1);
        } else {
          for (const [row, [first, last]] of changed) {
            const at = row * maxPagesPerHead + first;
            gpu.device.queue.writeBuffer(this.tableBuffer, at * 4, this.table, at, last - first + 1);
          }
        }
      }
      changed.clear();
      const l0 = slot * rowsPerSlot;
      gpu.device.queue.writeBuffer(this.lengthsBuffer, l0 * 4, this.lengths, l0, rowsPerSlot);
    }
  }

  /** Frees the mirror buffers. */
  destroy(): void {
    this.tableBuffer?.destroy();
    this.lengthsBuffer?.destroy();
  }
}
