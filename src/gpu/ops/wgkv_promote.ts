/**
 * WG-KV promotion on the GPU (`wgsl/wgkv_promote.wgsl`): executes the copies that `DualCache.beginStep`
 * planned (admitted ring tokens about to be overwritten → their head's global tail). One op per forward
 * step, encoded before the first layer's append; the grid is fixed (sized for the most promotions of a
 * step) so the command sequence is the same every step.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import type { DualKvView } from "../../kv/dual_cache.ts";
import { poolShaderSource, shardEntries } from "../../kv/paged_view.ts";
import { bindNumbered, checkInt, type GpuOp } from "./op.ts";

/** Options of {@link createWgkvPromote}. */
export interface WgkvPromoteOptions {
  /** Name for the profiler and errors. */
  label: string;
  /** The dual cache whose plan it executes. */
  kv: DualKvView;
  /**
   * Size the grid for steps of at most this many tokens (default: the cache's largest step). The kernel
   * strides over the plan, so a larger plan is still copied whole, only with fewer threads; a decode
   * graph passes 1 so that its idle grid stays small.
   */
  maxTokens?: number;
}

/** Builds the promotion op of a dual cache. */
export function createWgkvPromote(gpu: Gpu, options: WgkvPromoteOptions): GpuOp {
  const { label, kv } = options;
  const kernel = gpu.kernel(
    "wgkv_promote",
    { head_dim: kv.headDim, pool_pages_per_shard: kv.pagesPerShard },
    { POOL: poolShaderSource(kv.shards.length, true) },
  );
  const group = bindNumbered(gpu, kernel, [[0, kv.promotionPlan], ...shardEntries(kv)]);
  const perToken = kv.layers * kv.kvHeads;
  const maxTokens = options.maxTokens ?? kv.maxPromotions / perToken;
  checkInt(label, "maxTokens", maxTokens, 1);
  const threads = Math.min(maxTokens * perToken, kv.maxPromotions) * (kv.headDim / 2);
  const workgroups = Math.min(Math.ceil(threads / 64), gpu.limits.maxComputeWorkgroupsPerDimension, 4096);
  return {
    label,
    encode(pass: GPUComputePassEncoder): void {
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(workgroups);
    },
  };
}
