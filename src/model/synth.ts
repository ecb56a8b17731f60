/**
 * Synthetic Llama GGUF files: seeded random weights at real model shapes (in the spirit of vLLM's dummy
 * weights), for benchmarks, tests and demos where no trained weights are at hand. The text they
 * generate is gibberish; their shapes, types, memory and speed are real.
 *
 * - Weights are random but well-scaled (σ ≈ gain / √fan_in, norms 1 ± 0.02, a larger output matrix) so
 *   activations stay finite through many layers and the logits are far from flat.
 * - Quantised tensors are generated directly as random valid blocks ({@link ./synth_blocks.ts}) and
 *   streamed through the GGUF writer chunk by chunk, so an 8B file is written at about disk speed and
 *   never held in memory.
 * - The same options (seed included) give a byte-identical file.
 * - Without `vocabFrom`, a generated SentencePiece vocabulary ({@link ./synth_vocab.ts}) makes the
 *   file self-contained.
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";
import { openGGUF } from "../gguf/reader.ts";
import { GGMLType, tensorByteSize, typeInfo } from "../gguf/types.ts";
import {
  bool,
  f32,
  f32s,
  i32s,
  type MetadataEntry,
  metadataOf,
  str,
  strings,
  type TensorEntry,
  u32,
  writeGGUF,
} from "../gguf/writer.ts";
import type { LlamaHParams } from "./hparams.ts";
import { type Llama3RopeScaling, ropeInverseFrequencies } from "./ops.ts";
import { deriveSeed, Xoshiro128 } from "./random.ts";
import { fillRandomTensor } from "./synth_blocks.ts";
import { syntheticVocab } from "./synth_vocab.ts";
import { type ExpectedTensor, llamaTensors, OUTPUT, ROPE_FREQS, TOKEN_EMBD } from "./tensor_names.ts";

/** Model shapes {@link writeSyntheticModel} knows. */
export const SYNTH_SHAPES = ["tiny", "llama-3.2-1b", "llama-3.1-8b"] as const;
/** One of {@link SYNTH_SHAPES}. */
export type SynthShape = typeof SYNTH_SHAPES[number];

/**
 * Weight types: one ggml type for every matrix (norms and RoPE factors stay F32), or `q4_k_m` / `q5_k_m`,
 * llama.cpp's Q4_K_M / Q5_K_M mixes: Q4_K / Q5_K with Q6_K for the output matrix and for `attn_v` /
 * `ffn_down` of the layers llama.cpp gives more bits.
 */
export const SYNTH_TYPES = [
  "f32",
  "f16",
  "bf16",
  "q8_0",
  "q4_0",
  "q4_k",
  "q5_k",
  "q6_k",
  "q4_k_m",
  "q5_k_m",
] as const;
/** One of {@link SYNTH_TYPES}. */
export type SynthType = typeof SYNTH_TYPES[number];

/** Options of {@link writeSyntheticModel}. */
export interface SynthOptions {
  /** Model shape. */
  shape: SynthShape;
  /** Weight type. */
  type: SynthType;
  /** Output path. */
  out: string;
  /** Random seed (default 1); the same seed gives the same bytes. */
  seed?: number;
  /** A GGUF whose `tokenizer.*` metadata is copied (the model's vocabulary size then follows it). */
  vocabFrom?: string;
  /**
   * Tie the output projection to the token embedding (no `output.weight`). Default: as the real model
   * (tied for llama-3.2-1b, separate for the others).
   */
  tiedOutput?: boolean;
  /** Called after each chunk of tensor data with bytes written so far and the total. */
  onProgress?: (done: number, total: number) => void;
}

/** Hyper-parameters and RoPE scaling of a synthetic shape. */
interface ShapeSpec {
  hparams: Omit<LlamaHParams, "tiedOutput" | "hasRopeFreqs" | "ropeScaling">;
  /** Llama-3 scaling, written as `rope_freqs.weight` as llama.cpp's converter does for Llama 3.x. */
  llama3: Llama3RopeScaling;
  /** Whether the real model ties its output matrix to the token embedding. */
  tied: boolean;
}

