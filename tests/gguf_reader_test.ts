import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { BadFileError } from "../src/errors.ts";
import { GGMLType, openGGUF } from "../src/gguf/mod.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

fixtureTest("gguf reader: stories260K metadata and 48 F32 tensors", ["stories260K.gguf"], async () => {
  const g = await openGGUF(fixture("stories260K.gguf"));
  try {
    equal(g.version, 3);
    equal(g.architecture, "llama");
    equal(g.alignment, 32);
    equal(g.dataOffset % 32, 0);
    equal(g.tensors.length, 48);
    ok(g.tensors.every((t) => t.type === GGMLType.F32));
    equal(g.getNumber("llama.embedding_length"), 64);
    equal(g.getNumber("llama.block_count"), 5);
    equal(g.getNumber("llama.attention.head_count_kv"), 4);
    equal(g.getNumber("llama.rope.freq_base", 10000), 10000);
    equal(g.getString("tokenizer.ggml.model"), "llama");
    equal(g.getArray("tokenizer.ggml.tokens").length, 512);
    const emb = g.tensor("token_embd.weight");
    deepEqual(emb.shape, [64, 512]);
    equal(emb.nElements, 64 * 512);
    equal(emb.byteLength, 64 * 512 * 4);
    const all = await g.readF32(emb);
    equal(all.length, 64 * 512);
    ok(all.every(Number.isFinite));
    // a sub-range read returns exactly those bytes
    const whole = await g.readBytes(emb);
    const part = await g.readBytes(emb, 4 * 64, 4 * 64);
    deepEqual(part, whole.subarray(256, 512));
    const row1 = new Float32Array(part.buffer);
    deepEqual(row1, all.subarray(64, 128));
    ok(g.has("output.weight"));
    ok(!g.has("nope"));
    // the tensors tile the data section in order within the file
    for (const t of g.tensors) ok(t.offset >= g.dataOffset && t.offset + t.byteLength <= g.fileSize);
  } finally {
    g.close();
  }
});

fixtureTest("gguf reader: clear errors for missing things", ["stories260K.gguf"], async () => {
  const path = fixture("stories260K.gguf");
  const g = await openGGUF(path);
  try {
    const oneLine = (e: unknown) =>
      e instanceof BadFileError && !e.message.includes("\n") && e.message.includes(path);
    try {
      g.tensor("blk.9.attn_q.weight");
      ok(false);
    } catch (e) {
      ok(oneLine(e) && (e as Error).message.includes("blk.9.attn_q.weight"));
    }
    try {
      g.getNumber("llama.nothing");
      ok(false);
    } catch (e) {
      ok(oneLine(e) && (e as Error).message.includes("llama.nothing"));
    }
    try {
      g.getNumber("general.architecture");
      ok(false);
    } catch (e) {
      ok(oneLine(e) && (e as Error).message.includes("expected a number"));
    }
    const emb = g.tensor("token_embd.weight");
    await rejects(g.readBytes(emb, emb.byteLength - 4, 8), BadFileError);
    await rejects(g.readBytes(emb, -1, 4), BadFileError);
  } finally {
    g.close();
  }
  await rejects(
    openGGUF("/nonexistent/model.gguf"),
    (e: Error) => e instanceof BadFileError && e.message.includes("/nonexistent/model.gguf"),
  );
});

fixtureTest(
  "gguf reader: F16 + F32 tiny model with a 32000-token vocab",
  ["llama-2-tiny-random.gguf"],
  async () => {
    const g = await openGGUF(fixture("llama-2-tiny-random.gguf"));
    try {
      equal(g.tensors.length, 12);
      equal(g.tensors.filter((t) => t.type === GGMLType.F16).length, 9);
      equal(g.tensors.filter((t) => t.type === GGMLType.F32).length, 3);
      equal(g.getArray("tokenizer.ggml.tokens").length, 32000);
      equal(g.getArray("tokenizer.ggml.scores").length, 32000);
      const emb = g.tensor("token_embd.weight");
      deepEqual(emb.shape, [8, 32000]);
      equal(emb.byteLength, 8 * 32000 * 2);
      const x = await g.readF32(emb);
      ok(x.every(Number.isFinite));
      ok(x.some((v) => v !== 0));
    } finally {
      g.close();
    }
  },
);

fixtureTest(
  "gguf reader: vocab-only files (zero tensors, 128K tokens + 280K merges)",
  ["vocab/ggml-vocab-llama-spm.gguf", "vocab/ggml-vocab-llama-bpe.gguf"],
  async () => {
    const spm = await openGGUF(fixture("vocab/ggml-vocab-llama-spm.gguf"));
    equal(spm.tensors.length, 0);
    equal(spm.getArray("tokenizer.ggml.tokens").length, 32000);
    equal(spm.getBoolean("tokenizer.ggml.add_bos_token"), true);
    spm.close();
    const t0 = performance.now();
    const bpe = await openGGUF(fixture("vocab/ggml-vocab-llama-bpe.gguf"));
    const ms = performance.now() - t0;
    equal(bpe.tensors.length, 0);
    equal(bpe.getString("tokenizer.ggml.model"), "gpt2");
    equal(bpe.getString("tokenizer.ggml.pre"), "llama-bpe");
    equal(bpe.getArray("tokenizer.ggml.tokens").length, 128256);
    equal(bpe.getArray("tokenizer.ggml.merges").length, 280147);
    equal(bpe.getNumber("tokenizer.ggml.bos_token_id"), 128000);
    ok(ms < 10000, `llama-bpe vocab took ${ms.toFixed(0)} ms to open`);
    bpe.close();
  },
);
