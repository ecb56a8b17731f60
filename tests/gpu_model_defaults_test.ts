import { equal } from "node:assert/strict";
import { openGGUF } from "../src/gguf/reader.ts";
import { getGpu } from "../src/gpu/device.ts";
import { defaultPrefillBatch, GpuModel } from "../src/model/gpu_model.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";

Deno.test("gpu model: prefill steps of 2048 tokens for the full cache on a GPU, 512 otherwise", async () => {
  equal(defaultPrefillBatch("full", false), 2048);
  for (const policy of ["wgkv", "window", "sink", "random"]) equal(defaultPrefillBatch(policy, false), 512);
  equal(defaultPrefillBatch("full", true), 512);
  const gpu = await getGpu();
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/tiny.gguf`;
    await writeSyntheticModel({ shape: "tiny", type: "q8_0", out: path, seed: 3 });
    const file = await openGGUF(path);
    const hp = hparamsFromGGUF(file);
    // The step never exceeds the context.
    const short = await GpuModel.load(gpu, file, hp, { contextLength: 100 });
    equal(short.maxBatch, Math.min(100, defaultPrefillBatch("full", gpu.isFallback)));
    short.destroy();
    file.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
