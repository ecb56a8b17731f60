/**
 * Pre-tokenizers of byte-level BPE: the regular expression that cuts text into words before merging,
 * chosen by `tokenizer.ggml.pre`. Written for JavaScript regular expressions with the `u` flag:
 * `(?i:…)` is spelled out as character classes and `\s` / `\S` become `\p{White_Space}` /
 * `\P{White_Space}`, the Unicode property that llama.cpp's splitter uses.
 *
 * @module
 */

import { UnsupportedError } from "../errors.ts";

const S = String.raw`\p{White_Space}`;
const NOT_S = String.raw`\P{White_Space}`;

/** Llama 3 (`llama-bpe`): `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`. */
const LLAMA3_PATTERN = String.raw`'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])` +
  String
    .raw`|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^${S}\p{L}\p{N}]+[\r\n]*|${S}*[\r\n]+|${S}+(?!${NOT_S})|${S}+`;

/** GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`. */
const GPT2_PATTERN = String
  .raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^${S}\p{L}\p{N}]+|${S}+(?!${NOT_S})|${S}+`;

/** How a BPE vocabulary splits text and merges words. */
export interface PreTokenizer {
  /** The `tokenizer.ggml.pre` name it was chosen by ("default" when absent). */
  readonly name: string;
  /** The word-splitting expression (global, unicode). */
  readonly pattern: RegExp;
  /** Whether a word that is itself a token is taken whole, without merging (Llama 3 does this). */
  readonly ignoreMerges: boolean;
}

/**
 * Picks the pre-tokenizer for a `tokenizer.ggml.pre` value: the Llama 3 expression for "llama-bpe",
 * "llama3", "llama-v3", "smaug-bpe", "default" and a missing value; GPT-2's for "gpt2". Anything else
 * throws {@link UnsupportedError} naming the value.
 */
export function preTokenizerFor(pre: string | undefined): PreTokenizer {
  const name = pre ?? "default";
  switch (name) {
    case "default":
    case "llama-bpe":
    case "llama3":
    case "llama-v3":
    case "smaug-bpe":
      return { name, pattern: new RegExp(LLAMA3_PATTERN, "gu"), ignoreMerges: true };
    case "gpt2":
      return { name, pattern: new RegExp(GPT2_PATTERN, "gu"), ignoreMerges: false };
    default:
      throw new UnsupportedError(
        `tokenizer.ggml.pre = "${name}" is not supported (supported: llama-bpe, llama3, llama-v3, smaug-bpe, gpt2, default)`,
      );
  }
}

/** Splits `text` into words with `pattern`; any characters the pattern skips become words of their own. */
export function splitWords(pattern: RegExp, text: string): string[] {
  const words: string[] = [];
  let end = 0;
  pattern.lastIndex = 0;
  for (const m of text.matchAll(pattern)) {
    if (m.index > end) words.push(text.slice(end, m.index));
    if (m[0].length > 0) words.push(m[0]);
    end = m.index + m[0].length;
  }
  if (end < text.length) words.push(text.slice(end));
  return words;
}
