/**
 * SentencePiece tokenization as llama.cpp performs it for `tokenizer.ggml.model = "llama"`: spaces become
 * `▁`, the text is split into characters, and the adjacent pair whose concatenation is the highest-scoring
 * token is merged (leftmost on a tie) until no pair is a token. Characters that are not tokens fall back to
 * their UTF-8 bytes as `<0xXX>` tokens, or to the unknown token when the vocabulary has no byte tokens.
 * The merge uses a heap, so a text of n characters costs O(n log n).
 *
 * @module
 */

import { MergeQueue } from "./merge_queue.ts";
import { TokenType, type Vocab } from "./vocab.ts";

const SPACE_MARK = "\u2581"; // ▁
const UNKNOWN_PIECE = "\u2585"; // ▅, what llama.cpp prints for the unknown token
const utf8 = new TextEncoder();
const EMPTY = new Uint8Array(0);

/** SentencePiece (score-greedy merge) encoder and piece decoder over a checked {@link Vocab}. */
export class SpmModel {
  /** The vocabulary. */
  readonly vocab: Vocab;
  /** Whether each text fragment after the start or a special token gets a leading space. */
  readonly addSpacePrefix: boolean;
  readonly #byteTokens: Int32Array;
  readonly #pieces: (Uint8Array | undefined)[];

  /** Builds the encoder for `vocab` (byte-token table and piece cache). */
  constructor(vocab: Vocab) {
    this.vocab = vocab;
    this.addSpacePrefix = vocab.addSpacePrefix;
    this.#byteTokens = new Int32Array(256).fill(-1);
    for (let b = 0; b < 256; b++) {
      const id = vocab.ids.get(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
      if (id !== undefined) this.#byteTokens[b] = id;
    }
    this.#pieces = new Array(vocab.tokens.length);
  }

  /**
   * Appends the tokens of a text fragment (no special tokens inside) to `out`; `spacePrefix` puts a space
   * in front of it first (llama.cpp does this at the start of the text and after every special token).
   */
  encodeFragment(text: string, spacePrefix: boolean, out: number[]): void {
    const s = ((spacePrefix && this.addSpacePrefix) ? " " + text : text).replaceAll(" ", SPACE_MARK);
    if (s.length === 0) return;
    const { ids, scores } = this.vocab;
    // One symbol per code point: [start, length) in UTF-16 units, linked list through prev/next.
    const n = s.length;
    const start = new Int32Array(n),
      len = new Int32Array(n),
      prev = new Int32Array(n),
      next = new Int32Array(n);
    let count = 0;
    for (let i = 0; i < n;) {
      const c = s.charCodeAt(i);
      const units = c >= 0xd800 && c <= 0xdbff && i + 1 < n ? 2 : 1;
      start[count] = i;
      len[count] = units;
      prev[count] = count - 1;
      next[count] = count + 1;
      count++;
      i += units;
    }
    next[count - 1] = -1;

    const queue = new MergeQueue();
    const tryPair = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const length = len[left] + len[right];
      const id = ids.get(s.slice(start[left], start[left] + length));
      if (id === undefined) return;
      queue.push(left, right, -scores[id], length);
    };
    for (let i = 1; i < count; i++) tryPair(i - 1, i);

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

    for (let i = 0; i >= 0; i = next[i]) {
      const piece = s.slice(start[i], start[i] + len[i]);
      const id = ids.get(piece);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      for (const byte of utf8.encode(piece)) {
        const byteId = this.#byteTokens[byte];
        out.push(byteId >= 0 ? byteId : this.vocab.unk ?? 0);
      }
    }
  }

  /** Raw bytes of token `id` (`▁` as a space); control tokens give their text only when `special`. */
  piece(id: number, special: boolean): Uint8Array {
    const type = this.vocab.types[id];
    if (type === TokenType.control) return special ? utf8.encode(this.vocab.tokens[id]) : EMPTY;
    let bytes = this.#pieces[id];
    if (bytes === undefined) {
      const text = this.vocab.tokens[id];
      if (type === TokenType.byte) {
        const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(text);
        bytes = m ? Uint8Array.of(parseInt(m[1], 16)) : utf8.encode(text);
      } else if (type === TokenType.unknown) {
        bytes = utf8.encode(UNKNOWN_PIECE);
      } else if (type === TokenType.unused) {
        bytes = EMPTY;
      } else {
        bytes = utf8.encode(text.replaceAll(SPACE_MARK, " "));
      }
      this.#pieces[id] = bytes;
    }
    return bytes;
  }
}