const SHAPES: Record<SynthShape, ShapeSpec> = {
  // Small enough for lavapipe and the CPU reference, yet every row a multiple of 256 so that all K-quant
  // types apply; GQA 2 and a non-trivial Llama-3 scaling (original context 256) exercise those paths.
  tiny: {
    hparams: {
      nLayer: 2,
      nEmbd: 256,
      nFF: 512,
      nHead: 8,
      nHeadKV: 4,
      headDim: 32,
      nVocab: 512,
      contextLength: 2048,
      rmsEps: 1e-5,
      ropeBase: 10000,
      ropeDim: 32,
    },
    llama3: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalContext: 256 },
    tied: false,
  },
  "llama-3.2-1b": {
    hparams: {
      nLayer: 16,
      nEmbd: 2048,
      nFF: 8192,
      nHead: 32,
      nHeadKV: 8,
      headDim: 64,
      nVocab: 128256,
      contextLength: 131072,
      rmsEps: 1e-5,
      ropeBase: 500000,
      ropeDim: 64,
    },
    llama3: { factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalContext: 8192 },
    tied: true,
  },
  "llama-3.1-8b": {
    hparams: {
      nLayer: 32,
      nEmbd: 4096,
      nFF: 14336,
      nHead: 32,
      nHeadKV: 8,
      headDim: 128,
      nVocab: 128256,
      contextLength: 131072,
      rmsEps: 1e-5,
      ropeBase: 500000,
      ropeDim: 128,
    },
    llama3: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalContext: 8192 },
    tied: false,
  },
};

/**
 * The hyper-parameters a synthetic model of `shape` gets (vocabulary size before any `vocabFrom`);
 * `tiedOutput` defaults to that of the real model.
 */
export function synthHParams(shape: SynthShape, tiedOutput?: boolean): LlamaHParams {
  const spec = Object.hasOwn(SHAPES, shape) ? SHAPES[shape] : undefined;
  if (!spec) throw new BadFlagError(`synth: unknown shape "${shape}" (known: ${SYNTH_SHAPES.join(", ")})`);
  return { ...spec.hparams, tiedOutput: tiedOutput ?? spec.tied, hasRopeFreqs: true };
}

/** llama.cpp `general.file_type` values of the synthetic types. */
const FILE_TYPE: Record<SynthType, number> = {
  f32: 0,
  f16: 1,
  bf16: 32, // LLAMA_FTYPE_MOSTLY_BF16
  q4_0: 2,
  q8_0: 7,
  q4_k: 14, // closest llama.cpp label: Q4_K_S
  q5_k: 16, // Q5_K_S
  q6_k: 18,
  q4_k_m: 15, // LLAMA_FTYPE_MOSTLY_Q4_K_M
  q5_k_m: 17, // LLAMA_FTYPE_MOSTLY_Q5_K_M
};

/** The llama.cpp-style mixes and the type of their matrices that need no more bits. */
const MIX_BASE_TYPE = { q4_k_m: GGMLType.Q4_K, q5_k_m: GGMLType.Q5_K } as const;
/** One of the mixed synthetic types. */
type MixType = keyof typeof MIX_BASE_TYPE;

/** Whether `type` is a llama.cpp-style mix rather than one type for every matrix. */
function isMixType(type: SynthType): type is MixType {
  return Object.hasOwn(MIX_BASE_TYPE, type);
}

const PURE_TYPE: Record<Exclude<SynthType, MixType>, GGMLType> = {
  f32: GGMLType.F32,
  f16: GGMLType.F16,
  bf16: GGMLType.BF16,
  q8_0: GGMLType.Q8_0,
  q4_0: GGMLType.Q4_0,
  q4_k: GGMLType.Q4_K,
  q5_k: GGMLType.Q5_K,
  q6_k: GGMLType.Q6_K,
};

/** llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third in between. */
function useMoreBits(layer: number, nLayer: number): boolean {
  const eighth = Math.floor(nLayer / 8);
  return layer < eighth || layer >= Math.floor((7 * nLayer) / 8) || (layer - eighth) % 3 === 2;
}

/**
 * The ggml type of tensor `tensor` in a synthetic file of type `type`. Vectors are F32. Pure types use
 * that type for every matrix. `q4_k_m` and `q5_k_m` follow llama.cpp's Q4_K_M and Q5_K_M choices
 * (approximately): Q4_K (Q5_K) everywhere, except Q6_K for `output.weight` (for `token_embd.weight` when
 * the output is tied, since it is then the output matrix) and for `attn_v`/`ffn_down` of the layers
 * `use_more_bits` picks. A matrix whose row length is not a multiple of the type's block falls back to
 * Q8_0, then F16, as llama.cpp does.
 */
