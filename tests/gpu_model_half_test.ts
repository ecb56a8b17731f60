import { ok } from "node:assert/strict";
import { openGGUF } from "../src/gguf/reader.ts";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { ReferenceModel } from "../src/model/reference.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";
import { relativeError } from "./gpu_ops_helpers.ts";

Deno.test("gpu model: f16 prefill products of an F16 model stay near the CPU reference", async () => {
  const gpu = await getGpu();
  if (!gpu.hasF16) return; // no shader-f16: the option has no effect
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/tiny-f16.gguf`;
    await writeSyntheticModel({
      shape: "tiny",
      type: "f16",
      out: path,
      seed: Math.floor(Math.random() * 1e6),
    });
    const file = await openGGUF(path);
    const hp = hparamsFromGGUF(file);
    const cpu = await ReferenceModel.load(file);
    const load = (halfPrefill: boolean) =>
      GpuModel.load(gpu, file, hp, { contextLength: 64, maxBatch: 8, halfPrefill });
    const exact = await load(false), half = await load(true);
    try {
      const prompt = Array.from({ length: 19 }, () => Math.floor(Math.random() * hp.nVocab));
      let want = new Float32Array(0);
      for (let i = 0; i < prompt.length; i++) want = cpu.forward(prompt[i], i);
      const exactErr = relativeError(await exact.forward(prompt, 0, "logits"), want);
      const halfErr = relativeError(await half.forward(prompt, 0, "logits"), want);
      ok(exactErr < 1e-3, `f32 prefill relative error ${exactErr}`);
      // Activations rounded to f16 and sums of 16–32 products in f16: well under int8's 1%, but not
      // nothing (the path ran).
      ok(halfErr < 1e-2, `f16 prefill relative error ${halfErr}`);
      ok(halfErr > exactErr / 10 && halfErr > 1e-7, `f16 error ${halfErr} vs f32 ${exactErr}`);
      // Decode (f32 matvecs) goes on from the cache the f16 prefill left.
      const next = Math.floor(Math.random() * hp.nVocab);
      const decodeErr = relativeError(
        await half.forward([next], prompt.length, "logits"),
        cpu.forward(next, prompt.length),
      );
      ok(decodeErr < 1e-2, `decode after f16 prefill, relative error ${decodeErr}`);
    } finally {
      exact.destroy();
      half.destroy();
      file.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
