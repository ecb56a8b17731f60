/**
 * Where the decode products' int8 input comes from (the text define X_INT8 of `wgsl/matvec_fast.wgsl`):
 * each workgroup quantises its tokens' x rows into its own workgroup memory (staged, the default), or a pass
 * of its own before the product quantises the step's rows once into two buffers that every workgroup reads
 * (shared, `MatvecTuning.sharedInt8`). Both give the same blocks of 16 values, bit for bit.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { loadShader } from "../shader.ts";
import {
  bindNumbered,
  type BufferSlice,
  ceilDiv,
  checkWorkgroups,
  type GpuOp,
  type StepParams,
} from "./op.ts";

/** The int8 input of one decode product. */
export interface Int8InputParts {
  /** The text define X_INT8. */
  define: string;
  /** The shared buffers' bindings (28: blocks, 29: scales); none when staged. */
  entries: [number, BufferSlice][];
  /** The quantisation to encode before the product (shared input only). */
  pass?: GpuOp;
}

/** Bytes of the shared int8 input of `maxTokens` rows of `cols` values: blocks, then scales. */
export function sharedInt8Bytes(cols: number, maxTokens: number): { blocks: number; scales: number } {
  return { blocks: maxTokens * (cols / 16) * 16, scales: maxTokens * (cols / 16) * 8 };
}

/**
 * The int8 input parts of a product `label` reading `x` (f32 `[maxTokens][cols]`, cols a multiple of 16):
 * staged (`shared` false, or no int8 input at all) or shared, with its buffers and its quantisation pass.
 */
export function int8InputParts(
  gpu: Gpu,
  label: string,
  shared: boolean,
  x: BufferSlice,
  cols: number,
  maxTokens: number,
  step: StepParams,
): Int8InputParts {
  if (!shared) return { define: loadShader("matvec_x_int8_staged"), entries: [] };
  const bytes = sharedInt8Bytes(cols, maxTokens);
  const blocks = gpu.buffer(`${label}.x_int8`, bytes.blocks);
  const scales = gpu.buffer(`${label}.x_scales`, bytes.scales);
  const workgroups = ceilDiv(maxTokens * (cols / 16), 64);
  checkWorkgroups(gpu, label, workgroups);
  const kernel = gpu.kernel("quantize_q8", { cols, block_vec4s: 4 });
  const group = bindNumbered(gpu, kernel, [[0, x], [1, blocks], [2, scales], [3, step.buffer]]);
  const pass: GpuOp = {
    label: `${label}_x8`,
    encode(p: GPUComputePassEncoder): void {
      p.setPipeline(kernel.pipeline);
      p.setBindGroup(0, group);
      p.dispatchWorkgroups(workgroups);
    },
  };
  return { define: loadShader("matvec_x_int8_shared"), entries: [[28, blocks], [29, scales]], pass };
}
