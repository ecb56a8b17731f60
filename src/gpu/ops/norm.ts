/**
 * RMSNorm on the GPU (`wgsl/rmsnorm.wgsl`): `y = rmsnorm(x) · w` per token row, and the fused
 * `x += r; y = rmsnorm(x) · w` that folds a residual add into the next layer's norm (one dispatch
 * instead of two). One workgroup per row; rows past the step's `nTokens` are skipped.
 *
 * @module
 */

import { BadFlagError } from "../../errors.ts";
import type { Gpu } from "../device.ts";
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
  /** Per-column weight, f32[width]. */
  weight: BufferSlice;
  /** Output rows, f32[maxTokens][width]; must not be `x`. */
  y: BufferSlice;
  /** Per-step token count (`nTokens`). */
  step: StepParams;
  /** Workgroup size, a power of two (default 256, or less where the device allows less). */
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
  const wg = options.workgroupSize ?? Math.min(256, gpu.limits.maxComputeWorkgroupSizeX);
  checkInt(label, "workgroupSize", wg, 1, gpu.limits.maxComputeInvocationsPerWorkgroup);
  if ((wg & (wg - 1)) !== 0) {
    throw new BadFlagError(`${label}: workgroupSize must be a power of two, got ${wg}`);
  }
  checkWorkgroups(gpu, label, maxTokens);
  const rows = maxTokens * width * 4;
  checkSlice(label, "x", x, rows);
  checkSlice(label, "weight", weight, width * 4);
  checkSlice(label, "y", y, rows);
  if (residual) checkSlice(label, "residual", residual, rows);
  const kernel = gpu.kernel("rmsnorm", { width, eps, WG: wg }, {}, residual ? "add_norm" : "main");
  const group = gpu.bind(
    kernel,
    residual ? [x, residual, weight, y, step.buffer] : [x, weight, y, step.buffer],
  );
  return {
    label,
    options,
    encode(pass: GPUComputePassEncoder): void {
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(maxTokens);
    },
  };
}
