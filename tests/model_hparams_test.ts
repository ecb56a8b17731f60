import { equal, ok, rejects, throws } from "node:assert/strict";
import { join } from "node:path";
import { BadFileError, BadFlagError, OutOfMemoryError, UnsupportedError } from "../src/errors.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import {
  f32,
  type MetadataEntry,
  metadataOf,
  str,
  type TensorEntry,
  u32,
  writeGGUF,
} from "../src/gguf/writer.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { ReferenceModel } from "../src/model/reference.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";

const dir = await Deno.makeTempDir({ prefix: "wgkv-hparams-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const base = join(dir, "base.gguf");
await writeSyntheticModel({ shape: "tiny", type: "f32", out: base, seed: 5 });

let counter = 0;

/** Rewrites the base model with edited metadata and tensors; returns the new path. */
async function variant(
  edit: (metadata: Record<string, MetadataEntry>, tensors: TensorEntry[]) => void,
): Promise<string> {
  const source = await openGGUF(base);
  const metadata = metadataOf(source);
  const tensors: TensorEntry[] = [];
  for (const info of source.tensors) {
    tensors.push({ name: info.name, type: info.type, shape: info.shape, data: await source.readBytes(info) });
  }
  source.close();
  edit(metadata, tensors);
  const out = join(dir, `variant-${counter++}.gguf`);
  await writeGGUF(out, { metadata, tensors });
  return out;
}

async function hparamsError(path: string): Promise<Error> {
  const file = await openGGUF(path);
  try {
    hparamsFromGGUF(file);
  } catch (e) {
    return e as Error;
  } finally {
    file.close();
  }
  throw new Error("expected an error");
}

function isOneLine(e: Error, path: string): void {
  ok(!e.message.includes("\n"), e.message);
  ok(e.message.startsWith(`${path}: `), e.message);
}

Deno.test("another architecture is refused with one line naming it", async () => {
  const path = await variant((m) => (m["general.architecture"] = str("qwen2")));
  const e = await hparamsError(path);
  ok(e instanceof UnsupportedError);
  equal(e.message, `${path}: architecture "qwen2" is not supported (only llama)`);
});

Deno.test("a tensor shape that does not match the hyper-parameters names the tensor", async () => {
  const path = await variant((m) => (m["llama.feed_forward_length"] = u32(500)));
  const e = await hparamsError(path);
  ok(e instanceof BadFileError);
  isOneLine(e, path);
  equal(
    e.message,
    `${path}: tensor blk.0.ffn_gate.weight has shape [256, 512], expected [256, 500] from the hyper-parameters`,
  );
  const vocab = await hparamsError(await variant((m) => (m["llama.vocab_size"] = u32(600))));
  ok(
    vocab.message.includes("tensor token_embd.weight has shape [256, 512], expected [256, 600]"),
    vocab.message,
  );
});

Deno.test("missing tensors, missing keys and inconsistent counts give one-line BadFileErrors", async () => {
  const cases: [(m: Record<string, MetadataEntry>, t: TensorEntry[]) => void, string][] = [
    [
      (_m, t) => t.splice(t.findIndex((x) => x.name === "blk.1.ffn_up.weight"), 1),
      "tensor blk.1.ffn_up.weight is missing",
    ],
    [(m) => delete m["llama.embedding_length"], "metadata llama.embedding_length is missing"],
    [(m) => (m["llama.block_count"] = u32(0)), "llama.block_count = 0 is not a positive integer"],
    [
      (m) => (m["llama.attention.head_count_kv"] = u32(3)),
      "head_count 8 is not a multiple of head_count_kv 3",
    ],
    [
      (m) => (m["llama.attention.layer_norm_rms_epsilon"] = f32(-1)),
      "layer_norm_rms_epsilon = -1 is not positive",
    ],
    [
      (m) => (m["llama.rope.dimension_count"] = u32(33)),
      "rope.dimension_count 33 must be even and at most 32",
    ],
    [(m) => (m["llama.block_count"] = str("two")), "llama.block_count is not a number"],
  ];
  for (const [edit, expected] of cases) {
    const path = await variant(edit);
    const e = await hparamsError(path);
    ok(e instanceof BadFileError, `${expected}: got ${e}`);
    isOneLine(e, path);
    ok(e.message.includes(expected), `${e.message} lacks "${expected}"`);
  }
});

Deno.test("llama3 scaling from metadata matches the rope_freqs factors; unknown scaling types are refused", async () => {
  const scaled = await variant((m, t) => {
    t.splice(t.findIndex((x) => x.name === "rope_freqs.weight"), 1);
    m["llama.rope.scaling.type"] = str("llama3");
    m["llama.rope.scaling.factor"] = f32(8);
    m["llama.rope.scaling.low_freq_factor"] = f32(1);
    m["llama.rope.scaling.high_freq_factor"] = f32(4);
    m["llama.rope.scaling.original_context_length"] = u32(256);
  });
  const [a, b] = [await openGGUF(base), await openGGUF(scaled)];
  const hp = hparamsFromGGUF(b);
  equal(hp.hasRopeFreqs, false);
  equal(hp.ropeScaling?.factor, 8);
  equal(hp.ropeScaling?.originalContext, 256);
  const [withFactors, withScaling] = [await ReferenceModel.load(a), await ReferenceModel.load(b)];
  a.close();
  b.close();
  for (let pos = 0; pos < 40; pos++) {
    const x = withFactors.forward(7 + pos, pos);
    const y = withScaling.forward(7 + pos, pos);
    for (let i = 0; i < x.length; i++) {
      ok(Math.abs(x[i] - y[i]) <= 1e-4 * Math.max(1, Math.abs(x[i])), `pos ${pos}`);
    }
  }
  const yarn = await variant((m) => {
    m["llama.rope.scaling.type"] = str("yarn");
    m["llama.rope.scaling.factor"] = f32(4);
  });
  const e = await hparamsError(yarn);
  ok(e instanceof UnsupportedError);
  isOneLine(e, yarn);
});

Deno.test("reference model: context overflow, position gaps and bad token ids are clear errors", async () => {
  const path = await variant((m) => (m["llama.context_length"] = u32(4)));
  const file = await openGGUF(path);
  const model = await ReferenceModel.load(file);
  file.close();
  for (let pos = 0; pos < 4; pos++) model.forward(1, pos);
  throws(() => model.forward(1, 4), OutOfMemoryError);
  throws(() => model.forward(1, 4), /context overflow: position 4 is past the context length 4/);
  model.reset();
  throws(() => model.forward(1, 1), BadFlagError);
  throws(() => model.forward(512, 0), /token id 512 is outside the vocabulary \(0\.\.511\)/);
  throws(() => model.forward(-1, 0), BadFlagError);
  const capped = await openGGUF(base);
  const short = await ReferenceModel.load(capped, 3);
  capped.close();
  equal(short.contextLength, 3);
  for (let pos = 0; pos < 3; pos++) short.forward(1, pos);
  throws(() => short.forward(1, 3), /past the context length 3/);
  const gemma = await openGGUF(await variant((m) => (m["general.architecture"] = str("gemma"))));
  await rejects(() => ReferenceModel.load(gemma), UnsupportedError);
  gemma.close();
});
