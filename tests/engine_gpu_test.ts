import { deepEqual, equal, ok } from "node:assert/strict";
import { PrefillAbortedError } from "../src/errors.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { ReferenceModel } from "../src/model/reference.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { getGpu } from "../src/gpu/device.ts";
import { SYNTH_TYPES, writeSyntheticModel } from "../src/model/synth.ts";
import { fixture, fixtureTest } from "./fixtures.ts";
import { relativeError } from "./gpu_ops_helpers.ts";

fixtureTest(
  "gpu model: stories260K greedy reproduces the 200 golden tokens and the stored logits",
  ["stories260K.gguf", "stories260K.greedy.json"],
  async () => {
    const golden = JSON.parse(await Deno.readTextFile(fixture("stories260K.greedy.json")));
    const file = await openGGUF(fixture("stories260K.gguf"));
    const gpu = await getGpu();
    const model = await GpuModel.load(gpu, file, hparamsFromGGUF(file), { contextLength: 256, maxBatch: 64 });
    try {
      const tokens: number[] = [];
      let next = await model.forward([1], 0, "argmax");
      for (let i = 0; i < 200; i++) {
        tokens.push(next);
        if (i < 199) next = await model.forward([next], i + 1, "argmax");
      }
      deepEqual(tokens, golden.greedy_tokens);
      // The same 200 tokens from chained steps (argmax fed back on the GPU), in chains of 1 … 64.
      const chained: number[] = [];
      let feed = 1;
      for (const count of [1, 7, 64, 64, 64]) {
        const got = await model.decodeGreedy(feed, chained.length, count);
        chained.push(...got);
        feed = got.at(-1)!;
      }
      deepEqual(chained, golden.greedy_tokens);
      // Teacher-forced logits at the stored positions, each from one prefill (several chunks for p ≥ 64).
      const seq = [1, ...golden.greedy_tokens];
      for (const [p, expected] of Object.entries(golden.logits_at as Record<string, number[]>)) {
        const logits = await model.forward(seq.slice(0, Number(p) + 1), 0, "logits");
        const err = relativeError(logits, Float32Array.from(expected));
        // The GPU cache stores K and V in f16: over 200 positions that costs ~1e-3 of the logit scale.
        ok(err < 2e-3, `position ${p}: relative error ${err}`);
      }
    } finally {
      model.destroy();
      file.close();
    }
  },
);

