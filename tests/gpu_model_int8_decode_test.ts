import { ok } from "node:assert/strict";
import { openGGUF } from "../src/gguf/reader.ts";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { ReferenceModel } from "../src/model/reference.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";
import { relativeError } from "./gpu_ops_helpers.ts";

Deno.test("gpu model: int8 decode products stay near the CPU reference, token after token", async (t) => {
  const dir = await Deno.makeTempDir();
  const gpu = await getGpu();
  try {
    for (const type of ["q8_0", "q4_k_m"] as const) {
      await t.step(type, async () => {
        const path = `${dir}/tiny-${type}.gguf`;
        await writeSyntheticModel({ shape: "tiny", type, out: path, seed: Math.floor(Math.random() * 1e6) });
        const file = await openGGUF(path);
        const hp = hparamsFromGGUF(file);
        const cpu = await ReferenceModel.load(file);
        const load = (int8Decode: boolean) =>
          GpuModel.load(gpu, file, hp, { contextLength: 64, maxBatch: 8, int8Prefill: false, int8Decode });
        const exact = await load(false), int8 = await load(true);
        try {
          // A prompt in one step (f32 products in both), then tokens one at a time (the decode products).
          const prompt = Array.from({ length: 11 }, () => Math.floor(Math.random() * hp.nVocab));
          for (let i = 0; i < prompt.length; i++) cpu.forward(prompt[i], i);
          await exact.forward(prompt, 0, "logits");
          await int8.forward(prompt, 0, "logits");
          let worst = 0, worstExact = 0;
          for (let i = 0; i < 6; i++) {
            const token = Math.floor(Math.random() * hp.nVocab);
            const pos = prompt.length + i;
            const want = cpu.forward(token, pos);
            worstExact = Math.max(
              worstExact,
              relativeError(await exact.forward([token], pos, "logits"), want),
            );
            worst = Math.max(worst, relativeError(await int8.forward([token], pos, "logits"), want));
          }
          ok(worstExact < 1e-3, `${type}: f32 decode relative error ${worstExact}`);
          // Activations rounded to 8 bits per 16 values: below the int8 prefill's 1% on these random weights,
          // but not none (the path ran).
          ok(worst < 5e-2, `${type}: int8 decode relative error ${worst}`);
          ok(worst > worstExact / 10 && worst > 1e-6, `${type}: int8 error ${worst} vs f32 ${worstExact}`);
        } finally {
          exact.destroy();
          int8.destroy();
          file.close();
        }
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
