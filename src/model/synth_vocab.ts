/**
 * A self-contained SentencePiece-style vocabulary of any size for synthetic models, so that a model with
 * random weights still tokenizes and decodes text without any other file. Layout (as in Llama 1/2):
 * `<unk>`, `<s>`, `</s>`, the 256 byte-fallback tokens `<0x00>`…`<0xFF>`, `▁` and the printable ASCII
 * characters, common English words and capitalised sentence starters (with all their prefixes, so merges can
 * reach them), then generated
 * letter pieces, shortest first. Scores descend with the id, so shorter and earlier pieces merge first.
 *
 * @module
 */

/** SentencePiece token types as GGUF stores them (`tokenizer.ggml.token_type`). */
export const TokenType = {
  /** An ordinary piece. */
  Normal: 1,
  /** The unknown token. */
  Unknown: 2,
  /** A control token (BOS, EOS). */
  Control: 3,
  /** A byte-fallback token `<0xXX>`. */
  Byte: 6,
} as const;

/** The tokenizer metadata of a synthetic vocabulary, ready to write as GGUF `tokenizer.*` keys. */
export interface SyntheticVocab {
  /** `tokenizer.ggml.tokens`. */
  tokens: string[];
  /** `tokenizer.ggml.scores`. */
  scores: Float32Array;
  /** `tokenizer.ggml.token_type`. */
  tokenTypes: Int32Array;
  /** `tokenizer.ggml.unknown_token_id` (0). */
  unkId: number;
  /** `tokenizer.ggml.bos_token_id` (1). */
  bosId: number;
  /** `tokenizer.ggml.eos_token_id` (2). */
  eosId: number;
}

/** The SentencePiece word-boundary mark that stands for a space. */
export const SPACE_MARK = "\u2581";

/** Common English words, most frequent first (the pieces a story-like text needs). */
const COMMON_WORDS = (
  "the of and to a in is was he for it with as his on be at by i that had not are but from or have an they " +
  "which one you were her all she there would their we him been has when who will more no if out so said " +
  "what up its about into than them can only other new some could time these two may then do first any my " +
  "now such like our over man me even most made after also did many before must through back years where " +
  "much your way well down should because each just those people how too little state good very make world " +
  "still own see men work long get here between both life being under never day same another know while last " +
  "might us great old year off come since against go came right used take three once upon girl boy named " +
  "lily tom ben mom dad play park ball big red happy sad friend friends saw wanted help tree dog cat bird " +
  "house home found looked went ran smiled fun love loved toy toys sun sky water every thing things"
).split(" ");

/** Capitalised words that often start a sentence. */
const CAPITALISED_WORDS = "The A He She It They We I One Once Lily Tom Ben There In But And Then When".split(
  " ",
);

/** Letters in rough order of English frequency, for the generated pieces. */
const LETTERS = "etaoinshrdlcumwfgypbvkjxqz";

/**
 * A vocabulary of exactly `size` tokens (at least 3 + 256 + 95 = 354). Deterministic: the same size
 * always gives the same vocabulary.
 */
export function syntheticVocab(size: number): SyntheticVocab {
  const base = 3 + 256 + 95;
  if (!Number.isInteger(size) || size < base) {
    throw new RangeError(`vocabulary size ${size} is below ${base}`);
  }
  const tokens: string[] = ["<unk>", "<s>", "</s>"];
  const types: number[] = [TokenType.Unknown, TokenType.Control, TokenType.Control];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(TokenType.Byte);
  }
  const seen = new Set<string>();
  const add = (piece: string): boolean => {
    if (tokens.length >= size || seen.has(piece)) return false;
    seen.add(piece);
    tokens.push(piece);
    types.push(TokenType.Normal);
    return true;
  };
  add(SPACE_MARK);
  for (let c = 0x21; c < 0x7f; c++) add(String.fromCharCode(c));
  const addWithPrefixes = (piece: string) => {
    for (let end = 2; end <= piece.length; end++) add(piece.slice(0, end));
  };
  for (const word of COMMON_WORDS) {
    addWithPrefixes(SPACE_MARK + word);
    addWithPrefixes(word);
  }
  for (const word of CAPITALISED_WORDS) addWithPrefixes(SPACE_MARK + word);
  // Fill with letter strings, shortest first (each length enumerated in frequency order, after the
  // space-prefixed variants of the previous length), so every piece's prefixes are already present.
  let previous: string[] = [""];
  while (tokens.length < size) {
    const next: string[] = [];
    for (const stem of previous) {
      for (const letter of LETTERS) {
        const piece = stem + letter;
        next.push(piece);
        add(SPACE_MARK + piece);
      }
    }
    for (const piece of next) if (piece.length >= 2) add(piece);
    previous = next;
  }
  const scores = new Float32Array(size);
  for (let id = base - 95; id < size; id++) scores[id] = -(id - (base - 95));
  return {
    tokens,
    scores,
    tokenTypes: Int32Array.from(types),
    unkId: 0,
    bosId: 1,
    eosId: 2,
  };
}
