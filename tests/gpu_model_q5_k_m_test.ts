// llama.cpp's Q5_K_M mix (mostly Q5_K, some Q6_K) from the synthetic writer's `q5_k_m` type, on the GPU
// against the CPU reference.

import { deepEqual, equal, ok } from "node:assert/strict";
import { openGGUF } from "../src/gguf/reader.ts";
import { GGMLType } from "../src/gguf/types.ts";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { ReferenceModel } from "../src/model/reference.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";
import { relativeError } from "./gpu_ops_helpers.ts";

/** llama.cpp's `LLAMA_FTYPE_MOSTLY_Q5_K_M`. */
const FTYPE_Q5_K_M = 17;

Deno.test("gpu model: a Q5_K_M mix (Q5_K, Q6_K where llama.cpp puts it) matches the CPU reference", async (t) => {
  const gpu = await getGpu();
  for (const tiedOutput of [false, true]) {
    await t.step(tiedOutput ? "tied output" : "separate output", async () => {
      const dir = await Deno.makeTempDir();
      try {
        const path = `${dir}/tiny-q5_k_m.gguf`;
        const seed = Math.floor(Math.random() * 1e6);
        await writeSyntheticModel({ shape: "tiny", type: "q5_k_m", out: path, seed, tiedOutput });
        const file = await openGGUF(path);
        try {
          const hp = hparamsFromGGUF(file);
          equal(hp.tiedOutput, tiedOutput);
          equal(file.getNumber("general.file_type"), FTYPE_Q5_K_M);
          // The mix: Q6_K on the output matrix (the token embedding when tied) and on layer 1's attn_v and
          // ffn_down (of 2 layers, use_more_bits picks the last), Q5_K on the other matrices, F32 vectors.
          const q6 = file.tensors.filter((x) => x.type === GGMLType.Q6_K).map((x) => x.name).sort();
          deepEqual(q6, [
            "blk.1.attn_v.weight",
            "blk.1.ffn_down.weight",
            tiedOutput ? "token_embd.weight" : "output.weight",
          ]);
          for (const x of file.tensors) {
            if (q6.includes(x.name)) continue;
            const want = x.shape.length === 1 ? GGMLType.F32 : GGMLType.Q5_K;
            equal(x.type, want, `${x.name}: ${GGMLType[x.type]}`);
          }
          ok(file.tensors.filter((x) => x.type === GGMLType.Q5_K).length >= 7 * hp.nLayer - 2);
          const cpu = await ReferenceModel.load(file);
          const load = (int8: boolean) =>
            GpuModel.load(gpu, file, hp, {
              contextLength: 64,
              maxBatch: 8,
              int8Prefill: int8,
              int8Decode: int8,
            });
          const exact = await load(false), int8 = await load(true);
          try {
            // Prefill in steps of 8 (19 = 8 + 8 + 3), then decode 4 tokens one by one.
            const prompt = Array.from({ length: 19 }, () => Math.floor(Math.random() * hp.nVocab));
            let want = new Float32Array(0);
            for (let i = 0; i < prompt.length; i++) want = cpu.forward(prompt[i], i);
            let got = await exact.forward(prompt, 0, "logits");
            let got8 = await int8.forward(prompt, 0, "logits");
            for (let step = 0; step < 5; step++) {
              // f32 products: the bound every weight type meets (engine_gpu_test.ts).
              const err = relativeError(got, want);
              ok(err < 1e-3, `seed ${seed} step ${step}: f32 relative error ${err}`);
              // Activations rounded to 8 bits per block (gpu_model_int8_test.ts): about 1%.
              const err8 = relativeError(got8, want);
              ok(err8 < 5e-2, `seed ${seed} step ${step}: int8 relative error ${err8}`);
              const next = Math.floor(Math.random() * hp.nVocab);
              const pos = prompt.length + step;
              got = await exact.forward([next], pos, "logits");
              got8 = await int8.forward([next], pos, "logits");
              want = cpu.forward(next, pos);
            }
          } finally {
            exact.destroy();
            int8.destroy();
          }
        } finally {
          file.close();
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  }
});
