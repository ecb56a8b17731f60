import { deepEqual, equal, notDeepEqual, ok } from "node:assert/strict";
import { join } from "node:path";
import { openGGUF } from "../src/gguf/reader.ts";
import { dequantize, GGMLType, tensorByteSize } from "../src/gguf/types.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { ropeInverseFrequencies } from "../src/model/ops.ts";
import { Xoshiro128 } from "../src/model/random.ts";
import { ReferenceModel } from "../src/model/reference.ts";
import {
  SYNTH_TYPES,
  synthHParams,
  synthTensorType,
  type SynthType,
  writeSyntheticModel,
} from "../src/model/synth.ts";
import { fillRandomTensor, RANDOM_TYPES } from "../src/model/synth_blocks.ts";
import { syntheticVocab } from "../src/model/synth_vocab.ts";
import { llamaTensors } from "../src/model/tensor_names.ts";
import { tokenizerFromMetadata } from "../src/tokenizer/tokenizer.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

const dir = await Deno.makeTempDir({ prefix: "wgkv-synth-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function stddev(x: ArrayLike<number>): number {
  let s = 0, s2 = 0;
  for (let i = 0; i < x.length; i++) {
    s += x[i];
    s2 += x[i] * x[i];
  }
  const mean = s / x.length;
  return Math.sqrt(s2 / x.length - mean * mean);
}

Deno.test("random blocks of every type decode to finite values of the requested spread", () => {
  const sigma = 0.05;
  for (const type of RANDOM_TYPES) {
    const n = 256 * 64;
    const bytes = new Uint8Array(tensorByteSize(type, n));
    fillRandomTensor(type, bytes, sigma, new Xoshiro128(7));
    const values = dequantize(type, bytes, n);
    ok(values.every(Number.isFinite), `${GGMLType[type]}: non-finite value`);
    let mean = 0;
    for (const v of values) mean += v / n;
    const sd = stddev(values);
    ok(Math.abs(sd / sigma - 1) < 0.06, `${GGMLType[type]}: std ${sd}, wanted ${sigma}`);
    ok(Math.abs(mean) < 0.05 * sigma, `${GGMLType[type]}: mean ${mean}`);
  }
});

Deno.test("every synthetic type: tiny shape loads, validates and runs to finite, varied logits", async () => {
  for (const type of SYNTH_TYPES) {
    const out = join(dir, `tiny-${type}.gguf`);
    await writeSyntheticModel({ shape: "tiny", type, out, seed: 3 });
    const file = await openGGUF(out);
    const hp = hparamsFromGGUF(file);
    deepEqual(hp, { ...synthHParams("tiny"), rmsEps: Math.fround(1e-5) });
    ok(file.getString("general.name").includes("RANDOM"));
    for (const expected of llamaTensors(hp, true)) {
      equal(file.tensor(expected.name).type, synthTensorType(type, expected, hp), `${type} ${expected.name}`);
    }
    const model = await ReferenceModel.load(file);
    file.close();
    let token = 1;
    for (let pos = 0; pos < 3; pos++) {
      const logits = model.forward(token, pos);
      ok(logits.every(Number.isFinite), `${type}: non-finite logits`);
      const sd = stddev(logits);
      ok(sd > 1 && sd < 10, `${type}: logit std ${sd}`);
      token = logits.indexOf(Math.max(...logits));
    }
  }
});

Deno.test("q4_k_m and q5_k_m follow llama.cpp's mixes; pure K types fall back where rows do not fit", () => {
  const hp = synthHParams("llama-3.1-8b");
  const byName = new Map(llamaTensors(hp, true).map((t) => [t.name, t]));
  const typeOf = (type: SynthType, name: string) => synthTensorType(type, byName.get(name)!, hp);
  equal(typeOf("q4_k_m", "output.weight"), GGMLType.Q6_K);
  equal(typeOf("q4_k_m", "token_embd.weight"), GGMLType.Q4_K);
  equal(typeOf("q4_k_m", "blk.0.attn_v.weight"), GGMLType.Q6_K);
  equal(typeOf("q4_k_m", "blk.4.attn_v.weight"), GGMLType.Q4_K);
  equal(typeOf("q4_k_m", "blk.6.ffn_down.weight"), GGMLType.Q6_K);
  equal(typeOf("q4_k_m", "blk.31.ffn_down.weight"), GGMLType.Q6_K);
  equal(typeOf("q4_k_m", "blk.6.attn_q.weight"), GGMLType.Q4_K);
  equal(typeOf("q4_k_m", "blk.6.attn_norm.weight"), GGMLType.F32);
  for (
    const name of ["output.weight", "blk.0.attn_v.weight", "blk.6.ffn_down.weight", "blk.31.ffn_down.weight"]
  ) {
    equal(typeOf("q5_k_m", name), GGMLType.Q6_K, name);
  }
  for (
    const name of ["token_embd.weight", "blk.4.attn_v.weight", "blk.6.attn_q.weight", "blk.7.ffn_down.weight"]
  ) {
    equal(typeOf("q5_k_m", name), GGMLType.Q5_K, name);
  }
  equal(typeOf("q8_0", "blk.6.ffn_down.weight"), GGMLType.Q8_0);
  const tied = synthHParams("llama-3.2-1b");
  equal(tied.tiedOutput, true);
  const embd = llamaTensors(tied, true)[0];
  equal(synthTensorType("q4_k_m", embd, tied), GGMLType.Q6_K);
  equal(synthTensorType("q5_k_m", embd, tied), GGMLType.Q6_K);
  const odd = { name: "blk.0.ffn_down.weight", shape: [172, 64], isVector: false, layer: 0 };
  equal(synthTensorType("q4_k", odd, tied), GGMLType.F16);
  equal(synthTensorType("q4_k", { ...odd, shape: [160, 64] }, tied), GGMLType.Q8_0);
});

Deno.test("same seed gives the same bytes, another seed other bytes", async () => {
  for (const type of ["f16", "q4_k_m"] as const) {
    const a = join(dir, `a-${type}.gguf`), b = join(dir, `b-${type}.gguf`), c = join(dir, `c-${type}.gguf`);
    await writeSyntheticModel({ shape: "tiny", type, out: a, seed: 11 });
    await writeSyntheticModel({ shape: "tiny", type, out: b, seed: 11 });
    await writeSyntheticModel({ shape: "tiny", type, out: c, seed: 12 });
    equal(await sha256(a), await sha256(b));
    notDeepEqual(await sha256(a), await sha256(c));
  }
});

Deno.test("tied output, rope_freqs factors and progress reporting", async () => {
  const out = join(dir, "tied.gguf");
  const reports: [number, number][] = [];
  await writeSyntheticModel({
    shape: "tiny",
    type: "q8_0",
    out,
    tiedOutput: true,
    onProgress: (done, total) => reports.push([done, total]),
  });
  const file = await openGGUF(out);
  const hp = hparamsFromGGUF(file);
  equal(hp.tiedOutput, true);
  equal(file.has("output.weight"), false);
  const total = file.tensors.reduce((s, t) => s + t.byteLength, 0);
  deepEqual(reports.at(-1), [total, total]);
  ok(reports.every(([d], i) => i === 0 || d >= reports[i - 1][0]));
  const factors = await file.readF32(file.tensor("rope_freqs.weight"));
  const viaFactors = ropeInverseFrequencies(hp.ropeDim, hp.ropeBase, factors);
  const viaScaling = ropeInverseFrequencies(hp.ropeDim, hp.ropeBase, undefined, {
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalContext: 256,
  });
  for (let i = 0; i < viaFactors.length; i++) ok(Math.abs(viaFactors[i] / viaScaling[i] - 1) < 1e-6);
  ok(factors.some((f) => f === 1) && factors.some((f) => f === 8) && factors.some((f) => f > 1 && f < 8));
  const model = await ReferenceModel.load(file);
  file.close();
  ok(model.forward(1, 0).every(Number.isFinite));
});

fixtureTest("vocabFrom copies the stories260K vocabulary", ["stories260K.gguf"], async () => {
  const out = join(dir, "vocab.gguf");
  await writeSyntheticModel({ shape: "tiny", type: "f16", out, vocabFrom: fixture("stories260K.gguf") });
  const [made, source] = [await openGGUF(out), await openGGUF(fixture("stories260K.gguf"))];
  for (const key of Object.keys(source.metadata).filter((k) => k.startsWith("tokenizer."))) {
    deepEqual(made.metadata[key], source.metadata[key], key);
  }
  equal(hparamsFromGGUF(made).nVocab, 512);
  made.close();
  source.close();
});

Deno.test("the generated vocabulary is SentencePiece-shaped and round-trips text", () => {
  for (const size of [512, 128256]) {
    const vocab = syntheticVocab(size);
    equal(vocab.tokens.length, size);
    equal(new Set(vocab.tokens).size, size);
    deepEqual(vocab.tokens.slice(0, 4), ["<unk>", "<s>", "</s>", "<0x00>"]);
    equal(vocab.tokens[258], "<0xFF>");
  }
  const vocab = syntheticVocab(4096);
  const tokenizer = tokenizerFromMetadata({
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": vocab.tokens,
    "tokenizer.ggml.scores": [...vocab.scores],
    "tokenizer.ggml.token_type": [...vocab.tokenTypes],
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
    "tokenizer.ggml.unknown_token_id": 0,
  });
  for (
    const text of [
      "Once upon a time, there was a little girl named Lily.",
      "héllo wörld ✓ 42",
      "  two  spaces",
    ]
  ) {
    const ids = tokenizer.encode(text, { addBos: false });
    equal(tokenizer.decode(ids), text);
    ok(ids.every((id) => id > 2 && id < 4096));
  }
  const words = tokenizer.encode("Once upon a time, the little girl", { addBos: false });
  deepEqual(words.map((id) => vocab.tokens[id]), [
    "\u2581Once",
    "\u2581upon",
    "\u2581a",
    "\u2581time",
    ",",
    "\u2581the",
    "\u2581little",
    "\u2581girl",
  ]);
});

fixtureTest(
  "vocabFrom a 32,000-token vocabulary sets the model's vocabulary size",
  ["llama-2-tiny-random.gguf"],
  async () => {
    const out = join(dir, "vocab32k.gguf");
    await writeSyntheticModel({
      shape: "tiny",
      type: "q8_0",
      out,
      vocabFrom: fixture("llama-2-tiny-random.gguf"),
    });
    const file = await openGGUF(out);
    const hp = hparamsFromGGUF(file);
    equal(hp.nVocab, 32000);
    equal(file.getArray("tokenizer.ggml.tokens").length, 32000);
    file.close();
  },
);
