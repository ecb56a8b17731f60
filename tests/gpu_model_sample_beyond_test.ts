import { equal, ok } from "node:assert/strict";
import { type GGUFFile, openGGUF } from "../src/gguf/reader.ts";
import { hparamsFromGGUF, type LlamaHParams } from "../src/model/hparams.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import type { SampleStart } from "../src/model/gpu_model_options.ts";
import { getGpu } from "../src/gpu/device.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";
import { SAMPLE_CANDIDATE_CAP, type SampleSettings } from "../src/gpu/ops/sample.ts";
import { deviceDraws, sampleExact, sampleReference } from "../src/gpu/ops/sample_reference.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

/** A tiny synthetic model with the 32000-token vocabulary of a fixture, open for `body`, then removed. */
async function withTiny32k(body: (file: GGUFFile, hp: LlamaHParams) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/tiny32k.gguf`;
  try {
    await writeSyntheticModel({
      shape: "tiny",
      type: "q8_0",
      out: path,
      seed: Math.floor(Math.random() * 1e6),
      vocabFrom: fixture("llama-2-tiny-random.gguf"),
    });
    const file = await openGGUF(path);
    try {
      const hp = hparamsFromGGUF(file);
      equal(hp.nVocab, 32000);
      await body(file, hp);
    } finally {
      file.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// A vocabulary of 32000 tokens (more than the GPU sampler's 1024 candidates): steps whose rules keep tokens
// beyond the candidates are drawn from the logits on the CPU, with the GPU's random number.
fixtureTest(
  "gpu model: sampled steps beyond the GPU sampler's candidates are drawn exactly from the logits",
  ["llama-2-tiny-random.gguf"],
  () =>
    withTiny32k(async (file, hp) => {
      const model = await GpuModel.load(await getGpu(), file, hp, { contextLength: 64, maxBatch: 8 });
      try {
        const prompt = Array.from({ length: 9 }, () => Math.floor(Math.random() * hp.nVocab));
        // Min-p about the ratio of the prompt's 1024th to its first probability: a cut among the candidates
        // at some steps and none at others, so chains end early at some step.
        const sorted = Float32Array.from(await model.forward(prompt, 0, "logits")).sort().reverse();
        const ratio = Math.exp(sorted[SAMPLE_CANDIDATE_CAP - 1] - sorted[0]);
        const base = { temperature: 1.2, topK: 0, repeatPenalty: 1.1, repeatLastN: 16 };
        const cases: [string, Omit<SampleSettings, "seed">][] = [0.85, 1, 1.15].map((f) => [
          `min-p ${f} × the prompt's ratio`,
          { ...base, topP: 1, minP: Math.min(0.9, ratio * f) },
        ]);
        // Top-k above the cap: never on the GPU; no cut at all: the GPU weighs the whole vocabulary.
        cases.push(["top-k 1025", { ...base, topK: SAMPLE_CANDIDATE_CAP + 1, topP: 1, minP: 0 }]);
        cases.push(["no cut (temperature only)", { ...base, topP: 1, minP: 0 }]);
        const kinds = cases.map(([, partial]) => deviceDraws({ ...partial, seed: 0 }, hp.nVocab));
        equal(kinds.join(), "mostly,mostly,mostly,never,always");
        // Steps drawn beyond the candidates and on the GPU, and chains cut short, of the min-p cases.
        let beyond = 0, onDevice = 0, shortChains = 0;
        for (const [c, [name, partial]] of cases.entries()) {
          const mostly = kinds[c] === "mostly";
          const settings: SampleSettings = { ...partial, seed: Math.floor(Math.random() * 2 ** 31) };
          const start = (history: number[], draw: number): SampleStart => ({ settings, history, draw });
          const tokens = [await model.forward(prompt, 0, "sample", start(prompt, 0))];
          const chains: { first: number; length: number }[] = [];
          while (tokens.length < 14) {
            const pos = prompt.length + tokens.length - 1;
            const count = 6;
            const got = await model.decodeSampled(
              tokens.at(-1)!,
              pos,
              count,
              start([...prompt, ...tokens], tokens.length),
            );
            ok(got.length >= 1 && got.length <= count, `${name}: ${got.length} tokens`);
            chains.push({ first: tokens.length, length: got.length });
            if (got.length < count && mostly) shortChains++;
            if (kinds[c] === "never") equal(got.length, 1, `${name}: every step is drawn on the CPU`);
            if (kinds[c] === "always") equal(got.length, count, `${name}: the GPU draws every step`);
            tokens.push(...got);
          }
          // Each step from its logits: the GPU op's reference where its candidates hold the draw, else exact.
          const history = [...prompt];
          const wasBeyond: boolean[] = [];
          let logits = await model.forward(prompt, 0, "logits");
          for (let i = 0; i < tokens.length; i++) {
            const capped = sampleReference(logits, settings, history, i);
            if (kinds[c] !== "mostly") equal(capped.beyond, kinds[c] === "never", name);
            wasBeyond.push(capped.beyond);
            if (capped.beyond) {
              if (mostly) beyond++;
              equal(tokens[i], sampleExact(logits, settings, history, i), `${name}, token ${i} (beyond)`);
            } else {
              if (capped.fragile) break;
              onDevice++;
              equal(tokens[i], capped.token, `${name}, token ${i}`);
            }
            history.push(tokens[i]);
            logits = await model.forward([tokens[i]], history.length - 1, "logits");
          }
          // A step beyond the candidates ends its chain, and the next chain runs at most max(1, j) steps after
          // one cut at its step j.
          for (let c = 0; mostly && c < chains.length; c++) {
            const { first, length } = chains[c];
            const steps = wasBeyond.slice(first, first + length);
            if (steps.length < length) break; // not all compared
            ok(!steps.slice(0, -1).includes(true), `${name}: chain ${c} went on after a step beyond`);
            if (steps.at(-1) && c + 1 < chains.length) {
              ok(chains[c + 1].length <= Math.max(1, length - 1), `${name}: chain ${c + 1} after a cut`);
            }
          }
        }
        ok(
          beyond >= 1 && onDevice >= 1 && shortChains >= 1,
          `min-p cases: ${beyond} steps beyond the candidates, ${onDevice} drawn on the GPU, ` +
            `${shortChains} chains cut short`,
        );
      } finally {
        model.destroy();
      }
    }),
);

