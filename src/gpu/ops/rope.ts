/**
 * Rotary position embedding on the GPU (`wgsl/rope.wgsl`), GGUF `llama` (adjacent-pair) layout, for the
 * Q and K heads of a batch of tokens in one dispatch; token row t is at position `step.pos0 + t`.
 *
 * Precision: the angle pos·θ_i is not formed in f32 (at pos = 131072 an f32 angle is off by up to
 * 0.004 rad, and GPU sin/cos are only specified on [-π, π]). Instead {@link ropeTurnTable} splits each
 * θ_i/2π into parts whose products with any position below `maxPosition` are exact in f32; the kernel
 * sums their fractional parts, so the reduced angle is within ~1e-6 rad of the exact one at any position.
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
  sliceBytes,
  type StepParams,
} from "./op.ts";

/** Largest `maxPosition` {@link ropeTurnTable} supports (2^22 positions). */
export const MAX_ROPE_POSITION: number = 2 ** 22;

/** The table the RoPE kernel reads: per pair, `chunks` f32 parts of θ_i/2π. */
export interface RopeTurnTable {
  /** f32[pairs][chunks], row-major. */
  readonly data: Float32Array;
  /** Parts per pair. */
  readonly chunks: number;
}

/**
 * Splits each turn rate `invFreq[i] / 2π` (computed in f64 from the f32 inverse frequency) into parts of
 * at most `24 − bits(maxPosition − 1)` significant bits, so that `pos · part` is exact in f32 for every
 * integer `pos < maxPosition`, with enough parts that the remainder contributes less than 2^-24 turns.
 */
export function ropeTurnTable(invFreq: Float32Array, maxPosition: number): RopeTurnTable {
  checkInt("rope", "maxPosition", maxPosition, 1, MAX_ROPE_POSITION);
  const posBits = Math.max(1, Math.ceil(Math.log2(maxPosition)));
  const partBits = 24 - posBits;
  const chunks = Math.ceil((posBits + 22) / partBits);
  const data = new Float32Array(invFreq.length * chunks);
  for (let i = 0; i < invFreq.length; i++) {
    if (!(invFreq[i] >= 0) || !Number.isFinite(invFreq[i])) {
      throw new BadFlagError(`rope: inverse frequency ${i} is ${invFreq[i]}, expected a finite value >= 0`);
    }
    let rest = invFreq[i] / (2 * Math.PI);
    for (let c = 0; c < chunks && rest > 0; c++) {
      // Keep the leading partBits bits of `rest` (exact in f64: rest always has <= 53 bits).
      let e = Math.floor(Math.log2(rest));
      if (2 ** e > rest) e--; // log2 rounded up just below a power of two
      if (2 ** (e + 1) <= rest) e++; // or down just above one
      const scale = 2 ** (partBits - 1 - e);
      data[i * chunks + c] = Math.floor(rest * scale) / scale;
      rest -= data[i * chunks + c];
    }
  }
  return { data, chunks };
}

/** One tensor RoPE rotates in place: `nHeads` heads of `headDim` values in f32 token rows. */
export interface RopeTarget {
  /** The rows, f32[maxTokens][rowStride] (from the binding's offset). */
  buffer: BufferSlice;
  /** Heads in a row (query heads for Q, KV heads for K). */
  nHeads: number;
  /** Floats from one row to the next (default `nHeads · headDim`). */
  rowStride?: number;
  /** Float column of head 0 within the row (default 0), e.g. for Q and K packed in one buffer. */
  column?: number;
}

/** Options of {@link createRope}. */
export interface RopeOptions {
  /** Name for the profiler and errors. */
  label: string;
  /** Values per head. */
  headDim: number;
  /** Leading values of each head that are rotated (GGUF `rope.dimension_count`, default headDim). */
  ropeDim?: number;
  /** Per-pair inverse frequencies (ropeDim/2), from `ropeInverseFrequencies` (scaling already folded in). */
  invFreq: Float32Array;
  /** Positions must stay below this (the context length); sets the precision split, at most 2^22. */
  maxPosition: number;
  /** Largest number of token rows per step. */
  maxTokens: number;
  /** The query rows. */
  q: RopeTarget;
  /** The key rows; may be the same buffer (same slice) as q, with a different column. */
  k?: RopeTarget;
  /** Per-step token count and first position. */
  step: StepParams;
}

/** Builds the RoPE op (table upload, pipeline, bind group once); see {@link RopeOptions}. */
export function createRope(gpu: Gpu, options: RopeOptions): GpuOp {
  const { label, headDim, invFreq, maxPosition, maxTokens, q, k, step } = options;
  const ropeDim = options.ropeDim ?? headDim;
  checkInt(label, "headDim", headDim, 2);
  checkInt(label, "ropeDim", ropeDim, 2, headDim);
  if (ropeDim % 2 !== 0) throw new BadFlagError(`${label}: ropeDim must be even, got ${ropeDim}`);
  if (invFreq.length !== ropeDim / 2) {
    throw new BadFlagError(`${label}: ${invFreq.length} inverse frequencies for ropeDim ${ropeDim}`);
  }
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  checkWorkgroups(gpu, label, maxTokens);
  const targets = k ? [q, k] : [q];
  const layout = targets.map((target, n) => {
    const name = n === 0 ? "q" : "k";
    checkInt(label, `${name}.nHeads`, target.nHeads, 1);
    const stride = target.rowStride ?? target.nHeads * headDim;
    const column = target.column ?? 0;
    checkInt(label, `${name}.column`, column, 0);
    checkInt(label, `${name}.rowStride`, stride, column + target.nHeads * headDim);
    checkSlice(label, name, target.buffer, ((maxTokens - 1) * stride + column + target.nHeads * headDim) * 4);
    return { stride, column };
  });
  const table = ropeTurnTable(invFreq, maxPosition);
  const tableBuf = gpu.buffer(`${label}.turns`, table.data.byteLength, table.data);
  const nPairs = ropeDim / 2;
  const wg = 64;
  const heads = q.nHeads + (k?.nHeads ?? 0);
  const packed = k !== undefined && sliceBuffer(k.buffer) === sliceBuffer(q.buffer);
  if (packed && !sameSlice(q.buffer, k.buffer)) {
    throw new BadFlagError(
      `${label}: q and k share a buffer but not its range: pass one slice and set column`,
    );
  }
  const constants = {
    HEAD_DIM: headDim,
    N_PAIRS: nPairs,
    N_CHUNKS: table.chunks,
    N_Q_HEADS: q.nHeads,
    N_K_HEADS: k?.nHeads ?? 0,
    Q_STRIDE: layout[0].stride,
    Q_COL: layout[0].column,
    K_STRIDE: layout[1]?.stride ?? 0,
    K_COL: layout[1]?.column ?? 0,
    WG: wg,
  };
  const groupsX = ceilDiv(heads * nPairs, wg);
  checkWorkgroups(gpu, label, groupsX);
  const kernel = gpu.kernel("rope", constants, {}, packed || !k ? "packed" : "main");
  const group = gpu.bind(
    kernel,
    packed || !k ? [tableBuf, step.buffer, q.buffer] : [tableBuf, step.buffer, q.buffer, k.buffer],
  );
  return {
    label,
    encode(pass: GPUComputePassEncoder): void {
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(groupsX, maxTokens);
    },
  };
}

function sameSlice(a: BufferSlice, b: BufferSlice): boolean {
  const offset = (s: BufferSlice) => s instanceof GPUBuffer ? 0 : s.offset ?? 0;
  return offset(a) === offset(b) && sliceBytes(a) === sliceBytes(b);
}
