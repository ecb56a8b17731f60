/**
 * Block tables and token counts of the paged KV cache, on the CPU with a GPU mirror.
 *
 * For every (sequence slot, layer, KV head) a row of `maxPagesPerHead` page ids maps logical page j to a
 * physical page of the pool, and a count says how many tokens the row holds; logical token i is slot
 * `i % PAGE_TOKENS` of page `i / PAGE_TOKENS`. Rows are independent, so lengths may be ragged across
 * layers and heads (WG-KV). GPU layout: `u32 table[seqSlots][layers][kvHeads][maxPagesPerHead]` and
 * `u32 lengths[seqSlots][layers][kvHeads]`; {@link BlockTables.flush} uploads the slots changed since the
 * last flush with `queue.writeBuffer`: their lengths, and their page lists only where a page changed (a
 * decode step adds a page every 16 tokens, and a slot's page lists are 8 MiB for Llama-3.1-8B at 128K).
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
  /** Per slot: 0 clean, 1 lengths changed, 2 page lists (and lengths) changed. */
  readonly #dirty: Uint8Array;

  /** Empty tables; with a `gpu`, also the two mirror buffers. */
  constructor(shape: BlockTableShape, gpu?: Gpu) {
    this.shape = shape;
    const rows = shape.seqSlots * shape.layers * shape.kvHeads;
    this.table = new Uint32Array(rows * shape.maxPagesPerHead).fill(NO_PAGE);
    this.lengths = new Uint32Array(rows);
    this.#dirty = new Uint8Array(shape.seqSlots);
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
  }

  /** Uploads the rows of every slot changed since the last call (a no-op without GPU buffers). */
  flush(gpu: Gpu): void {
    const { layers, kvHeads, maxPagesPerHead } = this.shape;
    const rowsPerSlot = layers * kvHeads;
    for (let slot = 0; slot < this.#dirty.length; slot++) {
      const dirty = this.#dirty[slot];
      if (!dirty) continue;
      this.#dirty[slot] = 0;
      if (!this.tableBuffer || !this.lengthsBuffer) continue;
      if (dirty === 2) {
        const t0 = slot * rowsPerSlot * maxPagesPerHead;
        const tn = rowsPerSlot * maxPagesPerHead;
        gpu.device.queue.writeBuffer(this.tableBuffer, t0 * 4, this.table, t0, tn);
      }
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