// Under a dual cache, a chain cut by a step beyond the candidates is rewound to that step (its later steps
// fed no real token): the cache must then be what one fed only the drawn tokens holds.
fixtureTest(
  "gpu model: a dual cache after sampled chains cut beyond the candidates equals one fed the tokens stepwise",
  ["llama-2-tiny-random.gguf"],
  () =>
    withTiny32k(async (file, hp) => {
      const gpu = await getGpu();
      // A window of 16 and steps of 8: tokens leave the ring of 32 within the test, half of them promoted.
      const load = () =>
        GpuModel.load(gpu, file, hp, {
          contextLength: 128,
          maxBatch: 8,
          policy: { kind: "random", window: 16, rate: 0.5, seed: 5 },
        });
      const chained = await load();
      const stepwise = await load();
      try {
        const prompt = Array.from({ length: 21 }, () => Math.floor(Math.random() * hp.nVocab));
        const sorted = Float32Array.from(await chained.forward(prompt, 0, "logits")).sort().reverse();
        const minP = Math.exp(sorted[SAMPLE_CANDIDATE_CAP - 1] - sorted[0]);
        const settings: SampleSettings = {
          temperature: 1,
          topK: 0,
          topP: 1,
          minP,
          repeatPenalty: 1,
          repeatLastN: 0,
          seed: Math.floor(Math.random() * 2 ** 31),
        };
        const start = (history: number[], draw: number): SampleStart => ({ settings, history, draw });
        const tokens = [await chained.forward(prompt, 0, "sample", start(prompt, 0))];
        let cut = 0;
        while (tokens.length < 48) {
          const count = 8;
          const pos = prompt.length + tokens.length - 1;
          const got = await chained.decodeSampled(
            tokens.at(-1)!,
            pos,
            count,
            start([...prompt, ...tokens], tokens.length),
          );
          if (got.length < count) cut++;
          tokens.push(...got);
        }
        ok(cut >= 1, "no chain was cut short");
        // The same tokens fed one at a time, then the logits of the next step on both.
        await stepwise.forward(prompt, 0, "logits");
        for (let i = 0; i < tokens.length - 1; i++) {
          await stepwise.forward([tokens[i]], prompt.length + i, "logits");
        }
        const pos = prompt.length + tokens.length - 1;
        const want = await stepwise.forward([tokens.at(-1)!], pos, "logits");
        const got = await chained.forward([tokens.at(-1)!], pos, "logits");
        let worst = 0;
        for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
        ok(worst <= 1e-5, `logits differ by ${worst}`);
        equal(chained.kvStats().dual!.globalTokens.join(), stepwise.kvStats().dual!.globalTokens.join());
      } finally {
        chained.destroy();
        stepwise.destroy();
      }
    }),
);
