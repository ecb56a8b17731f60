/**
 * Embedding gather: `out[t] = dequant(W[ids[t]])` for the step's tokens, with the embedding table W (ggml
 * shape `[width, vocab]`) in its GGUF type (`wgsl/embed.wgsl`). Ids come from a u32 buffer that the engine
 * fills with {@link EmbedOp.writeIds} (checked on the CPU: an id past the vocabulary is rejected with a
 * {@link BadFlagError}) or that the GPU sampler writes directly (the kernel clamps to the last row there).
 *
 * @module
 */

import { BadFlagError } from "../../errors.ts";
import type { Gpu } from "../device.ts";
import { dequantSource, type GpuWeight } from "../weights.ts";
import type { FoldedNormOutput } from "./matmul.ts";
import {
  type BufferSlice,
  ceilDiv,
  checkInt,
  checkSlice,
  checkWorkgroups,
  type GpuOp,
  type StepParams,
} from "./op.ts";

/** Options of {@link createEmbed}. */
export interface EmbedOptions {
  /** Name for errors and the profiler, e.g. "token_embd". */
  label: string;
  /** The embedding table, ggml shape `[width, vocab]`. */
  weight: GpuWeight;
  /** Token ids, u32 `[maxTokens]`. */
  ids: BufferSlice;
  /** Output, f32 `[maxTokens][weight.cols]`. */
  out: BufferSlice;
  /** Largest number of tokens per step; the dispatch is sized for it. At most `step.maxTokens`. */
  maxTokens: number;
  /** Per-step token count (`nTokens`). */
  step: StepParams;
  /**
   * Makes the gather the producer of a folded RMSNorm (a table in one part): it also writes `out · weight`
   * and each workgroup's Σ out² ({@link EmbedOp.normPartials} per token), which the first layer's fused
   * QKV reads as its `norm` input instead of a norm dispatch.
   */
  fold?: FoldedNormOutput;
}

/** The embedding op, plus a checked way to fill its id buffer. */
export interface EmbedOp extends GpuOp {
  /**
   * Queues `tokens` (at most `maxTokens`) into the id buffer. Throws a {@link BadFlagError} naming the first
   * id that is not an integer in [0, vocab).
   */
  writeIds(tokens: ArrayLike<number>): void;
  /** Partial sums of squares per token of a folded norm (0 without `fold`). */
  readonly normPartials: number;
}

const WORKGROUP = 64;

/** Creates the embedding gather op. */
export function createEmbed(gpu: Gpu, options: EmbedOptions): EmbedOp {
  const { label, weight, ids, out, maxTokens, step } = options;
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  checkSlice(label, "ids", ids, maxTokens * 4);
  checkSlice(label, "out", out, maxTokens * weight.cols * 4);
  checkWorkgroups(gpu, label, maxTokens);
  const columnGroups = ceilDiv(ceilDiv(weight.cols, 4), WORKGROUP);
  checkWorkgroups(gpu, label, columnGroups);
  const fold = options.fold;
  if (fold) {
    if (weight.parts.length !== 1) {
      throw new BadFlagError(`${label}: a folded norm needs a table in one part`);
    }
    checkSlice(label, "fold.weight", fold.weight, weight.cols * 4);
    checkSlice(label, "fold.out", fold.out, maxTokens * weight.cols * 4);
    checkSlice(label, "fold.sums", fold.sums, maxTokens * columnGroups * 4);
  }
  const kernel = gpu.kernel(
    "embed",
    { wg_size: WORKGROUP, fold: fold ? 1 : 0, norm_partials: columnGroups },
    { DEQUANT: dequantSource(weight.info.name) },
  );
  // Unused bindings get tiny placeholders (distinct: writable bindings must not alias).
  const norm = fold
    ? [fold.weight, fold.out, fold.sums]
    : ["no_norm_weight", "no_norm_out", "no_norm_sums"].map((name) => gpu.buffer(`${label}.${name}`, 4));
  const groups = weight.parts.map((part, i) => {
    const info = gpu.uniform(
      `${label}.part${i}`,
      new Uint32Array([part.rows, part.firstRow, weight.rows, weight.cols, weight.rowBytes]),
    );
    return gpu.bind(kernel, [part.buffer, ids, out, step.buffer, info, ...norm]);
  });
  const vocab = weight.rows;
  const idBuffer = ids instanceof GPUBuffer ? ids : ids.buffer;
  const idOffset = ids instanceof GPUBuffer ? 0 : ids.offset ?? 0;
  return {
    label,
    normPartials: fold ? columnGroups : 0,
    encode(pass: GPUComputePassEncoder): void {
      pass.setPipeline(kernel.pipeline);
      for (const group of groups) {
        pass.setBindGroup(0, group);
        pass.dispatchWorkgroups(columnGroups, maxTokens);
      }
    },
    writeIds(tokens: ArrayLike<number>): void {
      if (tokens.length > maxTokens) {
        throw new BadFlagError(`${label}: ${tokens.length} token ids given, at most ${maxTokens} per step`);
      }
      const data = new Uint32Array(Math.max(1, tokens.length));
      for (let i = 0; i < tokens.length; i++) {
        const id = tokens[i];
        if (!Number.isInteger(id) || id < 0 || id >= vocab) {
          throw new BadFlagError(
            `${label}: token id ${id} at index ${i} is outside the vocabulary [0, ${vocab})`,
          );
        }
        data[i] = id;
      }
      gpu.device.queue.writeBuffer(idBuffer, idOffset, data);
    },
  };
}
