/**
 * WG-KV append on the GPU (`wgsl/wgkv_append.wgsl`): writes the step's keys and values of one layer into
 * the local rings of a dual cache ({@link DualKvView}) and records each written slot's position and
 * admission flag, which the attention kernels' WG-KV mask reads. The flag comes from the write gate's
 * output for the `wgkv` policy and from the policy's rule otherwise (see `src/kv/wgkv_policy.ts`).
 * `DualCache.beginStep` must have been called for the step (it sets lengths, plan and sequence).
 *
 * @module
 */

import { BadFlagError } from "../../errors.ts";
import type { Gpu } from "../device.ts";
import type { DualKvView } from "../../kv/dual_cache.ts";
import { layerUniform, pagedKvConstants, poolShaderSource, shardEntries } from "../../kv/paged_view.ts";
import { admissionRuleConstants } from "../../kv/wgkv_policy.ts";
import { bindNumbered, type BufferSlice, checkInt, checkSlice, type GpuOp, type StepParams } from "./op.ts";
import { gateOutputBytes } from "./write_gate.ts";

/** Options of {@link createWgkvAppend}. */
export interface WgkvAppendOptions {
  /** Name for the profiler and errors. */
  label: string;
  /** The dual cache to write into. */
  kv: DualKvView;
  /** Layer this op writes. */
  layer: number;
  /** Largest number of tokens per step; the dispatch is sized for it. */
  maxTokens: number;
  /** Keys after RoPE, f32[maxTokens][kvHeads · headDim]. */
  k: BufferSlice;
  /** Values, f32[maxTokens][kvHeads · headDim]. */
  v: BufferSlice;
  /** The write gate's flags, u32[maxTokens][layers][kvHeads]; required by the `wgkv` policy only. */
  gateFlags?: BufferSlice;
  /** Per-step token count and first position. */
  step: StepParams;
}

/** Builds the WG-KV append op of one layer (pipeline and bind group once). */
export function createWgkvAppend(gpu: Gpu, options: WgkvAppendOptions): GpuOp {
  const { label, kv, layer, maxTokens, k, v, step } = options;
  const policy = kv.policy;
  checkInt(label, "layer", layer, 0, kv.layers - 1);
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  const rowBytes = kv.kvHeads * kv.headDim * 4;
  checkSlice(label, "k", k, maxTokens * rowBytes);
  checkSlice(label, "v", v, maxTokens * rowBytes);
  let gateFlags = options.gateFlags;
  if (policy.kind === "wgkv") {
    if (!gateFlags) throw new BadFlagError(`${label}: the wgkv policy needs the write gate's flags`);
    checkSlice(label, "gateFlags", gateFlags, gateOutputBytes(maxTokens, kv.layers, kv.kvHeads));
  }
  gateFlags ??= gpu.buffer(`${label} no gate`, 4);
  const kernel = gpu.kernel("wgkv_append", {
    ...pagedKvConstants(kv),
    ring_tokens: kv.ringTokens,
    ...admissionRuleConstants(policy),
  }, { POOL: poolShaderSource(kv.shards.length, true) });
  const group = bindNumbered(gpu, kernel, [
    [0, step.buffer],
    [1, kv.sequence],
    [2, layerUniform(gpu, label, layer)],
    [3, k],
    [4, v],
    [5, kv.blockTable],
    [6, gateFlags],
    [7, kv.slotInfo],
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
