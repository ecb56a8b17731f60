/**
 * Tokenizers of GGUF models (SentencePiece and byte-level BPE) and their vocabulary.
 *
 * @module
 */

export {
  type DecodeOptions,
  type EncodeOptions,
  type StreamDecoder,
  type StreamDecoderOptions,
  type Tokenizer,
  tokenizerFromMetadata,
} from "./tokenizer.ts";
export { readVocab, type TokenizerMetadata, TokenType, type Vocab } from "./vocab.ts";
export { SpmModel } from "./spm.ts";
export { BpeModel } from "./bpe.ts";
export { type PreTokenizer, preTokenizerFor, splitWords } from "./pretokenizer.ts";
