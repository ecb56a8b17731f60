// A model's prefill with every product on cooperative matrices (GpuModelOptions.coopPrefill): the
// hardware's where the GPU has working ones, else the emulated fragments (lavapipe in CI), which run the
// same kernel and the same wiring (Q/K/V, gate/up + SwiGLU, the rest) through the model.
import { ok, rejects } from "node:assert/strict";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { ReferenceModel } from "../src/model/reference.ts";
import { relativeError, withTinyModel } from "./gpu_ops_helpers.ts";

for (const type of ["q4_k_m"] as const) {
  Deno.test(`gpu model: cooperative-matrix prefill of a ${type} model stays near the CPU reference`, async () => {
    const gpu = await getGpu({ coopMatrix: true });
    if (!gpu.hasF16) return; // the tiles are f16
    await withTinyModel(async (file, hp) => {
      const cpu = await ReferenceModel.load(file);
      const coopPrefill = gpu.coopMatrix ? true : "emulated";
      // f32 decode products: on a GPU the default int8 ones alone move the logits by about 1%.
      const model = await GpuModel.load(gpu, file, hp, {
        contextLength: 96,
        maxBatch: 80,
        coopPrefill,
        int8Decode: false,
      });
      try {
        ok(
          model.describe().some((line) => /products .*cooperative matrices/.test(line)),
          model.describe().join("\n"),
        );
        // 70 tokens: two token tiles of 64, the second partial.
        const prompt = Array.from({ length: 70 }, () => Math.floor(Math.random() * hp.nVocab));
        let want = new Float32Array(0);
        for (let i = 0; i < prompt.length; i++) want = cpu.forward(prompt[i], i);
        const err = relativeError(await model.forward(prompt, 0, "logits"), want);
        // Activations rounded to f16 in the tiles, sums in f32: well under int8's 1%.
        ok(err < 1e-2, `coop prefill relative error ${err}`);
        // Decode (matvecs) goes on from the cache the prefill left.
        const next = Math.floor(Math.random() * hp.nVocab);
        const decodeErr = relativeError(
          await model.forward([next], prompt.length, "logits"),
          cpu.forward(next, prompt.length),
        );
        ok(decodeErr < 1e-2, `decode after coop prefill, relative error ${decodeErr}`);
      } finally {
        model.destroy();
      }
    }, { type });
  });
}

Deno.test("gpu model: coopPrefill true without working cooperative matrices is a one-line error", async () => {
  const gpu = await getGpu({ coopMatrix: true });
  if (gpu.coopMatrix) return;
  await withTinyModel(async (file, hp) => {
    await rejects(
      GpuModel.load(gpu, file, hp, { contextLength: 32, maxBatch: 8, coopPrefill: true }),
      /^BadFlagError: --coop-prefill \(coopPrefill\): this GPU has no working cooperative matrices \(.+\)$/,
    );
  }, { type: "f16", seed: 1 });
});
