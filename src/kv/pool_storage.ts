/**
 * GPU memory of the KV page pool. One logical pool, physically split into shards because WebGPU caps a
 * single binding at `maxStorageBufferBindingSize` (128 MiB on lavapipe, a few GiB on big GPUs) while a
 * long full cache needs many GiB. Page id p lives in shard `p / pagesPerShard` at page `p % pagesPerShard`.
 *
 * Why shards selected per page (and not "pages of one layer in one shard"): the pool stays a single free
 * list, so ragged policies (WG-KV admits very different numbers of tokens per layer and head) can use any
 * free page for any (layer, head). Kernels bind every shard and pick one per page with a short switch;
 * the page id is uniform across the threads that read the page, so the branch costs next to nothing.
 *
 * Page layout (u32 words, f16 packed two per word with `pack2x16float`):
 * `[K: PAGE_TOKENS × headDim/2 words][V: PAGE_TOKENS × headDim/2 words]`, token-major.
 *
 * @module
 */

import { firstLine, OutOfMemoryError, UnsupportedError } from "../errors.ts";
import { formatBytes, type Gpu } from "../gpu/device.ts";
import { pageBytes } from "./page_pool.ts";

/**
 * Most shards a kernel binds (each is one storage binding next to up to 8 others): 16 shards of at most
 * 2 GiB each (a common `maxBufferSize`) hold 32 GiB of KV, a full cache of 256K tokens for Llama-3.1-8B.
 */
export const MAX_POOL_SHARDS = 16;

/** Storage bindings the attention kernels may use besides the pool shards (7 each now; one spare). */
const OTHER_STORAGE_BINDINGS = 8;

/** How a pool of `pages` pages is laid out over shard buffers. */
export interface PoolShardPlan {
  /** Pages in the pool. */
  readonly pages: number;
  /** Bytes of one page (K and V). */
  readonly pageBytes: number;
  /** Pages in every shard but possibly the last. */
  readonly pagesPerShard: number;
  /** Number of shard buffers. */
  readonly shards: number;
  /** Bytes of all shards together. */
  readonly totalBytes: number;
}

/** The limits {@link planPoolShards} looks at (a subset of `GPUSupportedLimits`). */
export interface PoolLimits {
  /** Largest storage binding in bytes. */
  readonly maxStorageBufferBindingSize: number;
  /** Largest buffer in bytes. */
  readonly maxBufferSize: number;
  /** Storage buffers one shader stage may bind. */
  readonly maxStorageBuffersPerShaderStage: number;
}

/** What the pool errors suggest by default: the context sizes a full cache's pool. */
export const LOWER_CONTEXT = "lower --ctx";

/** What they suggest for a dual cache, whose pool holds the ring (window and step) and the admitted share. */
export const LOWER_DUAL_CACHE = "lower --ctx, --kv-global, --window or --batch";

/**
 * Splits `pages` pages of `headDim` into as few shards as the limits allow. `maxShardBytes` lowers the
 * shard size (tests use it to force several shards). Throws {@link OutOfMemoryError} with the numbers when
 * the pool cannot be bound by one kernel, ending with `remedy` (what to lower).
 */
export function planPoolShards(
  pages: number,
  headDim: number,
  limits: PoolLimits,
  maxShardBytes = Infinity,
  remedy = LOWER_CONTEXT,
): PoolShardPlan {
  if (!Number.isInteger(headDim) || headDim < 8 || headDim % 8 !== 0 || headDim > 256) {
    throw new UnsupportedError(
      `KV cache: head_dim must be a multiple of 8 between 8 and 256, got ${headDim}`,
    );
  }
  const bytes = pageBytes(headDim);
  const shardLimit = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize, maxShardBytes);
  const pagesPerShard = Math.floor(shardLimit / bytes);
  if (pagesPerShard < 1) {
    throw new OutOfMemoryError(`KV cache: one page (${bytes} B) exceeds the shard limit (${shardLimit} B)`);
  }
  const shards = Math.ceil(pages / pagesPerShard);
  const maxShards = Math.min(
    MAX_POOL_SHARDS,
    limits.maxStorageBuffersPerShaderStage - OTHER_STORAGE_BINDINGS,
  );
  if (shards > maxShards) {
    throw new OutOfMemoryError(
      `KV cache: ${
        formatBytes(pages * bytes)
      } asked (${pages} pages × ${bytes} B) but kernels can bind at most ` +
        `${maxShards} shards × ${formatBytes(pagesPerShard * bytes)} = ${
          formatBytes(maxShards * pagesPerShard * bytes)
        } on this GPU (${remedy})`,
    );
  }
  return { pages, pageBytes: bytes, pagesPerShard, shards, totalBytes: pages * bytes };
}

/** The shard buffers of a pool. */
export class PoolStorage {
  /** The layout. */
  readonly plan: PoolShardPlan;
  /** One storage buffer per shard; shard s holds pages `s·pagesPerShard …`. */
  readonly shards: readonly GPUBuffer[];

  private constructor(plan: PoolShardPlan, shards: GPUBuffer[]) {
    this.plan = plan;
    this.shards = shards;
  }

  /**
   * Plans and allocates the shards (zero-filled by WebGPU). An allocation the driver refuses becomes an
   * {@link OutOfMemoryError} with the bytes asked for; nothing stays allocated in that case.
   */
  static async create(
    gpu: Gpu,
    pages: number,
    headDim: number,
    maxShardBytes?: number,
    remedy = LOWER_CONTEXT,
  ): Promise<PoolStorage> {
    const plan = planPoolShards(pages, headDim, gpu.limits, maxShardBytes, remedy);
    const buffers: GPUBuffer[] = [];
    gpu.device.pushErrorScope("out-of-memory");
    for (let s = 0; s < plan.shards; s++) {
      const shardPages = Math.min(plan.pagesPerShard, pages - s * plan.pagesPerShard);
      buffers.push(gpu.buffer(`kv pool shard ${s}`, shardPages * plan.pageBytes));
    }
    const error = await gpu.device.popErrorScope();
    if (error) {
      for (const b of buffers) b.destroy();
      throw new OutOfMemoryError(
        `KV cache: the GPU could not allocate ${
          formatBytes(plan.totalBytes)
        } (${pages} pages in ${plan.shards} ` +
          `shards): ${firstLine(error)} (${remedy})`,
      );
    }
    return new PoolStorage(plan, buffers);
  }

  /** Frees the shard buffers. */
  destroy(): void {
    for (const b of this.shards) b.destroy();
  }
}
