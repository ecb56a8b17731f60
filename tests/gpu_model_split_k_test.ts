import { ok, rejects } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { relativeError, withTinyModel } from "./gpu_ops_helpers.ts";

Deno.test("gpu model: prefill products split K at short steps and keep the logits", async () => {
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    const logits = async (prefillKSplits: number, length: number, prefillKSplitWorkgroups?: number) => {
      const model = await GpuModel.load(gpu, file, hp, {
        contextLength: 96,
        maxBatch: 64,
        prefillKSplits,
        prefillKSplitWorkgroups,
      });
      try {
        const prompt = Array.from({ length }, (_, i) => (i * 7919 + length) % hp.nVocab);
        const out = [await model.forward(prompt, 0, "logits")];
        out.push(await model.forward([3], length, "logits"));
        return out;
      } finally {
        model.destroy();
      }
    };
    // A short prompt and one of most of a step: attn_output and ffn_down split K (the residual buffer
    // holds 4 parts of a whole step).
    // And with the split steps aiming for more workgroups than the default (up to 8 ranges; the tiny
    // model's rows of 512 and 256 values keep 256 columns per range, so 2 at most).
    const cases: [number, number, number | undefined][] = [
      [13, 4, undefined],
      [40, 4, undefined],
      [40, 8, 4096],
    ];
    for (const [length, splits, workgroups] of cases) {
      const [a, b] = [await logits(1, length), await logits(splits, length, workgroups)];
      a.forEach((want, i) => {
        const err = relativeError(b[i], want);
        // f32 sums in another order in every layer.
        ok(err < 1e-4, `${length} tokens, ${splits} splits, step ${i}: relative error ${err}`);
      });
    }
    await rejects(GpuModel.load(gpu, file, hp, { contextLength: 96, prefillKSplits: 3 }), BadFlagError);
  }, { type: "f16" });
});

Deno.test("gpu model: int8 prefill products split K at short steps and keep the logits", async () => {
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    const logits = async (prefillKSplits: number) => {
      const model = await GpuModel.load(gpu, file, hp, {
        contextLength: 64,
        maxBatch: 32,
        prefillKSplits,
        int8Prefill: true,
      });
      try {
        const prompt = Array.from({ length: 11 }, (_, i) => (i * 7919 + 5) % hp.nVocab);
        return await model.forward(prompt, 0, "logits");
      } finally {
        model.destroy();
      }
    };
    const err = relativeError(await logits(4), await logits(1));
    // Integer sums are exact; only the f32 sums of the blocks and parts come in another order.
    ok(err < 1e-4, `relative error ${err}`);
  }, { type: "q8_0" });
});
