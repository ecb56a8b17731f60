import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { readFileSync } from "node:fs";
import { BadFileError, UnsupportedError } from "../src/errors.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import { type Tokenizer, tokenizerFromMetadata } from "../src/tokenizer/mod.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

const SPM = "vocab/ggml-vocab-llama-spm.gguf";
const BPE = "vocab/ggml-vocab-llama-bpe.gguf";
const STORIES = "stories260K.gguf";
const BOOK = "text/pg1342-pride-and-prejudice.txt";

const tokenizers = new Map<string, Promise<Tokenizer>>();
function load(name: string): Promise<Tokenizer> {
  let t = tokenizers.get(name);
  if (t === undefined) {
    t = openGGUF(fixture(name)).then((file) => tokenizerFromMetadata(file.metadata));
    tokenizers.set(name, t);
  }
  return t;
}

/** The llama.cpp test vectors: every case of `.inp` with the ids of the matching `.out` line. */
function vectors(name: string): { text: string; ids: number[] }[] {
  const inputs = readFileSync(fixture(`${name}.inp`), "utf8").split("\n__ggml_vocab_test__\n");
  equal(inputs.pop(), "", "the .inp file ends with a separator");
  const lines = readFileSync(fixture(`${name}.out`), "utf8").split("\n");
  return inputs.map((text, i) => {
    const line = lines[i].trim();
    return { text, ids: line === "" ? [] : line.split(" ").map(Number) };
  });
}

for (const name of [SPM, BPE]) {
  fixtureTest(
    `${name}: all llama.cpp vectors match exactly and round-trip`,
    [name, `${name}.inp`],
    async () => {
      const tok = await load(name);
      const cases = vectors(name);
      equal(cases.length, 46);
      const failures: string[] = [];
      for (const { text, ids } of cases) {
        const got = tok.encode(text, { addBos: false });
        if (JSON.stringify(got) !== JSON.stringify(ids)) {
          failures.push(`${JSON.stringify(text)}: got ${got.join(" ")}, want ${ids.join(" ")}`);
        }
        equal(tok.decode(got), text, `round trip of ${JSON.stringify(text)}`);
      }
      deepEqual(failures, []);
    },
  );
}

fixtureTest("SPM: BOS handling and decode drops the space prefix", [SPM], async () => {
  const tok = await load(SPM);
  equal(tok.bos, 1);
  equal(tok.eos, 2);
  ok(tok.addBos);
  const ids = tok.encode("Hello world");
  deepEqual(ids, [1, 15043, 3186]);
  equal(tok.decode(ids), "Hello world");
  deepEqual(tok.encode("Hello world", { addBos: false }), [15043, 3186]);
  deepEqual(tok.encode(""), [1]);
  deepEqual(tok.encode("", { addBos: false }), []);
  equal(tok.decode([1, 15043, 2], { skipSpecial: false }), "<s>Hello</s>");
  equal(tok.decode([1, 15043, 2]), "Hello");
  deepEqual([...tok.tokenToPiece(15043)], [...new TextEncoder().encode(" Hello")]);
  deepEqual([...tok.tokenToPiece(1)], []);
  deepEqual([...tok.tokenToPiece(1, { special: true })], [...new TextEncoder().encode("<s>")]);
  ok(tok.isEndOfGeneration(2));
  ok(!tok.isEndOfGeneration(1));
});

fixtureTest("SPM: parseSpecial turns <s> into its id, a space prefix follows it", [SPM], async () => {
  const tok = await load(SPM);
  const plain = tok.encode("<s>Hi", { addBos: false });
  ok(!plain.includes(1), "without parseSpecial <s> is text");
  const parsed = tok.encode("<s>Hi</s>", { addBos: false, parseSpecial: true });
  deepEqual(parsed, [1, ...tok.encode("Hi", { addBos: false }), 2]);
  equal(tok.decode(parsed, { skipSpecial: false }), "<s>Hi</s>");
});

fixtureTest("BPE: special tokens, BOS and end of generation", [BPE], async () => {
  const tok = await load(BPE);
  equal(tok.vocabSize, 128256);
  equal(tok.bos, 128000);
  ok(tok.addBos);
  const text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
  const ids = tok.encode(text, { addBos: false, parseSpecial: true });
  deepEqual(ids.slice(0, 2), [128000, 128006]);
  equal(ids.at(-1), 128009);
  equal(ids.filter((id) => id >= 128000).length, 4);
  equal(tok.decode(ids, { skipSpecial: false }), text);
  equal(tok.decode(ids), "user\n\nHi");
  const plain = tok.encode(text, { addBos: false });
  ok(plain.every((id) => id < 128000), "without parseSpecial markers are text");
  equal(tok.decode(plain), text);
  deepEqual(tok.encode("Hello"), [128000, 9906]);
  ok(tok.isEndOfGeneration(128001));
  ok(tok.isEndOfGeneration(128009), "<|eot_id|>");
  ok(!tok.isEndOfGeneration(9906));
});

const MULTILINGUAL = "Grüße 👋🏽 from 東京 — naïve café, 🇫🇷 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ok";