export function synthTensorType(type: SynthType, tensor: ExpectedTensor, hp: LlamaHParams): GGMLType {
  if (tensor.isVector) return GGMLType.F32;
  let chosen: GGMLType;
  if (isMixType(type)) {
    const isOutput = tensor.name === OUTPUT || (hp.tiedOutput && tensor.name === TOKEN_EMBD);
    const moreBits = (tensor.name.endsWith(".attn_v.weight") || tensor.name.endsWith(".ffn_down.weight")) &&
      useMoreBits(tensor.layer, hp.nLayer);
    chosen = isOutput || moreBits ? GGMLType.Q6_K : MIX_BASE_TYPE[type];
  } else {
    chosen = PURE_TYPE[type];
  }
  const rowLength = tensor.shape[0];
  if (rowLength % typeInfo(chosen, tensor.name).blockSize === 0) return chosen;
  return rowLength % 32 === 0 ? GGMLType.Q8_0 : GGMLType.F16;
}

/** Standard deviation of the random values of matrix `tensor`. */
function weightSigma(tensor: ExpectedTensor, hp: LlamaHParams): number {
  const fanIn = tensor.shape[0];
  if (tensor.name === TOKEN_EMBD || tensor.name === OUTPUT) return 3 / Math.sqrt(hp.nEmbd);
  if (/\.attn_[qk]\.weight$/.test(tensor.name)) return 1 / Math.sqrt(fanIn);
  return 0.7 / Math.sqrt(fanIn);
}

/** Bytes per generated chunk (a multiple of every block size times 4). */
const CHUNK_TARGET = 8 << 20;

/** The tensor data of `tensor` as a stream of chunks from its own seeded generator. */
function* randomTensorChunks(
  tensor: ExpectedTensor,
  type: GGMLType,
  sigma: number,
  rng: Xoshiro128,
  onBytes: (n: number) => void,
): Iterable<Uint8Array> {
  const info = typeInfo(type, tensor.name);
  const nElements = tensor.shape.reduce((a, b) => a * b, 1);
  const total = tensorByteSize(type, nElements, tensor.name);
  const blocksPerChunk = Math.max(4, Math.floor(CHUNK_TARGET / info.bytesPerBlock / 4) * 4);
  const chunkBytes = Math.min(total, blocksPerChunk * info.bytesPerBlock);
  const buffer = new Uint8Array(chunkBytes);
  for (let done = 0; done < total; done += chunkBytes) {
    const chunk = buffer.subarray(0, Math.min(chunkBytes, total - done));
    fillRandomTensor(type, chunk, sigma, rng);
    yield chunk;
    onBytes(chunk.length);
  }
}

/** A norm weight: 1 ± 0.02 noise, F32. */
function normWeight(n: number, rng: Xoshiro128): Uint8Array {
  const values = new Float32Array(n);
  for (let i = 0; i < n; i++) values[i] = 1 + 0.02 * rng.nextNormal();
  return new Uint8Array(values.buffer);
}

/** `rope_freqs.weight`: per-pair divisors of the plain RoPE frequencies that give the Llama-3 scaling. */
export function llama3RopeFactors(hp: LlamaHParams, llama3: Llama3RopeScaling): Float32Array {
  const plain = ropeInverseFrequencies(hp.ropeDim, hp.ropeBase);
  const scaled = ropeInverseFrequencies(hp.ropeDim, hp.ropeBase, undefined, llama3);
  return plain.map((f, i) => f / scaled[i]);
}

