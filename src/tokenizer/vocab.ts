/**
 * The vocabulary part of GGUF metadata (`tokenizer.ggml.*`), read and checked once: token texts, scores,
 * token types and the ids of the special tokens. Every array length and id is validated here, so the
 * tokenizers never index out of range.
 *
 * @module
 */

import { BadFileError } from "../errors.ts";

/** GGUF metadata as a plain record (what the GGUF reader returns as `metadata`). */
export type TokenizerMetadata = Readonly<Record<string, unknown>>;

/** GGUF token types (`tokenizer.ggml.token_type`), as llama.cpp numbers them. */
export const TokenType = {
  /** An ordinary piece of text. */
  normal: 1,
  /** The unknown token (`<unk>`). */
  unknown: 2,
  /** A control token such as `<s>` or `<|eot_id|>`: no text unless asked for. */
  control: 3,
  /** A token added by the model author; its text is matched literally in the input. */
  userDefined: 4,
  /** A slot that is never produced. */
  unused: 5,
  /** A byte-fallback token `<0xXX>`. */
  byte: 6,
} as const;

/** Token texts that end a turn when they are control tokens, besides the declared eos/eot/eom ids. */
const END_OF_GENERATION_TEXTS = new Set([
  "<|eot_id|>",
  "<|eom_id|>",
  "<|im_end|>",
  "<|end|>",
  "<|endoftext|>",
  "<end_of_turn>",
  "<|end_of_text|>",
  "<EOT>",
]);

/** The checked vocabulary of a model. */
export interface Vocab {
  /** `tokenizer.ggml.model`, e.g. "llama" (SentencePiece) or "gpt2" (byte-level BPE). */
  readonly model: string;
  /** Token texts, indexed by id. */
  readonly tokens: readonly string[];
  /** Token scores (SentencePiece merge priority); zeros when the file has none. */
  readonly scores: Float32Array;
  /**
   * Token types (`tokenizer.ggml.token_type`, llama.cpp's numbers: 1 normal, 2 unknown, 3 control, 4
   * user-defined, 5 unused, 6 byte); normal when the file has none.
   */
  readonly types: Uint8Array;
  /** Token text → id (the first id when a text repeats). */
  readonly ids: ReadonlyMap<string, number>;
  /** Beginning-of-sequence token, if any. */
  readonly bos: number | undefined;
  /** End-of-sequence token, if any. */
  readonly eos: number | undefined;
  /** Unknown token, if any. */
  readonly unk: number | undefined;
  /** Whether `encode` adds BOS by default (`tokenizer.ggml.add_bos_token`). */
  readonly addBos: boolean;
  /** Whether SentencePiece text gets a leading space (`tokenizer.ggml.add_space_prefix`). */
  readonly addSpacePrefix: boolean;
  /** Every token that ends a generation (eos, eot, eom and the usual end-of-turn control tokens). */
  readonly endOfGeneration: ReadonlySet<number>;
}

const NO_TOKEN = 0xffffffff;

function toNumber(value: unknown): number | undefined {
  if (typeof value === "number") return value;
  if (typeof value === "bigint") return Number(value);
  return undefined;
}

/** Reads an array-valued key (a JS array or a typed array), or undefined when absent. */
function readArray(meta: TokenizerMetadata, key: string): ArrayLike<unknown> | undefined {
  const value = meta[key];
  if (value === undefined) return undefined;
  if (Array.isArray(value) || ArrayBuffer.isView(value) && !(value instanceof DataView)) {
    return value as unknown as ArrayLike<unknown>;
  }
  throw new BadFileError(`metadata ${key}: expected an array, got ${typeof value}`);
}

/** Reads an optional token id key; absent, -1 and 0xFFFFFFFF mean "none". */
function readTokenId(meta: TokenizerMetadata, key: string, vocabSize: number): number | undefined {
  const raw = meta[key];
  if (raw === undefined) return undefined;
  const id = toNumber(raw);
  if (id === undefined || !Number.isInteger(id)) {
    throw new BadFileError(`metadata ${key}: expected an integer token id, got ${String(raw)}`);
  }
  if (id === -1 || id === NO_TOKEN) return undefined;
  if (id < 0 || id >= vocabSize) {
    throw new BadFileError(
      `metadata ${key}: token id ${id} is outside the vocabulary of ${vocabSize} tokens`,
    );
  }
  return id;
}

