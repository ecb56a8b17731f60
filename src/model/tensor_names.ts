/**
 * The tensors of a Llama GGUF file: their names and the shapes the hyper-parameters imply. The validator,
 * the CPU reference, the synthetic-model writer and the GPU loader all take names from here.
 *
 * Shapes are in ggml order, fastest-varying dimension first: a matrix `[cols, rows]` maps a vector of
 * `cols` values to one of `rows` values (see {@link ./ops.ts}).
 *
 * @module
 */

import type { LlamaHParams } from "./hparams.ts";

/** Token embedding table, `[nEmbd, nVocab]` (also the output projection when the output is tied). */
export const TOKEN_EMBD = "token_embd.weight";
/** Final RMSNorm weight, `[nEmbd]`. */
export const OUTPUT_NORM = "output_norm.weight";
/** Output projection to logits, `[nEmbd, nVocab]`; absent when tied to {@link TOKEN_EMBD}. */
export const OUTPUT = "output.weight";
/** Optional per-pair RoPE frequency divisors, `[ropeDim / 2]` (Llama 3.x converters write it). */
export const ROPE_FREQS = "rope_freqs.weight";

/** The tensors of one transformer block, in the order a forward pass uses them. */
export const BLOCK_PARTS = [
  "attn_norm",
  "attn_q",
  "attn_k",
  "attn_v",
  "attn_output",
  "ffn_norm",
  "ffn_gate",
  "ffn_up",
  "ffn_down",
] as const;

/** One of the per-block tensors of {@link BLOCK_PARTS}. */
export type BlockPart = typeof BLOCK_PARTS[number];

/** Name of tensor `part` of block `layer`, e.g. `blk.3.attn_q.weight`. */
export function blockTensorName(layer: number, part: BlockPart): string {
  return `blk.${layer}.${part}.weight`;
}

/** Names of all tensors of block `layer`, keyed by part. */
export function blockTensorNames(layer: number): Record<BlockPart, string> {
  const names = {} as Record<BlockPart, string>;
  for (const part of BLOCK_PARTS) names[part] = blockTensorName(layer, part);
  return names;
}

/** A tensor a Llama file must (or may) hold, with its expected ggml shape. */
export interface ExpectedTensor {
  /** GGUF tensor name. */
  name: string;
  /** Expected ggml shape, fastest-varying dimension first. */
  shape: number[];
  /** Whether the tensor is 1-D (norm weights, RoPE factors): these stay F32 in every file type. */
  isVector: boolean;
  /** Block index, or -1 for the tensors outside the blocks. */
  layer: number;
}

/** Expected shape of per-block tensor `part`. */
export function blockTensorShape(hp: LlamaHParams, part: BlockPart): number[] {
  const qDim = hp.nHead * hp.headDim;
  const kvDim = hp.nHeadKV * hp.headDim;
  switch (part) {
    case "attn_norm":
    case "ffn_norm":
      return [hp.nEmbd];
    case "attn_q":
      return [hp.nEmbd, qDim];
    case "attn_k":
    case "attn_v":
      return [hp.nEmbd, kvDim];
    case "attn_output":
      return [qDim, hp.nEmbd];
    case "ffn_gate":
    case "ffn_up":
      return [hp.nEmbd, hp.nFF];
    case "ffn_down":
      return [hp.nFF, hp.nEmbd];
  }
}

/**
 * Every tensor of a Llama file with these hyper-parameters, in the order llama.cpp's converter writes
 * them: embedding, optional RoPE factors, the blocks, final norm, then the output projection (omitted
 * when tied). `withRopeFreqs` adds {@link ROPE_FREQS}.
 */
export function llamaTensors(hp: LlamaHParams, withRopeFreqs = false): ExpectedTensor[] {
  const list: ExpectedTensor[] = [{
    name: TOKEN_EMBD,
    shape: [hp.nEmbd, hp.nVocab],
    isVector: false,
    layer: -1,
  }];
  if (withRopeFreqs) list.push({ name: ROPE_FREQS, shape: [hp.ropeDim / 2], isVector: true, layer: -1 });
  for (let layer = 0; layer < hp.nLayer; layer++) {
    for (const part of BLOCK_PARTS) {
      const shape = blockTensorShape(hp, part);
      list.push({ name: blockTensorName(layer, part), shape, isVector: shape.length === 1, layer });
    }
  }
  list.push({ name: OUTPUT_NORM, shape: [hp.nEmbd], isVector: true, layer: -1 });
  if (!hp.tiedOutput) list.push({ name: OUTPUT, shape: [hp.nEmbd, hp.nVocab], isVector: false, layer: -1 });
  return list;
}
