import { deepEqual, equal, notEqual, ok } from "node:assert/strict";
import type { ModelBackend } from "../src/engine/backend.ts";
import { Session } from "../src/engine/session.ts";
import type { Tokenizer } from "../src/tokenizer/tokenizer.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import type { SampleStart } from "../src/model/gpu_model_options.ts";
import { getGpu } from "../src/gpu/device.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";
import { loadModel } from "../src/engine/load.ts";
import type { SampleSettings } from "../src/gpu/ops/sample.ts";
import { sampleReference } from "../src/gpu/ops/sample_reference.ts";

/** A synthetic tiny model in a temporary folder, removed after `body`. */
async function withTinyModel(body: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/tiny.gguf`;
    await writeSyntheticModel({
      shape: "tiny",
      type: "q8_0",
      out: path,
      seed: Math.floor(Math.random() * 1e6),
    });
    await body(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("gpu model: chained sampled decode draws what the reference draws from each step's logits", async () => {
  await withTinyModel(async (path) => {
    const file = await openGGUF(path);
    const hp = hparamsFromGGUF(file);
    const model = await GpuModel.load(await getGpu(), file, hp, { contextLength: 64, maxBatch: 8 });
    let compared = 0;
    try {
      for (const trial of [0, 1]) {
        const settings: SampleSettings = {
          temperature: [0.9, 1.4][trial],
          topK: [20, 0][trial],
          topP: [0.95, 1][trial],
          minP: [0.02, 0][trial],
          repeatPenalty: [1.3, 1][trial],
          repeatLastN: 8,
          seed: Math.floor(Math.random() * 2 ** 31),
        };
        const prompt = Array.from({ length: 11 }, () => Math.floor(Math.random() * hp.nVocab));
        // On the GPU: the prompt's token, then chains of 6 and 5 steps.
        const start = (history: number[], draw: number): SampleStart => ({ settings, history, draw });
        const gpuTokens = [await model.forward(prompt, 0, "sample", start(prompt, 0))];
        for (const count of [6, 5]) {
          const pos = prompt.length + gpuTokens.length - 1;
          const history = [...prompt, ...gpuTokens];
          gpuTokens.push(
            ...await model.decodeSampled(gpuTokens.at(-1)!, pos, count, start(history, gpuTokens.length)),
          );
        }
        // The reference, from each step's logits read back, feeding the GPU's tokens (until a draw is too close
        // to call in f32).
        let logits = await model.forward(prompt, 0, "logits");
        const history = [...prompt];
        for (let i = 0; i < gpuTokens.length; i++) {
          const want = sampleReference(logits, settings, history, i);
          if (want.fragile) break;
          equal(gpuTokens[i], want.token, `trial ${trial}, token ${i}`);
          compared++;
          history.push(gpuTokens[i]);
          if (i + 1 < gpuTokens.length) {
            logits = await model.forward([gpuTokens[i]], history.length - 1, "logits");
          }
        }
      }
      ok(compared >= 6, `only ${compared} tokens compared`);
    } finally {
      model.destroy();
      file.close();
    }
  });
});

Deno.test("session on the GPU backend: sampled text comes from the GPU sampler; the same seed repeats", async () => {
  await withTinyModel(async (path) => {
    const m = await loadModel(path, { backend: "webgpu", contextLength: 96 });
    try {
      ok(m.backend.decodeSampled, "the GPU backend chains sampled steps");
      // The logits never come back to the CPU.
      m.backend.forward = () => Promise.reject(new Error("sampled decode read the logits back"));
      const generate = async (seed: number) => {
        const session = m.session();
        const tokens: number[] = [];
        const options = { maxTokens: 40, temperature: 1.5, topK: 0, topP: 1, minP: 0, seed, ignoreEos: true };
        for await (const piece of session.generate([1, 5, 9], options)) {
          if (piece.token >= 0) tokens.push(piece.token);
        }
        return tokens;
      };
      const a = await generate(42);
      equal(a.length, 40);
      equal((await generate(42)).join(), a.join());
      notEqual((await generate(43)).join(), a.join());
      // Shorter generation, other chain lengths: the same first tokens (draw i is a function of seed and i).
      const session = m.session();
      const first: number[] = [];
      const options = { temperature: 1.5, topK: 0, topP: 1, minP: 0, seed: 42, ignoreEos: true };
      for await (const p of session.generate([1, 5, 9], { ...options, maxTokens: 5 })) first.push(p.token);
      equal(first.filter((t) => t >= 0).join(), a.slice(0, 5).join());
      equal(session.tokens.length, 3 + 4);
    } finally {
      m.close();
    }
  });
});

Deno.test("session: sampling on the device chains steps with the right history and draw indices", async () => {
  // A fake device sampler: token = 10 + draw index; it records every call.
  const calls: {
    kind: string;
    feed: number[];
    pos: number;
    count: number;
    history: number[];
    draw: number;
  }[] = [];
  const backend = {
    kind: "webgpu",
    hparams: {} as ModelBackend["hparams"],
    contextLength: 100,
    maxChain: 8,
    forward: () => Promise.reject(new Error("logits read back")),
    forwardArgmax: () => Promise.reject(new Error("greedy used")),
    forwardSample(tokens: number[], pos: number, s: SampleStart) {
      calls.push({ kind: "one", feed: [...tokens], pos, count: 1, history: [...s.history], draw: s.draw });
      return Promise.resolve(10 + s.draw);
    },
    decodeSampled(first: number, pos: number, count: number, s: SampleStart) {
      calls.push({ kind: "chain", feed: [first], pos, count, history: [...s.history], draw: s.draw });
      return Promise.resolve(Array.from({ length: count }, (_, j) => 10 + s.draw + j));
    },
    describe: () => [],
    dispose() {},
  } as ModelBackend;
  const tokenizer = {
    bos: 0,
    isEndOfGeneration: () => false,
    streamDecoder: () => ({ push: (id: number) => String.fromCharCode(64 + id), flush: () => "" }),
  } as unknown as Tokenizer;
  const session = new Session(backend, tokenizer);
  const options = { temperature: 0.7, repeatPenalty: 1.2, repeatLastN: 4, seed: 3, maxTokens: 9 };
  const got: number[] = [];
  for await (const p of session.generate([0, 2, 3], options)) if (p.token >= 0) got.push(p.token);
  deepEqual(got, [10, 11, 12, 13, 14, 15, 16, 17, 18]);
  deepEqual(calls.map((c) => [c.kind, c.pos, c.count, c.draw]), [
    ["one", 0, 1, 0],
    ["chain", 3, 2, 1],
    ["chain", 5, 4, 3],
    ["chain", 9, 2, 7],
  ]);
  // The last repeatLastN = 4 tokens of the transcript, the token fed first included.
  deepEqual(calls[0].history, [0, 2, 3]);
  deepEqual(calls[2].history, [3, 10, 11, 12]);
});
