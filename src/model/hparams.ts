/**
 * Llama hyper-parameters read from GGUF metadata, with llama.cpp's defaults, and checked against the
 * tensors the file holds so that nothing downstream allocates from an unchecked field.
 *
 * @module
 */

import { BadFileError, UnsupportedError } from "../errors.ts";
import type { GGUFFile } from "../gguf/reader.ts";
import type { Llama3RopeScaling } from "./ops.ts";
import { llamaTensors, OUTPUT, ROPE_FREQS } from "./tensor_names.ts";

/** The shape and numeric constants of a Llama model. */
export interface LlamaHParams {
  /** Transformer blocks (`llama.block_count`). */
  nLayer: number;
  /** Residual stream width (`llama.embedding_length`). */
  nEmbd: number;
  /** Feed-forward inner width (`llama.feed_forward_length`). */
  nFF: number;
  /** Query heads (`llama.attention.head_count`). */
  nHead: number;
  /** Key/value heads (`llama.attention.head_count_kv`, default {@link nHead}); `nHead % nHeadKV == 0`. */
  nHeadKV: number;
  /** Values per head (`llama.attention.key_length`, default `nEmbd / nHead`). */
  headDim: number;
  /** Vocabulary size (`llama.vocab_size`, default the length of `tokenizer.ggml.tokens`). */
  nVocab: number;
  /** Trained context length (`llama.context_length`). */
  contextLength: number;
  /** RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`). */
  rmsEps: number;
  /** RoPE base θ (`llama.rope.freq_base`, default 10000). */
  ropeBase: number;
  /** Leading values of each head that RoPE rotates (`llama.rope.dimension_count`, default headDim). */
  ropeDim: number;
  /** Llama-3 frequency scaling from `llama.rope.scaling.*`, when the type is `llama3`. */
  ropeScaling?: Llama3RopeScaling;
  /** Whether the file has per-pair RoPE divisors (`rope_freqs.weight`); they take precedence over ropeScaling. */
  hasRopeFreqs: boolean;
  /** True when there is no `output.weight`: the logits use the token embedding matrix. */
  tiedOutput: boolean;
}

const ARCH = "llama";

function metaNumber(file: GGUFFile, key: string): number | undefined {
  const v: unknown = file.metadata[key];
  if (v === undefined) return undefined;
  if (typeof v === "bigint") return Number(v);
  if (typeof v !== "number") throw new BadFileError(`${file.path}: metadata ${key} is not a number`);
  return v;
}

function metaString(file: GGUFFile, key: string): string | undefined {
  const v: unknown = file.metadata[key];
  if (v === undefined) return undefined;
  if (typeof v !== "string") throw new BadFileError(`${file.path}: metadata ${key} is not a string`);
  return v;
}

function requiredCount(file: GGUFFile, key: string, fallback?: number): number {
  const v = metaNumber(file, key) ?? fallback;
  if (v === undefined) throw new BadFileError(`${file.path}: metadata ${key} is missing`);
  if (!Number.isSafeInteger(v) || v <= 0 || v > 2 ** 31) {
    throw new BadFileError(`${file.path}: metadata ${key} = ${v} is not a positive integer`);
  }
  return v;
}

function positiveReal(file: GGUFFile, key: string, fallback?: number): number {
  const v = metaNumber(file, key) ?? fallback;
  if (v === undefined) throw new BadFileError(`${file.path}: metadata ${key} is missing`);
  if (!Number.isFinite(v) || v <= 0) {
    throw new BadFileError(`${file.path}: metadata ${key} = ${v} is not positive`);
  }
  return v;
}

/** Reads `llama.rope.scaling.*`; returns the Llama-3 parameters, or undefined for none/linear-free files. */
function ropeScalingFromGGUF(file: GGUFFile): Llama3RopeScaling | undefined {
  const type = metaString(file, `${ARCH}.rope.scaling.type`);
  const factor = metaNumber(file, `${ARCH}.rope.scaling.factor`);
  if (type === undefined || type === "none" || factor === undefined || factor === 1) return undefined;
  if (type !== "llama3") {
    throw new UnsupportedError(`${file.path}: rope scaling type "${type}" is not supported (only llama3)`);
  }
  return {
    factor: positiveReal(file, `${ARCH}.rope.scaling.factor`),
    lowFreqFactor: positiveReal(file, `${ARCH}.rope.scaling.low_freq_factor`, 1),
    highFreqFactor: positiveReal(file, `${ARCH}.rope.scaling.high_freq_factor`, 4),
    originalContext: requiredCount(file, `${ARCH}.rope.scaling.original_context_length`, 8192),
  };
}

