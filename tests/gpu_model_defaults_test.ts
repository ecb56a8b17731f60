import { deepEqual, equal } from "node:assert/strict";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import {
  defaultPrefillBatch,
  defaultPrefillHalfStaging,
  type GpuModelOptions,
} from "../src/model/gpu_model_options.ts";
import { withTinyModel } from "./gpu_ops_helpers.ts";

Deno.test("gpu model: prefill steps of 2048 tokens for the full cache on a GPU, 512 otherwise", async () => {
  equal(defaultPrefillBatch("full", false), 2048);
  for (const policy of ["wgkv", "window", "sink", "random"]) equal(defaultPrefillBatch(policy, false), 512);
  equal(defaultPrefillBatch("full", true), 512);
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    // The step never exceeds the context.
    const short = await GpuModel.load(gpu, file, hp, { contextLength: 100 });
    equal(short.maxBatch, Math.min(100, defaultPrefillBatch("full", gpu.isFallback)));
    short.destroy();
  });
});

Deno.test("gpu model: prefill attention stages f16 queries and probabilities on a GPU above head_dim 64", () => {
  equal(defaultPrefillHalfStaging(128, false), true);
  equal(defaultPrefillHalfStaging(256, false), true);
  equal(defaultPrefillHalfStaging(64, false), false);
  equal(defaultPrefillHalfStaging(128, true), false);
});

Deno.test("gpu model: a greedy decode step takes five dispatches per layer and three more", async () => {
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    const dispatches = async (options: Partial<GpuModelOptions>) => {
      const model = await GpuModel.load(gpu, file, hp, { contextLength: 512, maxBatch: 8, ...options });
      try {
        // Position 0: attention covers the row in one workgroup per head; 400: the keys are split.
        return [model.decodeDispatches(0), model.decodeDispatches(400)];
      } finally {
        model.destroy();
      }
    };
    // Embedding (the first norm folded in), per layer QKV, attention, attn_output, gate/up and down (the
    // norms folded into them), the output product (no norm scale before greedy's argmax) and the argmax.
    const L = hp.nLayer;
    const folded = 1 + 5 * L + 2;
    deepEqual(await dispatches({}), [folded, folded]);
    // The split path with its reduce dispatch: one more per layer.
    deepEqual(await dispatches({ fusedDecodeReduce: false }), [folded, folded + L]);
    // A dispatch per RMSNorm: the first, one per layer before gate/up, one after each layer.
    deepEqual(await dispatches({ foldNorms: false }), [folded + 1 + 2 * L, folded + 1 + 2 * L]);
  });
});
