/**
 * Greedy sampling on the GPU (`wgsl/argmax.wgsl`): the index of the largest logit of each row, ties to
 * the lowest index, written as a u32 token id so a decode step reads back only 4 bytes per sequence.
 * One dispatch: per-block bests, the last block of each row to finish folds them.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { type BufferSlice, ceilDiv, checkInt, checkSlice, checkWorkgroups, type GpuOp } from "./op.ts";

const WG = 256;
const PER_THREAD = 16;

/** Options of {@link createArgmax}. */
export interface ArgmaxOptions {
  /** Name for the profiler and errors. */
  label: string;
  /** Logits per row (the vocabulary size). */
  vocab: number;
  /** Largest number of rows per step (sequences decoded together); default 1. */
  maxRows?: number;
  /** Logit rows, f32, `rowStride` floats apart. */
  logits: BufferSlice;
  /** Floats between row starts (default `vocab`). */
  rowStride?: number;
  /** Where the token ids go, u32[maxRows]; default a buffer the op creates ({@link ArgmaxOp.tokens}). */
  tokens?: GPUBuffer;
}

/** The argmax op; {@link ArgmaxOp.setRows} sets how many rows the next steps reduce. */
export interface ArgmaxOp extends GpuOp {
  /** The u32[maxRows] token ids, row r at byte 4·r. */
  readonly tokens: GPUBuffer;
  /** Sets the number of rows (1 … maxRows) reduced from now on (queued with `writeBuffer`). */
  setRows(nRows: number): void;
}

/** Builds a greedy-sampling op over `maxRows` logit rows; see {@link ArgmaxOptions}. */
export function createArgmax(gpu: Gpu, options: ArgmaxOptions): ArgmaxOp {
  const { label, vocab, logits } = options;
  const maxRows = options.maxRows ?? 1;
  const stride = options.rowStride ?? vocab;
  checkInt(label, "vocab", vocab, 1, 2 ** 31 - 1);
  checkInt(label, "maxRows", maxRows, 1);
  checkInt(label, "rowStride", stride, vocab);
  checkSlice(label, "logits", logits, ((maxRows - 1) * stride + vocab) * 4);
  const nBlocks = ceilDiv(vocab, WG * PER_THREAD);
  checkWorkgroups(gpu, label, nBlocks);
  checkWorkgroups(gpu, label, maxRows);
  const tokens = options.tokens ?? gpu.buffer(`${label}.tokens`, maxRows * 4);
  checkSlice(label, "tokens", tokens, maxRows * 4);
  const params = new Uint32Array([maxRows, 0, 0, 0]);
  const paramsBuf = gpu.uniform(`${label}.params`, params);
  const partials = gpu.buffer(`${label}.partials`, maxRows * nBlocks * 8);
  const arrivals = gpu.buffer(`${label}.arrivals`, maxRows * 4);
  const constants = { VOCAB: vocab, ROW_STRIDE: stride, N_BLOCKS: nBlocks, PER_THREAD, WG };
  const kernel = gpu.kernel("argmax", constants, {}, "main");
  const group = gpu.bind(kernel, [paramsBuf, partials, logits, tokens, arrivals]);
  return {
    label,
    tokens,
    setRows(nRows: number): void {
      checkInt(label, "nRows", nRows, 1, maxRows);
      params[0] = nRows;
      gpu.device.queue.writeBuffer(paramsBuf, 0, params);
    },
    encode(pass: GPUComputePassEncoder): void {
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(nBlocks, maxRows);
    },
  };
}
