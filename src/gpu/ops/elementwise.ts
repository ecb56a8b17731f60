/**
 * Element-wise ops of the Llama block on the GPU (`wgsl/elementwise.wgsl`): SwiGLU
 * (`g = silu(g) · u`, in place or into a separate output) and the residual add `x += y`.
 *
 * @module
 */

import { BadFlagError } from "../../errors.ts";
import type { Gpu } from "../device.ts";
import {
  type BufferSlice,
  ceilDiv,
  checkInt,
  checkSlice,
  checkWorkgroups,
  type GpuOp,
  sliceBuffer,
  type StepParams,
} from "./op.ts";

const WG = 256;

/** Options of {@link createSwiGlu}. */
export interface SwiGluOptions {
  /** Name for the profiler and errors. */
  label: string;
  /** Values per row (the feed-forward width). */
  width: number;
  /** Largest number of token rows per step. */
  maxTokens: number;
  /** Gate rows (f32, `inputStride` apart); overwritten with the result when `out` is not given. */
  gate: BufferSlice;
  /** Up rows (f32, `inputStride` apart). */
  up: BufferSlice;
  /** Floats between the starts of consecutive gate (and up) rows (default `width`). */
  inputStride?: number;
  /** Output rows, f32[maxTokens][width]; when given, gate and up are only read (and may share a buffer). */
  out?: BufferSlice;
  /** Per-step token count. */
  step: StepParams;
}

/** Builds a SwiGLU op: `gate = silu(gate) · up`, or `out = silu(gate) · up`; see {@link SwiGluOptions}. */
export function createSwiGlu(gpu: Gpu, options: SwiGluOptions): GpuOp {
  const { label, width, maxTokens, gate, up, out, step } = options;
  const stride = options.inputStride ?? width;
  checkShape(gpu, label, width, maxTokens, step);
  checkInt(label, "inputStride", stride, width);
  const inBytes = ((maxTokens - 1) * stride + width) * 4;
  checkSlice(label, "gate", gate, inBytes);
  checkSlice(label, "up", up, inBytes);
  if (out) checkSlice(label, "out", out, maxTokens * width * 4);
  if (!out && sliceBuffer(gate) === sliceBuffer(up)) {
    throw new BadFlagError(
      `${label}: in-place SwiGLU needs gate and up in different buffers (or give 'out')`,
    );
  }
  const constants = { WIDTH: width, IN_STRIDE: stride, WG };
  const kernel = gpu.kernel("elementwise", constants, {}, out ? "swiglu_out" : "swiglu");
  const group = gpu.bind(kernel, out ? [gate, up, step.buffer, out] : [gate, up, step.buffer]);
  return rowOp(label, kernel.pipeline, group, ceilDiv(width, WG), maxTokens);
}

/** Options of {@link createAdd}. */
export interface AddOptions {
  /** Name for the profiler and errors. */
  label: string;
  /** Values per row. */
  width: number;
  /** Largest number of token rows per step. */
  maxTokens: number;
  /** Accumulated rows, f32[maxTokens][width], updated in place. */
  x: BufferSlice;
  /** Added rows, f32[maxTokens][width], in a different buffer than x. */
  y: BufferSlice;
  /** Per-step token count. */
  step: StepParams;
}

/** Builds a residual add `x += y` over the step's token rows; see {@link AddOptions}. */
export function createAdd(gpu: Gpu, options: AddOptions): GpuOp {
  const { label, width, maxTokens, x, y, step } = options;
  checkShape(gpu, label, width, maxTokens, step);
  checkSlice(label, "x", x, maxTokens * width * 4);
  checkSlice(label, "y", y, maxTokens * width * 4);
  if (sliceBuffer(x) === sliceBuffer(y)) {
    throw new BadFlagError(`${label}: x and y must be different buffers`);
  }
  const kernel = gpu.kernel("elementwise", { WIDTH: width, IN_STRIDE: width, WG }, {}, "add");
  const group = gpu.bind(kernel, [x, y, step.buffer]);
  return rowOp(label, kernel.pipeline, group, ceilDiv(width, WG), maxTokens);
}

function checkShape(gpu: Gpu, label: string, width: number, maxTokens: number, step: StepParams): void {
  checkInt(label, "width", width, 1);
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  checkWorkgroups(gpu, label, ceilDiv(width, WG));
  checkWorkgroups(gpu, label, maxTokens);
}

function rowOp(
  label: string,
  pipeline: GPUComputePipeline,
  group: GPUBindGroup,
  x: number,
  y: number,
): GpuOp {
  return {
    label,
    encode(pass: GPUComputePassEncoder): void {
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(x, y);
    },
  };
}
