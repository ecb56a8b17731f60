/**
 * KV append on the GPU (`wgsl/kv_append.wgsl`): writes the keys and values of this step's tokens, for one
 * layer, into the f16 pages of the paged KV cache. The cache's lengths must already count the new tokens
 * (`KvCache.append` then `flush`); token t of the step lands at logical index `length − nTokens + t`.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import {
  layerUniform,
  pagedKvConstants,
  type PagedKvView,
  poolShaderSource,
  shardEntries,
} from "../../kv/paged_view.ts";
import { bindNumbered, type BufferSlice, checkInt, checkSlice, type GpuOp, type StepParams } from "./op.ts";

/** Options of {@link createKvAppend}. */
export interface KvAppendOptions {
  /** Name for the profiler and errors. */
  label: string;
  /** The cache to write into. */
  kv: PagedKvView;
  /** Layer of the cache this op writes. */
  layer: number;
  /** Largest number of tokens per step; the dispatch is sized for it. */
  maxTokens: number;
  /** Keys after RoPE, f32[maxTokens][kvHeads · headDim]. */
  k: BufferSlice;
  /** Values, f32[maxTokens][kvHeads · headDim]. */
  v: BufferSlice;
  /** Per-step token count (`nTokens`). */
  step: StepParams;
}

/** Builds the KV append op of one layer (pipeline and bind group once). */
export function createKvAppend(gpu: Gpu, options: KvAppendOptions): GpuOp {
  const { label, kv, layer, maxTokens, k, v, step } = options;
  checkInt(label, "layer", layer, 0, kv.layers - 1);
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  const rowBytes = kv.kvHeads * kv.headDim * 4;
  checkSlice(label, "k", k, maxTokens * rowBytes);
  checkSlice(label, "v", v, maxTokens * rowBytes);
  const kernel = gpu.kernel("kv_append", pagedKvConstants(kv), {
    POOL: poolShaderSource(kv.shards.length, true),
  });
  const layerParams = layerUniform(gpu, label, layer);
  const group = bindNumbered(gpu, kernel, [
    [0, step.buffer],
    [1, kv.sequence],
    [2, layerParams],
    [3, k],
    [4, v],
    [5, kv.blockTable],
    [6, kv.lengths],
    ...shardEntries(kv),
  ]);
  const threads = maxTokens * kv.kvHeads * (kv.headDim / 2);
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