for (const name of [SPM, BPE, STORIES]) {
  fixtureTest(`${name}: stream decoding piece by piece equals decode`, [name], async () => {
    const tok = await load(name);
    const ids = tok.encode(MULTILINGUAL);
    const full = tok.decode(ids);
    equal(full, MULTILINGUAL);
    const stream = tok.streamDecoder();
    let joined = "";
    for (const id of ids) {
      const part = stream.push(id);
      ok(!part.includes("\uFFFD"), `no replacement character in ${JSON.stringify(part)}`);
      ok(
        !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(part),
        "no lone surrogate",
      );
      joined += part;
    }
    joined += stream.flush();
    equal(joined, full);
  });
}

fixtureTest("stories260K: 512-token SPM vocab encodes and decodes", [STORIES], async () => {
  const tok = await load(STORIES);
  equal(tok.vocabSize, 512);
  const ids = tok.encode("Once upon a time");
  equal(ids[0], 1);
  ok(ids.length > 2 && ids.every((id) => id >= 0 && id < 512));
  equal(tok.decode(ids), "Once upon a time");
  // Generation starting from BOS: the first generated word loses its space prefix.
  const stream = tok.streamDecoder();
  equal(ids.slice(1).map((id) => stream.push(id)).join("") + stream.flush(), "Once upon a time");
  const afterBos = tok.streamDecoder({ previous: 1 });
  equal(ids.slice(1).map((id) => afterBos.push(id)).join("") + afterBos.flush(), "Once upon a time");
  const continued = tok.streamDecoder({ previous: ids[1] });
  equal(ids.slice(2).map((id) => continued.push(id)).join("") + continued.flush(), " upon a time");
});

for (const name of [SPM, BPE]) {
  fixtureTest(`${name}: 200 KB of a novel tokenizes quickly and round-trips`, [name, BOOK], async () => {
    const tok = await load(name);
    const text = readFileSync(fixture(BOOK), "utf8").slice(0, 200_000);
    const t0 = performance.now();
    const ids = tok.encode(text, { addBos: false });
    const ms = performance.now() - t0;
    ok(ms < 5000, `took ${ms.toFixed(0)} ms`);
    ok(ids.length > 30_000 && ids.length < 80_000, `${ids.length} tokens`);
    equal(tok.decode(ids), text);
  });
}

Deno.test("bad metadata gives clear errors", () => {
  const base = {
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "a", "▁a"],
    "tokenizer.ggml.scores": [0, 0, 0, -1, -2],
    "tokenizer.ggml.token_type": [2, 3, 3, 1, 1],
    "tokenizer.ggml.bos_token_id": 1,
  };
  deepEqual(tokenizerFromMetadata(base).encode("a a"), [1, 4, 4]);
  throws(() => tokenizerFromMetadata({ ...base, "tokenizer.ggml.model": "t5" }), UnsupportedError);
  throws(
    () => tokenizerFromMetadata({ ...base, "tokenizer.ggml.model": "t5" }),
    /tokenizer\.ggml\.model.*t5/,
  );
  throws(() => tokenizerFromMetadata({ ...base, "tokenizer.ggml.tokens": undefined }), BadFileError);
  throws(() => tokenizerFromMetadata({ ...base, "tokenizer.ggml.tokens": "abc" }), /tokenizer\.ggml\.tokens/);
  throws(
    () => tokenizerFromMetadata({ ...base, "tokenizer.ggml.scores": [0, 1] }),
    /tokenizer\.ggml\.scores/,
  );
  throws(
    () => tokenizerFromMetadata({ ...base, "tokenizer.ggml.token_type": [1, 1, 1, 1, 9] }),
    BadFileError,
  );
  throws(() => tokenizerFromMetadata({ ...base, "tokenizer.ggml.bos_token_id": 99 }), /bos_token_id.*99/);
  const bpe = { ...base, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.merges": ["a b"] };
  throws(
    () => tokenizerFromMetadata({ ...bpe, "tokenizer.ggml.pre": "qwen2" }),
    /tokenizer\.ggml\.pre.*qwen2/,
  );
  throws(() => tokenizerFromMetadata({ ...bpe, "tokenizer.ggml.merges": undefined }), /merges is missing/);
  throws(() => tokenizerFromMetadata({ ...bpe, "tokenizer.ggml.merges": [7] }), /merges\[0\]/);
  throws(() => tokenizerFromMetadata(base).decode([5]), /token id 5/);
});

Deno.test("end of generation: eos, eot and eom ids and the usual end-of-turn control tokens", () => {
  const tok = tokenizerFromMetadata({
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "<|eom_id|>", "<end_of_turn>", "<|im_end|>", "x"],
    "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 3, 1],
    "tokenizer.ggml.eos_token_id": 2,
    "tokenizer.ggml.eot_token_id": 4,
    "tokenizer.ggml.eom_token_id": 3,
  });
  deepEqual([0, 1, 2, 3, 4, 5, 6].map((id) => tok.isEndOfGeneration(id)), [
    false,
    false,
    true,
    true,
    true,
    true,
    false,
  ]);
  equal(tok.bos, undefined);
  ok(!tok.addBos, "no BOS token, so none is added");
});
