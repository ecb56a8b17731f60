import { deepEqual, rejects } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel, type GpuModelOptions, type SampleStart } from "../src/model/gpu_model.ts";
import { withTinyModel } from "./gpu_ops_helpers.ts";

Deno.test("gpu model: chained decode steps sharing a submit give the tokens and cache of a submit each", async () => {
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    const prompt = Array.from({ length: 19 }, () => Math.floor(Math.random() * hp.nVocab));
    const settings = {
      temperature: 1.2,
      topK: 0,
      topP: 1,
      minP: 0,
      repeatPenalty: 1.1,
      repeatLastN: 8,
      seed: Math.floor(Math.random() * 2 ** 31),
    };
    const run = async (options: Partial<GpuModelOptions>) => {
      const model = await GpuModel.load(gpu, file, hp, { contextLength: 96, maxBatch: 32, ...options });
      try {
        const first = await model.forward(prompt, 0, "argmax");
        // 13 greedy steps: groups of 5, 5 and 3 steps per submit where allowed.
        const greedy = await model.decodeGreedy(first, prompt.length, 13);
        let pos = prompt.length + 13;
        const history = [...prompt, first, ...greedy];
        const start: SampleStart = { settings, history, draw: 0 };
        const sampled = await model.decodeSampled(greedy.at(-1)!, pos, 7, start);
        pos += 7;
        // The next step's logits read every key and value the chains stored.
        const logits = await model.forward([sampled.at(-1)!], pos, "logits");
        return { first, greedy, sampled, logits: Array.from(logits) };
      } finally {
        model.destroy();
      }
    };
    const each = await run({ decodeStepsPerSubmit: 1 });
    deepEqual(await run({ decodeStepsPerSubmit: 5 }), each, "5 steps per submit");
    deepEqual(await run({ decodeStepsPerSubmit: 64 }), each, "the whole chain in one submit");
    // Where decode reads the row lengths, each step keeps its own submit (the same results).
    deepEqual(await run({ decodeStepsPerSubmit: 5, decodeUniformRows: false }), each, "row lengths");
    await rejects(GpuModel.load(gpu, file, hp, { contextLength: 96, decodeStepsPerSubmit: 0 }), BadFlagError);
    await rejects(GpuModel.load(gpu, file, hp, { contextLength: 96, decodeStepsPerSubmit: 65 }), BadFlagError);
  });
});