/**
 * The hyper-parameters of Llama file `file`, validated: the architecture must be `llama`
 * ({@link UnsupportedError} otherwise), every count positive and consistent, and every expected tensor
 * present with the implied shape (a {@link BadFileError} names the first mismatch).
 */
export function hparamsFromGGUF(file: GGUFFile): LlamaHParams {
  const arch = file.architecture;
  if (arch !== ARCH) {
    throw new UnsupportedError(`${file.path}: architecture "${arch}" is not supported (only llama)`);
  }
  const nEmbd = requiredCount(file, `${ARCH}.embedding_length`);
  const nHead = requiredCount(file, `${ARCH}.attention.head_count`);
  const nHeadKV = requiredCount(file, `${ARCH}.attention.head_count_kv`, nHead);
  const defaultHeadDim = nEmbd % nHead === 0 ? nEmbd / nHead : undefined;
  const headDim = requiredCount(file, `${ARCH}.attention.key_length`, defaultHeadDim);
  const valueLength = metaNumber(file, `${ARCH}.attention.value_length`);
  const tokens: unknown = file.metadata["tokenizer.ggml.tokens"];
  if (!Array.isArray(tokens) && metaNumber(file, `${ARCH}.vocab_size`) === undefined) {
    throw new BadFileError(
      `${file.path}: metadata ${ARCH}.vocab_size is missing and there is no tokenizer.ggml.tokens array to count`,
    );
  }
  const hp: LlamaHParams = {
    nLayer: requiredCount(file, `${ARCH}.block_count`),
    nEmbd,
    nFF: requiredCount(file, `${ARCH}.feed_forward_length`),
    nHead,
    nHeadKV,
    headDim,
    nVocab: requiredCount(file, `${ARCH}.vocab_size`, Array.isArray(tokens) ? tokens.length : undefined),
    contextLength: requiredCount(file, `${ARCH}.context_length`),
    rmsEps: positiveReal(file, `${ARCH}.attention.layer_norm_rms_epsilon`),
    ropeBase: positiveReal(file, `${ARCH}.rope.freq_base`, 10000),
    ropeDim: requiredCount(file, `${ARCH}.rope.dimension_count`, headDim),
    ropeScaling: ropeScalingFromGGUF(file),
    hasRopeFreqs: file.has(ROPE_FREQS),
    tiedOutput: !file.has(OUTPUT),
  };
  if (hp.ropeScaling === undefined) delete hp.ropeScaling;
  const where = file.path;
  if (nHead % nHeadKV !== 0) {
    throw new BadFileError(`${where}: head_count ${nHead} is not a multiple of head_count_kv ${nHeadKV}`);
  }
  if (headDim % 2 !== 0) throw new BadFileError(`${where}: head dimension ${headDim} is odd`);
  if (valueLength !== undefined && valueLength !== headDim) {
    throw new UnsupportedError(`${where}: value_length ${valueLength} differs from key_length ${headDim}`);
  }
  if (hp.ropeDim % 2 !== 0 || hp.ropeDim > headDim) {
    throw new BadFileError(
      `${where}: rope.dimension_count ${hp.ropeDim} must be even and at most ${headDim}`,
    );
  }
  checkTensorShapes(file, hp);
  return hp;
}

/** Checks that every tensor a Llama with `hp` needs is in `file` with the expected shape. */
export function checkTensorShapes(file: GGUFFile, hp: LlamaHParams): void {
  // Every block has several tensors, so a file of T tensors lacks one within its first T + 1 blocks: only
  // those are listed, and an absurd block count fails on its first missing tensor without listing them all.
  const layers = Math.min(hp.nLayer, file.tensors.length + 1);
  for (const expected of llamaTensors({ ...hp, nLayer: layers }, hp.hasRopeFreqs)) {
    if (!file.has(expected.name)) throw new BadFileError(`${file.path}: tensor ${expected.name} is missing`);
    const shape = [...file.tensor(expected.name).shape].map(Number);
    while (shape.length > expected.shape.length && shape[shape.length - 1] === 1) shape.pop();
    const same = shape.length === expected.shape.length && shape.every((d, i) => d === expected.shape[i]);
    if (!same) {
      throw new BadFileError(
        `${file.path}: tensor ${expected.name} has shape [${shape.join(", ")}], ` +
          `expected [${expected.shape.join(", ")}] from the hyper-parameters`,
      );
    }
  }
  if (layers < hp.nLayer) {
    throw new BadFileError(
      `${file.path}: metadata ${ARCH}.block_count = ${hp.nLayer} is more blocks than its ${file.tensors.length} tensors hold`,
    );
  }
}
