/**
 * RMSNorm on the GPU (`wgsl/rmsnorm.wgsl`): `y = rmsnorm(x) · w` per token row, and the fused
 * `x += r; y = rmsnorm(x) · w` that folds a residual add into the next layer's norm (one dispatch
 * instead of two). One workgroup per row, its values held in registers; rows past the step's `nTokens` are
 * skipped.
 *
 * @module
 */

import { BadFlagError } from "../../errors.ts";
import type { Gpu, Kernel } from "../device.ts";
import {
  type BufferSlice,
  checkInt,
  checkSlice,
  checkWorkgroups,
  type GpuOp,
  type StepParams,
} from "./op.ts";

/** Options of {@link createRmsNorm}. */
export interface RmsNormOptions {
  /** Name for the profiler and errors. */
  label: string;
  /** Values per row (the model's hidden size). */
  width: number;
  /** Largest number of rows (tokens) per step; the dispatch is sized for it. */
  maxTokens: number;
  /** The epsilon under the square root (GGUF `attention.layer_norm_rms_epsilon`). */
  eps: number;
  /** Input rows, f32[maxTokens][width]. With {@link RmsNormOptions.residual}: the residual stream, updated in place. */
  x: BufferSlice;
  /** When given, `x += residual` first (f32[maxTokens][width]) and the sum is both stored and normed. */
  residual?: BufferSlice;
  /**
   * The residual comes in parts that add up, `[part][nTokens][width]` (the split-K product before it): the
   * op records the kernel for `residualSplits.splitsFor(nTokens)` parts at each step, at most
   * `residualSplits.maxSplits` (a power of two).
   */
  residualSplits?: { maxSplits: number; splitsFor(nTokens: number): number };
  /** Per-column weight, f32[width]. */
  weight: BufferSlice;
  /** Output rows, f32[maxTokens][width]; must not be `x`. */
  y: BufferSlice;
  /** Per-step token count (`nTokens`). */
  step: StepParams;
  /**
   * Workgroup size, a power of two (default: enough threads for about 8 values each, from 32 up to 1024
   * or the device's limit). Each thread keeps its ⌈width / workgroupSize⌉ values in registers (at most 128).
   */
  workgroupSize?: number;
}

/** An RMSNorm op, optionally fused with the residual add before it. */
export interface RmsNormOp extends GpuOp {
  /** The options it was built with. */
  readonly options: Readonly<RmsNormOptions>;
}

/** Builds an RMSNorm op (pipeline and bind group once); see {@link RmsNormOptions}. */
export function createRmsNorm(gpu: Gpu, options: RmsNormOptions): RmsNormOp {
  const { label, width, maxTokens, eps, x, residual, weight, y, step } = options;
  checkInt(label, "width", width, 1);
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  const deviceMax = Math.min(
    1024,
    gpu.limits.maxComputeWorkgroupSizeX,
    gpu.limits.maxComputeInvocationsPerWorkgroup,
  );
  let wg = options.workgroupSize ?? 32;
  while (options.workgroupSize === undefined && wg * 8 < width && wg * 2 <= deviceMax) wg *= 2;
  checkInt(label, "workgroupSize", wg, 1, gpu.limits.maxComputeInvocationsPerWorkgroup);
  if ((wg & (wg - 1)) !== 0) {
    throw new BadFlagError(`${label}: workgroupSize must be a power of two, got ${wg}`);
  }
  const perThread = Math.ceil(width / wg);
  if (perThread > 128) {
    throw new BadFlagError(`${label}: width ${width} needs more than 128 values per thread at ${wg} threads`);
  }
  checkWorkgroups(gpu, label, maxTokens);
  const rows = maxTokens * width * 4;
  checkSlice(label, "x", x, rows);
  checkSlice(label, "weight", weight, width * 4);
  checkSlice(label, "y", y, rows);
  if (residual) checkSlice(label, "residual", residual, rows);
  const splits = residual ? options.residualSplits : undefined;
  // One kernel and bind group per count of residual parts (1, 2, 4, … up to the most).
  const variants: { kernel: Kernel; group: GPUBindGroup }[] = [];
  for (let parts = 1; parts <= (splits?.maxSplits ?? 1); parts *= 2) {
    const kernel = gpu.kernel(
      "rmsnorm",
      { width, eps, WG: wg, per_thread: perThread, ...(parts > 1 ? { residual_parts: parts } : {}) },
      {},
      residual ? "add_norm" : "main",
    );
    const group = gpu.bind(
      kernel,
      residual ? [x, residual, weight, y, step.buffer] : [x, weight, y, step.buffer],
    );
    variants.push({ kernel, group });
  }
  return {
    label,
    options,
    encode(pass: GPUComputePassEncoder): void {
      const { kernel, group } = variants[splits ? Math.log2(splits.splitsFor(step.nTokens)) : 0];
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(maxTokens);
    },
  };
}
