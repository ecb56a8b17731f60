/**
 * Where the decode products' int8 input comes from (the text define X_INT8 of `wgsl/matvec_fast.wgsl`):
 * each workgroup quantises its tokens' x rows into its own workgroup memory (staged, the default), or a pass
 * of its own before the product quantises the step's rows once into two buffers that every workgroup reads
 * (shared, `MatvecTuning.sharedInt8`). Both give the same blocks of 16 values, bit for bit.
 *
 * @module
 */

import { UnsupportedError } from "../../errors.ts";
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

/**
 * A shared int8 input that the product before writes as it writes its outputs (its `int8Out`), so the
 * product reading it (its `int8In`) needs no quantisation pass: blocks, scales and the arrival counters of
 * `wgsl/matvec_int8_out.wgsl`, for rows of `cols` values.
 */
export interface ChainedInt8 {
  /** Values per row (a multiple of 16). */
  cols: number;
  /** Rows (tokens) the buffers hold. */
  maxTokens: number;
  /** int8 blocks of 16 values, vec4u `[maxTokens][cols / 16]`. */
  blocks: GPUBuffer;
  /** (d, d · Σq) per block, vec2f `[maxTokens][cols / 16]`. */
  scales: GPUBuffer;
  /** Workgroups arrived per block, u32 `[maxTokens][cols / 16]`, zero between dispatches. */
  arrivals: GPUBuffer;
}

/** Creates the buffers of a {@link ChainedInt8} (the arrivals zeroed). */
export function createChainedInt8(gpu: Gpu, label: string, cols: number, maxTokens: number): ChainedInt8 {
  if (cols % 16 !== 0) {
    throw new UnsupportedError(`${label}: rows of ${cols} values are not a multiple of 16`);
  }
  const bytes = sharedInt8Bytes(cols, maxTokens);
  return {
    cols,
    maxTokens,
    blocks: gpu.buffer(`${label}.blocks`, bytes.blocks),
    scales: gpu.buffer(`${label}.scales`, bytes.scales),
    arrivals: gpu.buffer(`${label}.arrivals`, maxTokens * (cols / 16) * 4),
  };
}

/**
 * The text define INT8_OUT and bindings of a product (`main` or `swiglu`) writing `out` for the next
 * product, or the stub without it. Its outputs must come in whole blocks of 16 rows made of whole row groups.
 */
export function int8OutputParts(
  label: string,
  out: ChainedInt8 | undefined,
  rows: number,
  rowsPerWorkgroup: number,
  maxTokens: number,
): { define: string; entries: [number, BufferSlice][] } {
  if (!out) return { define: loadShader("matvec_int8_out_none"), entries: [] };
  if (out.cols !== rows || rows % 16 !== 0 || 16 % rowsPerWorkgroup !== 0 || maxTokens > out.maxTokens) {
    throw new UnsupportedError(
      `${label}: int8 output for rows of ${out.cols} values needs ${rows} outputs per token in whole blocks ` +
        `of 16 rows and a row group dividing 16 (${rowsPerWorkgroup}), for up to ${out.maxTokens} tokens`,
    );
  }
  return {
    define: loadShader("matvec_int8_out"),
    entries: [[20, out.blocks], [21, out.scales], [22, out.arrivals]],
  };
}

/** Bytes of the shared int8 input of `maxTokens` rows of `cols` values: blocks, then scales. */
export function sharedInt8Bytes(cols: number, maxTokens: number): { blocks: number; scales: number } {
  return { blocks: maxTokens * (cols / 16) * 16, scales: maxTokens * (cols / 16) * 8 };
}

/**
 * The int8 input parts of a product `label` reading `x` (f32 `[maxTokens][cols]`, cols a multiple of 16):
 * staged (`shared` false, or no int8 input at all) or shared: written by the product before (`given`), or
 * with buffers and a quantisation pass of its own.
 */
export function int8InputParts(
  gpu: Gpu,
  label: string,
  shared: boolean,
  x: BufferSlice,
  cols: number,
  maxTokens: number,
  step: StepParams,
  given?: ChainedInt8,
): Int8InputParts {
  if (!shared) return { define: loadShader("matvec_x_int8_staged"), entries: [] };
  if (given) {
    if (given.cols !== cols || given.maxTokens < maxTokens) {
      throw new UnsupportedError(`${label}: its int8 input holds rows of ${given.cols} values, not ${cols}`);
    }
    return { define: loadShader("matvec_x_int8_shared"), entries: [[28, given.blocks], [29, given.scales]] };
  }
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
