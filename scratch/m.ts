import { openGGUF } from "../src/gguf/reader.ts";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";
const gpu = await getGpu();
const path = `/tmp/tiny-f16.gguf`;
await writeSyntheticModel({ shape: "tiny", type: "f16", out: path, seed: 3 });
const file = await openGGUF(path);
const hp = hparamsFromGGUF(file);
for (const coopPrefill of [false, "emulated"] as const) {
  let t = performance.now();
  const model = await GpuModel.load(gpu, file, hp, { contextLength: 96, maxBatch: 80, coopPrefill });
  console.log(coopPrefill, "load", performance.now() - t); t = performance.now();
  const prompt = Array.from({ length: 70 }, (_, i) => i);
  await model.forward(prompt, 0, "logits");
  console.log("forward1", performance.now() - t); t = performance.now();
  await model.forward(prompt, 0, "logits");
  console.log("forward2", performance.now() - t);
  model.destroy();
}
import { ReferenceModel } from "../src/model/reference.ts";
{
  let t = performance.now();
  const cpu = await ReferenceModel.load(file);
  console.log("cpu load", performance.now() - t); t = performance.now();
  for (let i = 0; i < 70; i++) cpu.forward(i, i);
  console.log("cpu 70", performance.now() - t);
}
