/**
 * Byte-level BPE as llama.cpp performs it for `tokenizer.ggml.model = "gpt2"`: the text is cut into words
 * by the pre-tokenizer expression, each word's UTF-8 bytes are spelled with GPT-2's byte → character
 * table, and the adjacent pair with the lowest merge rank (index in `tokenizer.ggml.merges`, leftmost on
 * a tie) is merged until none is left. Words are cached; merging uses a heap.
 *
 * @module
 */

import { BadFileError } from "../errors.ts";
import { MergeQueue } from "./merge_queue.ts";
import { type PreTokenizer, preTokenizerFor, splitWords } from "./pretokenizer.ts";
import { type TokenizerMetadata, TokenType, type Vocab } from "./vocab.ts";

const utf8 = new TextEncoder();
const EMPTY = new Uint8Array(0);
const WORD_CACHE_LIMIT = 50_000;

/**
 * GPT-2's table: printable bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for themselves, the other 68 bytes
 * for code points 256, 257, … in byte order. Returns byte → character and character code → byte.
 */
function byteCharacterTables(): { byteToChar: string[]; charToByte: Map<number, number> } {
  const byteToChar: string[] = new Array(256);
  const charToByte = new Map<number, number>();
  let extra = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    const code = printable ? b : extra++;
    byteToChar[b] = String.fromCharCode(code);
    charToByte.set(code, b);
  }
  return { byteToChar, charToByte };
}

const { byteToChar: BYTE_TO_CHAR, charToByte: CHAR_TO_BYTE } = byteCharacterTables();

/** Byte-level BPE encoder and piece decoder over a checked {@link Vocab} and its merges. */
export class BpeModel {
  /** The vocabulary. */
  readonly vocab: Vocab;
  /** BPE never adds a space prefix. */
  readonly addSpacePrefix = false;
  /** The word splitter chosen by `tokenizer.ggml.pre`. */
  readonly preTokenizer: PreTokenizer;
  readonly #ranks: Map<string, number>;
  readonly #cache = new Map<string, number[]>();
  readonly #pieces: (Uint8Array | undefined)[];

  /**
   * Reads `tokenizer.ggml.merges` ("left right" strings, rank = index) and `tokenizer.ggml.pre` from
   * `meta`. Throws {@link BadFileError} when merges are missing or malformed, UnsupportedError for an
   * unknown pre-tokenizer.
   */
  constructor(vocab: Vocab, meta: TokenizerMetadata) {
    this.vocab = vocab;
    const pre = meta["tokenizer.ggml.pre"];
    if (pre !== undefined && typeof pre !== "string") {
      throw new BadFileError(`metadata tokenizer.ggml.pre: expected a string, got ${typeof pre}`);
    }
    this.preTokenizer = preTokenizerFor(pre);
    const merges = meta["tokenizer.ggml.merges"];
    if (!Array.isArray(merges)) {
      throw new BadFileError(
        `metadata tokenizer.ggml.merges is ${merges === undefined ? "missing" : "not an array"}`,
      );
    }
    this.#ranks = new Map();
    for (let i = 0; i < merges.length; i++) {
      const merge = merges[i];
      if (typeof merge !== "string" || merge.indexOf(" ", 1) < 0) {
        throw new BadFileError(
          `metadata tokenizer.ggml.merges[${i}]: expected "left right", got ${String(merge)}`,
        );
      }
      // Keyed by the text itself: tokens are spelled with the byte table, so they contain no plain space.
      if (!this.#ranks.has(merge)) this.#ranks.set(merge, i);
    }
    this.#pieces = new Array(vocab.tokens.length);
  }

  /** Appends the tokens of a text fragment (no special tokens inside) to `out`. */
  encodeFragment(text: string, _spacePrefix: boolean, out: number[]): void {
    for (const word of splitWords(this.preTokenizer.pattern, text)) {
      let ids = this.#cache.get(word);
      if (ids === undefined) {
        ids = this.#encodeWord(word);
        if (this.#cache.size >= WORD_CACHE_LIMIT) this.#cache.clear();
        this.#cache.set(word, ids);
      }
      for (const id of ids) out.push(id);
    }
  }

  #encodeWord(word: string): number[] {
    const bytes = utf8.encode(word);
    let spelled = "";
    for (const b of bytes) spelled += BYTE_TO_CHAR[b];
    const { ids } = this.vocab;
    if (this.preTokenizer.ignoreMerges) {
      const whole = ids.get(spelled);
      if (whole !== undefined) return [whole];
    }
    // Every spelled character is one UTF-16 unit, so symbol i starts at offset i.
    const n = spelled.length;
    const len = new Int32Array(n).fill(1), prev = new Int32Array(n), next = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      prev[i] = i - 1;
      next[i] = i + 1;
    }
    next[n - 1] = -1;
    const queue = new MergeQueue();
    const tryPair = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const rank = this.#ranks.get(
        spelled.slice(left, left + len[left]) + " " + spelled.slice(right, right + len[right]),
      );
      if (rank !== undefined) queue.push(left, right, rank, len[left] + len[right]);
    };
    for (let i = 1; i < n; i++) tryPair(i - 1, i);
    while (queue.size > 0) {
      const left = queue.left, right = queue.right, length = queue.length;
      queue.pop();
      if (len[left] === 0 || len[right] === 0 || len[left] + len[right] !== length) continue;
      len[left] = length;
      len[right] = 0;
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      tryPair(prev[left], left);
      tryPair(left, next[left]);
    }
    const result: number[] = [];
    for (let i = 0; i >= 0; i = next[i]) {
      const piece = spelled.slice(i, i + len[i]);
      const id = ids.get(piece);
      if (id !== undefined) {
        result.push(id);
        continue;
      }
      for (const ch of piece) {
        const single = ids.get(ch);
        if (single !== undefined) result.push(single);
        else if (this.vocab.unk !== undefined) result.push(this.vocab.unk);
      }
    }
    return result;
  }

  /** Raw bytes of token `id`; control tokens give their text only when `special`. */
  piece(id: number, special: boolean): Uint8Array {
    const type = this.vocab.types[id];
    if (type === TokenType.control) return special ? utf8.encode(this.vocab.tokens[id]) : EMPTY;
    let bytes = this.#pieces[id];
    if (bytes === undefined) {
      const text = this.vocab.tokens[id];
      if (type === TokenType.normal || type === TokenType.byte) {
        const out: number[] = [];
        for (const ch of text) {
          const b = CHAR_TO_BYTE.get(ch.codePointAt(0)!);
          if (b !== undefined) out.push(b);
          else out.push(...utf8.encode(ch));
        }
        bytes = Uint8Array.from(out);
      } else if (type === TokenType.unused) {
        bytes = EMPTY;
      } else {
        bytes = utf8.encode(text);
      }
      this.#pieces[id] = bytes;
    }
    return bytes;
  }
}
