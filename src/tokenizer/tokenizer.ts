/**
 * The tokenizer of a GGUF model: text ↔ token ids, with special-token parsing, BOS handling, pieces as raw
 * bytes and a streaming decoder that never splits a UTF-8 character. {@link tokenizerFromMetadata} picks
 * SentencePiece (`tokenizer.ggml.model = "llama"`) or byte-level BPE (`"gpt2"`).
 *
 * @module
 */

import { BadFlagError, inFile, UnsupportedError } from "../errors.ts";
import { BpeModel } from "./bpe.ts";
import { SpmModel } from "./spm.ts";
import { readVocab, type TokenizerMetadata, TokenType, type Vocab } from "./vocab.ts";

/** Options of {@link Tokenizer.encode}. */
export interface EncodeOptions {
  /** Put the BOS token first; default {@link Tokenizer.addBos}. */
  addBos?: boolean;
  /**
   * Turn control and unknown token texts in the input (e.g. `<|begin_of_text|>`, `<s>`) into their ids,
   * longest first; default false. User-defined tokens are always matched, as llama.cpp does.
   */
  parseSpecial?: boolean;
}

/** Options of {@link Tokenizer.decode}. */
export interface DecodeOptions {
  /** Leave out the text of control tokens (BOS, EOS, `<|eot_id|>` …); default true. */
  skipSpecial?: boolean;
}

/** Options of {@link Tokenizer.streamDecoder}. */
export interface StreamDecoderOptions {
  /** Leave out the text of control tokens; default true. */
  skipSpecial?: boolean;
  /**
   * The token just before the first pushed id (e.g. the last prompt token). The SentencePiece space
   * prefix of the first text token is dropped only when the pushed ids begin a text, as in
   * {@link Tokenizer.decode}: when `previous` is absent or is BOS. Pass the last prompt token when
   * streaming a generation, so a continuation keeps its leading space.
   */
  previous?: number;
}

/** Turns token ids into text one id at a time. */
export interface StreamDecoder {
  /** Adds one token and returns the text completed by it (possibly empty, never half a character). */
  push(id: number): string;
  /** Returns whatever is still buffered (an incomplete UTF-8 sequence shows as U+FFFD) and resets. */
  flush(): string;
}

/** A model's tokenizer. */
export interface Tokenizer {
  /** Number of tokens in the vocabulary. */
  readonly vocabSize: number;
  /** Beginning-of-sequence token, if the model has one. */
  readonly bos: number | undefined;
  /** End-of-sequence token, if the model has one. */
  readonly eos: number | undefined;
  /** Whether {@link encode} adds BOS by default (`tokenizer.ggml.add_bos_token`, default true). */
  readonly addBos: boolean;
  /** The checked vocabulary (token texts, scores, types). */
  readonly vocab: Vocab;
  /** Token ids of `text`. */
  encode(text: string, options?: EncodeOptions): number[];
  /** Text of `ids`; invalid UTF-8 shows as U+FFFD. */
  decode(ids: readonly number[], options?: DecodeOptions): string;
  /** Raw bytes of one token; a control token gives its text only when `special` is true. */
  tokenToPiece(id: number, options?: { special?: boolean }): Uint8Array;
  /** Whether `id` ends a generation (eos, eot, eom, `<|eot_id|>`, `<|im_end|>` …). */
  isEndOfGeneration(id: number): boolean;
  /** A decoder for tokens arriving one by one. */
  streamDecoder(options?: StreamDecoderOptions): StreamDecoder;
}

/** What the shared tokenizer needs from SentencePiece or BPE. */
interface TokenizerModel {
  readonly addSpacePrefix: boolean;
  encodeFragment(text: string, spacePrefix: boolean, out: number[]): void;
  piece(id: number, special: boolean): Uint8Array;
}

interface SpecialToken {
  readonly text: string;
  readonly id: number;
}

class VocabTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bos: number | undefined;
  readonly eos: number | undefined;
  readonly addBos: boolean;
  readonly vocab: Vocab;
  readonly #model: TokenizerModel;
  /** Tokens matched with parseSpecial (control, unknown, user-defined), longest text first. */
  readonly #special: SpecialToken[];
  /** Tokens matched always (user-defined), longest text first. */
  readonly #userDefined: SpecialToken[];

  constructor(vocab: Vocab, model: TokenizerModel) {
    this.vocab = vocab;
    this.vocabSize = vocab.tokens.length;
    this.bos = vocab.bos;
    this.eos = vocab.eos;
    this.addBos = vocab.addBos;
    this.#model = model;
    const special: SpecialToken[] = [];
    for (let id = 0; id < vocab.tokens.length; id++) {
      const type = vocab.types[id];
      const text = vocab.tokens[id];
      if (text.length === 0) continue;
      if (type === TokenType.control || type === TokenType.unknown || type === TokenType.userDefined) {
        special.push({ text, id });
      }
    }
    special.sort((a, b) => b.text.length - a.text.length || a.id - b.id);
    this.#special = special;
    this.#userDefined = special.filter((s) => vocab.types[s.id] === TokenType.userDefined);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const out: number[] = [];
    if ((options.addBos ?? this.addBos) && this.bos !== undefined) out.push(this.bos);
    const fragments = splitOnSpecial(text, options.parseSpecial ? this.#special : this.#userDefined);
    let afterSpecial = true;
    for (const fragment of fragments) {
      if (typeof fragment === "number") {
        out.push(fragment);
        afterSpecial = true;
      } else {
        this.#model.encodeFragment(fragment, afterSpecial, out);
        afterSpecial = false;
      }
    }
    return out;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const stream = this.streamDecoder({ skipSpecial: options.skipSpecial });
    let text = "";
    for (const id of ids) text += stream.push(id);
    return text + stream.flush();
  }

  tokenToPiece(id: number, options: { special?: boolean } = {}): Uint8Array {
    this.#checkId(id);
    return this.#model.piece(id, options.special ?? false);
  }

  isEndOfGeneration(id: number): boolean {
    return this.vocab.endOfGeneration.has(id);
  }

  streamDecoder(options: StreamDecoderOptions = {}): StreamDecoder {
    const special = !(options.skipSpecial ?? true);
    let stripSpace = this.#model.addSpacePrefix &&
      (options.previous === undefined || options.previous === this.bos);
    let first = true;
    let decoder = new TextDecoder("utf-8", { ignoreBOM: true });
    return {
      push: (id: number): string => {
        this.#checkId(id);
        const isLeadingBos = first && id === this.bos;
        first = false;
        let bytes = this.#model.piece(id, special);
        if (stripSpace && !isLeadingBos) {
          stripSpace = false;
          if (bytes.length > 0 && bytes[0] === 0x20) bytes = bytes.subarray(1);
        }
        return decoder.decode(bytes, { stream: true });
      },
      flush: (): string => {
        const rest = decoder.decode();
        decoder = new TextDecoder("utf-8", { ignoreBOM: true });
        return rest;
      },
    };
  }

  #checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new BadFlagError(`token id ${id} is outside the vocabulary of ${this.vocabSize} tokens`);
    }
  }
}

/**
 * Cuts `text` at every occurrence of a special token's text, taking the tokens in the given order
 * (longest first), as llama.cpp's partition does. Returns text pieces and token ids; no empty pieces.
 */
function splitOnSpecial(text: string, specials: readonly SpecialToken[]): (string | number)[] {
  let fragments: (string | number)[] = text.length > 0 ? [text] : [];
  for (const { text: tokenText, id } of specials) {
    if (!text.includes(tokenText)) continue;
    const next: (string | number)[] = [];
    for (const fragment of fragments) {
      if (typeof fragment === "number" || !fragment.includes(tokenText)) {
        next.push(fragment);
        continue;
      }
      let from = 0;
      for (let at = fragment.indexOf(tokenText); at >= 0; at = fragment.indexOf(tokenText, from)) {
        if (at > from) next.push(fragment.slice(from, at));
        next.push(id);
        from = at + tokenText.length;
      }
      if (from < fragment.length) next.push(fragment.slice(from));
    }
    fragments = next;
  }
  return fragments;
}

/**
 * Builds the tokenizer described by GGUF metadata: SentencePiece for `tokenizer.ggml.model = "llama"`,
 * byte-level BPE for `"gpt2"`. Throws UnsupportedError naming any other model (or an unknown
 * `tokenizer.ggml.pre`), and BadFileError naming the key when vocabulary arrays are missing or malformed;
 * `source` (the file's path), when given, starts those messages.
 */
export function tokenizerFromMetadata(meta: TokenizerMetadata, source?: string): Tokenizer {
  try {
    const model = meta["tokenizer.ggml.model"];
    if (typeof model === "string" && model !== "llama" && model !== "gpt2") {
      throw new UnsupportedError(
        `tokenizer.ggml.model = "${model}" is not supported (supported: "llama" SentencePiece, "gpt2" BPE)`,
      );
    }
    const vocab = readVocab(meta);
    return new VocabTokenizer(
      vocab,
      vocab.model === "llama" ? new SpmModel(vocab) : new BpeModel(vocab, meta),
    );
  } catch (e) {
    throw inFile(source, e);
  }
}