Deno.test("gpu model: logits match the CPU reference on synthetic tiny models of every weight type", async (t) => {
  const dir = await Deno.makeTempDir();
  const gpu = await getGpu();
  try {
    for (const type of SYNTH_TYPES) {
      await t.step(type, async () => {
        const path = `${dir}/tiny-${type}.gguf`;
        await writeSyntheticModel({ shape: "tiny", type, out: path, seed: Math.floor(Math.random() * 1e6) });
        const file = await openGGUF(path);
        const hp = hparamsFromGGUF(file);
        const cpu = await ReferenceModel.load(file);
        // f32 products (the int8 ones, the default on a GPU, have their own tests and tolerances).
        const model = await GpuModel.load(gpu, file, hp, {
          contextLength: 64,
          maxBatch: 8,
          int8Prefill: false,
          int8Decode: false,
        });
        try {
          const prompt = Array.from({ length: 19 }, () => Math.floor(Math.random() * hp.nVocab));
          // Prefill in chunks of 8 (19 = 8 + 8 + 3), then decode 4 tokens one by one.
          let gpuLogits = await model.forward(prompt, 0, "logits");
          let cpuLogits = new Float32Array(0);
          for (let i = 0; i < prompt.length; i++) cpuLogits = cpu.forward(prompt[i], i);
          for (let step = 0; step < 5; step++) {
            const err = relativeError(gpuLogits, cpuLogits);
            ok(err < 1e-3, `${type} step ${step}: relative error ${err}`);
            const next = Math.floor(Math.random() * hp.nVocab);
            const pos = prompt.length + step;
            gpuLogits = await model.forward([next], pos, "logits");
            cpuLogits = cpu.forward(next, pos);
            // Greedy decode's tail leaves out the output norm's scale: its pick is still the largest logit
            // (up to a tie within rounding).
            const picked = await model.forward([next], pos, "argmax");
            const best = gpuLogits.reduce((m, v) => Math.max(m, v), -Infinity);
            ok(
              best - gpuLogits[picked] <= 1e-5 * Math.abs(best),
              `${type} step ${step}: argmax picked ${picked}`,
            );
          }
        } finally {
          model.destroy();
          file.close();
        }
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

fixtureTest(
  "gpu model: stories260K greedy through split decode attention (merged in the partial pass, or by a reduce pass)",
  ["stories260K.gguf", "stories260K.greedy.json"],
  async () => {
    const golden = JSON.parse(await Deno.readTextFile(fixture("stories260K.greedy.json")));
    const file = await openGGUF(fixture("stories260K.gguf"));
    const gpu = await getGpu();
    try {
      for (const fusedDecodeReduce of [true, false]) {
        // decodeDirectKeys 0: every decode step splits its keys over workgroups.
        const model = await GpuModel.load(gpu, file, hparamsFromGGUF(file), {
          contextLength: 256,
          maxBatch: 64,
          decodeDirectKeys: 0,
          fusedDecodeReduce,
        });
        try {
          const chained = [await model.forward([1], 0, "argmax")];
          while (chained.length < 100) {
            chained.push(...await model.decodeGreedy(chained.at(-1)!, chained.length, 33));
          }
          deepEqual(chained, golden.greedy_tokens.slice(0, 100), `fusedDecodeReduce ${fusedDecodeReduce}`);
        } finally {
          model.destroy();
        }
      }
    } finally {
      file.close();
    }
  },
);

/**
 * A GPU test on stories260K in prefill steps of 64 tokens: `body` gets the model, a 150-token prompt (three
 * steps) and the prompt's logits from a plain run.
 */
function stepsTest(
  name: string,
  body: (model: GpuModel, prompt: number[], want: Float32Array) => Promise<void>,
): void {
  fixtureTest(name, ["stories260K.gguf"], async () => {
    const file = await openGGUF(fixture("stories260K.gguf"));
    const gpu = await getGpu();
    const model = await GpuModel.load(gpu, file, hparamsFromGGUF(file), { contextLength: 256, maxBatch: 64 });
    try {
      const prompt = Array.from({ length: 150 }, (_, i) => 1 + ((i * 37) % 500));
      await body(model, prompt, await model.forward(prompt, 0, "logits"));
    } finally {
      model.destroy();
      file.close();
    }
  });
}

stepsTest(
  "gpu model: an aborted prefillSignal stops a prompt between steps; the next call runs as if it never had",
  async (model, prompt, want) => {
    // Ctrl-C as the first step is reported: the step after it is already queued, the third never runs.
    const stop = new AbortController();
    model.prefillProgressMs = 0;
    model.prefillProgress = () => stop.abort();
    model.prefillSignal = stop.signal;
    const stopped = await model.forward(prompt.toReversed(), 0, "logits").catch((e) => e);
    ok(stopped instanceof PrefillAbortedError, String(stopped));
    equal(stopped.done, 128);
    model.prefillProgress = model.prefillSignal = undefined;
    deepEqual(Array.from(await model.forward(prompt, 0, "logits")), Array.from(want));
  },
);

stepsTest(
  "gpu model: prefillProgress reports each prefill step but the last, and changes no result",
  async (model, prompt, want) => {
    const reports: [number, number][] = [];
    model.prefillProgressMs = 0;
    model.prefillProgress = (done, total) => reports.push([done, total]);
    const got = await model.forward(prompt, 0, "logits");
    deepEqual(reports, [[64, 150], [128, 150]]);
    deepEqual(Array.from(got), Array.from(want));
    reports.length = 0;
    await model.forward(prompt.slice(0, 64), 0, "argmax"); // one step: nothing to report
    deepEqual(reports, []);
    // Waiting for the queue idles the GPU while the next step is recorded: within the interval, no report.
    model.prefillProgressMs = 1e9;
    deepEqual(Array.from(await model.forward(prompt, 0, "logits")), Array.from(want));
    deepEqual(reports, []);
  },
);