/** Tokenizer metadata: copied from `vocabFrom`, or a generated SentencePiece vocabulary of `nVocab`. */
async function tokenizerMetadata(
  vocabFrom: string | undefined,
  nVocab: number,
): Promise<{ entries: Record<string, MetadataEntry>; nVocab: number }> {
  if (vocabFrom !== undefined) {
    const file = await openGGUF(vocabFrom);
    try {
      const all = metadataOf(file);
      const entries: Record<string, MetadataEntry> = {};
      for (const [key, entry] of Object.entries(all)) if (key.startsWith("tokenizer.")) entries[key] = entry;
      const tokens = file.getArray("tokenizer.ggml.tokens", []);
      if (tokens.length === 0) {
        throw new BadFlagError(`synth: --vocab ${vocabFrom} has no tokenizer.ggml.tokens to copy`);
      }
      return { entries, nVocab: tokens.length };
    } finally {
      file.close();
    }
  }
  const vocab = syntheticVocab(nVocab);
  return {
    nVocab,
    entries: {
      "tokenizer.ggml.model": str("llama"),
      "tokenizer.ggml.tokens": strings(vocab.tokens),
      "tokenizer.ggml.scores": f32s(vocab.scores),
      "tokenizer.ggml.token_type": i32s(vocab.tokenTypes),
      "tokenizer.ggml.unknown_token_id": u32(vocab.unkId),
      "tokenizer.ggml.bos_token_id": u32(vocab.bosId),
      "tokenizer.ggml.eos_token_id": u32(vocab.eosId),
      "tokenizer.ggml.add_bos_token": bool(true),
      "tokenizer.ggml.add_eos_token": bool(false),
    },
  };
}

/**
 * Writes a synthetic Llama GGUF with seeded random weights at a real shape (see {@link SynthOptions}).
 * The file says in `general.name` that its weights are random.
 */
export async function writeSyntheticModel(options: SynthOptions): Promise<void> {
  const { shape, type, out } = options;
  const seed = options.seed ?? 1;
  if (!SYNTH_TYPES.includes(type)) {
    throw new BadFlagError(`synth: unknown type "${type}" (known: ${SYNTH_TYPES.join(", ")})`);
  }
  if (!Number.isSafeInteger(seed)) throw new BadFlagError(`synth: seed ${seed} is not an integer`);
  const base = synthHParams(shape, options.tiedOutput);
  const llama3 = SHAPES[shape].llama3;
  const tokenizer = await tokenizerMetadata(options.vocabFrom, base.nVocab);
  const hp: LlamaHParams = { ...base, nVocab: tokenizer.nVocab };

  const expected = llamaTensors(hp, true);
  const types = expected.map((t) => synthTensorType(type, t, hp));
  const sizes = expected.map((t, i) => tensorByteSize(types[i], t.shape.reduce((a, b) => a * b, 1), t.name));
  const total = sizes.reduce((a, b) => a + b, 0);
  let done = 0;
  const progress = (n: number) => {
    done += n;
    options.onProgress?.(done, total);
  };

  const tensors: TensorEntry[] = expected.map((tensor, index) => {
    const rng = () => new Xoshiro128(deriveSeed(seed, index));
    let data: TensorEntry["data"];
    if (tensor.name === ROPE_FREQS) {
      data = () => {
        progress(sizes[index]);
        return new Uint8Array(llama3RopeFactors(hp, llama3).buffer);
      };
    } else if (tensor.isVector) {
      data = () => {
        progress(sizes[index]);
        return normWeight(tensor.shape[0], rng());
      };
    } else {
      data = () => randomTensorChunks(tensor, types[index], weightSigma(tensor, hp), rng(), progress);
    }
    return { name: tensor.name, type: types[index], shape: tensor.shape, data };
  });

  const quantized = types.some((t) => t !== GGMLType.F32 && t !== GGMLType.F16);
  const metadata: Record<string, MetadataEntry> = {
    "general.architecture": str("llama"),
    "general.name": str(
      `synthetic ${shape} Llama with RANDOM weights (seed ${seed}, ${type}), not a trained model`,
    ),
    "general.file_type": u32(FILE_TYPE[type]),
    ...(quantized ? { "general.quantization_version": u32(2) } : {}),
    "llama.block_count": u32(hp.nLayer),
    "llama.context_length": u32(hp.contextLength),
    "llama.embedding_length": u32(hp.nEmbd),
    "llama.feed_forward_length": u32(hp.nFF),
    "llama.attention.head_count": u32(hp.nHead),
    "llama.attention.head_count_kv": u32(hp.nHeadKV),
    "llama.attention.key_length": u32(hp.headDim),
    "llama.attention.value_length": u32(hp.headDim),
    "llama.attention.layer_norm_rms_epsilon": f32(hp.rmsEps),
    "llama.rope.freq_base": f32(hp.ropeBase),
    "llama.rope.dimension_count": u32(hp.ropeDim),
    "llama.vocab_size": u32(hp.nVocab),
    ...tokenizer.entries,
  };
  await writeGGUF(out, { metadata, tensors });
}