function readBool(meta: TokenizerMetadata, key: string, fallback: boolean): boolean {
  const raw = meta[key];
  if (raw === undefined) return fallback;
  if (typeof raw === "boolean") return raw;
  const n = toNumber(raw);
  if (n === 0 || n === 1) return n === 1;
  throw new BadFileError(`metadata ${key}: expected a boolean, got ${String(raw)}`);
}

/**
 * Reads and checks the vocabulary keys of GGUF metadata. Throws {@link BadFileError} naming the key when
 * `tokenizer.ggml.tokens` is missing, an array is malformed or of the wrong length, or an id is out of range.
 */
export function readVocab(meta: TokenizerMetadata): Vocab {
  const modelRaw = meta["tokenizer.ggml.model"];
  if (typeof modelRaw !== "string") {
    throw new BadFileError(`metadata tokenizer.ggml.model: expected a string, got ${typeof modelRaw}`);
  }
  const tokensRaw = readArray(meta, "tokenizer.ggml.tokens");
  if (tokensRaw === undefined) throw new BadFileError("metadata tokenizer.ggml.tokens is missing");
  const n = tokensRaw.length;
  if (n === 0) throw new BadFileError("metadata tokenizer.ggml.tokens is empty");
  const tokens: string[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const t = tokensRaw[i];
    if (typeof t !== "string") {
      throw new BadFileError(`metadata tokenizer.ggml.tokens[${i}]: expected a string, got ${typeof t}`);
    }
    tokens[i] = t;
  }

  const scores = new Float32Array(n);
  const scoresRaw = readArray(meta, "tokenizer.ggml.scores");
  if (scoresRaw !== undefined) {
    if (scoresRaw.length !== n) {
      throw new BadFileError(
        `metadata tokenizer.ggml.scores: has ${scoresRaw.length} entries, tokenizer.ggml.tokens has ${n}`,
      );
    }
    for (let i = 0; i < n; i++) {
      const s = toNumber(scoresRaw[i]);
      if (s === undefined) throw new BadFileError(`metadata tokenizer.ggml.scores[${i}]: not a number`);
      scores[i] = s;
    }
  }

  const types = new Uint8Array(n).fill(TokenType.normal);
  const typesRaw = readArray(meta, "tokenizer.ggml.token_type");
  if (typesRaw !== undefined) {
    if (typesRaw.length !== n) {
      throw new BadFileError(
        `metadata tokenizer.ggml.token_type: has ${typesRaw.length} entries, tokenizer.ggml.tokens has ${n}`,
      );
    }
    for (let i = 0; i < n; i++) {
      const t = toNumber(typesRaw[i]);
      if (t === undefined || !Number.isInteger(t) || t < 0 || t > 6) {
        throw new BadFileError(
          `metadata tokenizer.ggml.token_type[${i}]: invalid type ${String(typesRaw[i])}`,
        );
      }
      types[i] = t === 0 ? TokenType.normal : t;
    }
  }

  const ids = new Map<string, number>();
  for (let i = 0; i < n; i++) if (!ids.has(tokens[i])) ids.set(tokens[i], i);

  const bos = readTokenId(meta, "tokenizer.ggml.bos_token_id", n);
  const eos = readTokenId(meta, "tokenizer.ggml.eos_token_id", n);
  const unk = readTokenId(meta, "tokenizer.ggml.unknown_token_id", n);
  const eot = readTokenId(meta, "tokenizer.ggml.eot_token_id", n);
  const eom = readTokenId(meta, "tokenizer.ggml.eom_token_id", n);

  const endOfGeneration = new Set<number>();
  for (const id of [eos, eot, eom]) if (id !== undefined) endOfGeneration.add(id);
  for (const text of END_OF_GENERATION_TEXTS) {
    const id = ids.get(text);
    if (id !== undefined && types[id] === TokenType.control) endOfGeneration.add(id);
  }

  return {
    model: modelRaw,
    tokens,
    scores,
    types,
    ids,
    bos,
    eos,
    unk,
    addBos: readBool(meta, "tokenizer.ggml.add_bos_token", true) && bos !== undefined,
    addSpacePrefix: readBool(meta, "tokenizer.ggml.add_space_prefix", modelRaw === "llama"),
    endOfGeneration,
  };
}
