// llama.cpp's Q5_K_M mix (mostly Q5_K, some Q6_K) on the GPU against the CPU reference. The synthetic
// writer has no `q5_k_m` type, so the mix is assembled here from a Q5_K and a Q6_K synthetic file of the
// same seed, tensor by tensor, as llama.cpp's `llama_tensor_get_type` assigns types for
// LLAMA_FTYPE_MOSTLY_Q5_K_M.

import { deepEqual, ok } from "node:assert/strict";
import { type GGUFFile, openGGUF } from "../src/gguf/reader.ts";
import { GGMLType } from "../src/gguf/types.ts";
import { metadataOf, str, u32, writeGGUF } from "../src/gguf/writer.ts";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { hparamsFromGGUF, type LlamaHParams } from "../src/model/hparams.ts";
import { ReferenceModel } from "../src/model/reference.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";
import { relativeError } from "./gpu_ops_helpers.ts";

/** llama.cpp's `LLAMA_FTYPE_MOSTLY_Q5_K_M`. */
const FTYPE_Q5_K_M = 17;

/** llama.cpp's `use_more_bits(i_layer, n_layers)`. */
function useMoreBits(layer: number, nLayer: number): boolean {
  return layer < Math.floor(nLayer / 8) || layer >= Math.floor((7 * nLayer) / 8) ||
    (layer - Math.floor(nLayer / 8)) % 3 === 2;
}

/**
 * The type llama.cpp gives tensor `name` in a Q5_K_M file: F32 vectors; Q6_K for the output matrix (the
 * token embedding when the output is tied to it) and for `attn_v` / `ffn_down` of the layers
 * `use_more_bits` picks; Q5_K for every other matrix.
 */
function q5kmType(name: string, hp: LlamaHParams, isVector: boolean): GGMLType {
  if (isVector) return GGMLType.F32;
  if (name === "output.weight" || (hp.tiedOutput && name === "token_embd.weight")) return GGMLType.Q6_K;
  const m = /^blk\.(\d+)\.(attn_v|ffn_down)\.weight$/.exec(name);
  if (m && useMoreBits(Number(m[1]), hp.nLayer)) return GGMLType.Q6_K;
  return GGMLType.Q5_K;
}

/** Writes a tiny Q5_K_M synthetic model at `out` (random seed); returns the type of every tensor. */
async function writeQ5KM(dir: string, out: string, tiedOutput: boolean): Promise<Map<string, GGMLType>> {
  const seed = Math.floor(Math.random() * 1e6);
  const q5 = `${dir}/q5_k.gguf`, q6 = `${dir}/q6_k.gguf`;
  await writeSyntheticModel({ shape: "tiny", type: "q5_k", out: q5, seed, tiedOutput });
  await writeSyntheticModel({ shape: "tiny", type: "q6_k", out: q6, seed, tiedOutput });
  const a = await openGGUF(q5), b = await openGGUF(q6);
  try {
    const hp = hparamsFromGGUF(a);
    const types = new Map<string, GGMLType>();
    const from = (f: GGUFFile, name: string) => () => f.readBytes(f.tensor(name));
    const tensors = a.tensors.map((t) => {
      const type = q5kmType(t.name, hp, t.shape.length === 1);
      types.set(t.name, type);
      const source = type === GGMLType.Q6_K ? b : a;
      ok(source.tensor(t.name).type === type, `${t.name}: ${source.tensor(t.name).type} in ${source.path}`);
      return { name: t.name, type, shape: t.shape, data: from(source, t.name) };
    });
    await writeGGUF(out, {
      metadata: {
        ...metadataOf(a),
        "general.name": str(`synthetic tiny Llama with RANDOM weights (seed ${seed}, q5_k_m)`),
        "general.file_type": u32(FTYPE_Q5_K_M),
      },
      tensors,
    });
    return types;
  } finally {
    a.close();
    b.close();
  }
}

Deno.test("gpu model: a Q5_K_M mix (Q5_K, Q6_K where llama.cpp puts it) matches the CPU reference", async (t) => {
  const gpu = await getGpu();
  for (const tiedOutput of [false, true]) {
    await t.step(tiedOutput ? "tied output" : "separate output", async () => {
      const dir = await Deno.makeTempDir();
      try {
        const path = `${dir}/tiny-q5_k_m.gguf`;
        const types = await writeQ5KM(dir, path, tiedOutput);
        const file = await openGGUF(path);
        try {
          const hp = hparamsFromGGUF(file);
          // The file is the mix: Q6_K on the output matrix and on layer 1's attn_v and ffn_down (of 2 layers,
          // use_more_bits picks the last), Q5_K on the other matrices.
          deepEqual(file.tensors.map((x) => x.type), file.tensors.map((x) => types.get(x.name)));
          const q6 = file.tensors.filter((x) => x.type === GGMLType.Q6_K).map((x) => x.name).sort();
          deepEqual(q6, [
            "blk.1.attn_v.weight",
            "blk.1.ffn_down.weight",
            tiedOutput ? "token_embd.weight" : "output.weight",
          ]);
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
              ok(err < 1e-3, `step ${step}: f32 relative error ${err}`);
              // Activations rounded to 8 bits per block (gpu_model_int8_test.ts): about 1%.
              const err8 = relativeError(got8, want);
              ok(err8 < 5e-2, `step ${step}: int8 relative error ${err8}`);
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
