import { ok, rejects } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import type { GpuModelOptions } from "../src/model/gpu_model_options.ts";
import {
  relativeError,
  subgroupReduceOrEmulated,
  subgroupsOrEmulated,
  withTinyModel,
} from "./gpu_ops_helpers.ts";

Deno.test("gpu model: decode attention's splits and key lanes keep the logits; the benchmark's ablation changes them", async () => {
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    const load = (options: Partial<GpuModelOptions>) =>
      GpuModel.load(gpu, file, hp, { contextLength: 96, maxBatch: 16, decodeDirectKeys: 0, ...options });
    const prompt = Array.from({ length: 45 }, () => Math.floor(Math.random() * hp.nVocab));
    const token = Math.floor(Math.random() * hp.nVocab);
    const decodeLogits = async (options: Partial<GpuModelOptions>) => {
      const model = await load(options);
      try {
        await model.forward(prompt, 0, "logits");
        return await model.forward([token], prompt.length, "logits");
      } finally {
        model.destroy();
      }
    };
    const base = await decodeLogits({});
    // Another summation order changes the attention outputs by f32 rounding, and the later layers' K and V
    // go into the cache as f16, where such a difference can move a value to the neighbouring f16 (about a
    // thousandth of it): seen at 1.4e-5 once, so the bound is an order above f32 rounding, and still an
    // order below what leaving the attention out changes.
    const tolerance = 1e-4;
    // 2 splits of 3 pages and 5 of one: other split boundaries, the same softmax up to rounding.
    for (const decodeSplits of [2, 5]) {
      const err = relativeError(await decodeLogits({ decodeSplits }), base);
      ok(err < tolerance, `decodeSplits ${decodeSplits}: relative error ${err}`);
    }
    // The other shapes of decode attention's workgroup: the same softmax up to rounding.
    const shapes: Partial<GpuModelOptions>[] = [
      // Subgroup shuffles where the GPU has subgroups as wide as a key's 4 threads (head_dim 32), else emulated.
      { decodeSubgroups: subgroupsOrEmulated(gpu, 4) },
      // The decode products' sums per subgroup first (the GPU's subgroups of 32, else emulated).
      {
        decodeSubgroupReduce: subgroupReduceOrEmulated(gpu),
      },
      { decodeKeyLanes: 8, decodeTileSteps: 2 },
      { decodeDirectKeys: 384, decodeDirectKeyLanes: 2 }, // the direct mode, 2 key lanes
      { decodeTileSteps: 1, decodeKeyLanes: 8 }, // several tiles per split
      // The row lengths read instead of the slots planned from the position (the full cache's default).
      { decodeUniformRows: false },
      { decodeUniformRows: false, decodeDirectKeys: 384 },
      // The subgroup options with several tiles per split (they compose).
      {
        decodeSubgroups: subgroupsOrEmulated(gpu, 4),
        decodeSubgroupReduce: subgroupReduceOrEmulated(gpu),
        decodeKeyLanes: 8,
        decodeTileSteps: 1,
      },
    ];
    for (const options of shapes) {
      const err = relativeError(await decodeLogits(options), base);
      ok(err < tolerance, `${JSON.stringify(options)}: relative error ${err}`);
    }
    // Without attention the logits are others (the ablation took effect).
    const skipped = await decodeLogits({ decodeAttentionAblation: "skip" });
    ok(relativeError(skipped, base) > 1e-3, "skipping decode attention left the logits as they were");
    await rejects(load({ decodeSplits: 0 }), BadFlagError);
    await rejects(load({ decodeSplits: 1.5 }), BadFlagError);
  }, { type: "f16" });
});

Deno.test("gpu model: prefill attention's rows' maxima by subgroup shuffles, and its f16 staging, keep the prefill's logits", async () => {
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    const prompt = Array.from({ length: 45 }, () => Math.floor(Math.random() * hp.nVocab));
    const prefill = async (options: Partial<GpuModelOptions>) => {
      const model = await GpuModel.load(gpu, file, hp, { contextLength: 96, maxBatch: 48, ...options });
      try {
        return await model.forward(prompt, 0, "logits");
      } finally {
        model.destroy();
      }
    };
    const base = await prefill({});
    // Queries and probabilities staged as f16: the same attention up to their rounding.
    const halfErr = relativeError(await prefill({ prefillHalfStaging: true }), base);
    ok(halfErr < 3e-3, `prefillHalfStaging: relative error ${halfErr}`);
    const subgroups = subgroupsOrEmulated(gpu, 8);
    const err = relativeError(await prefill({ prefillSubgroups: subgroups }), base);
    ok(err < 1e-5, `prefillSubgroups ${subgroups}: relative error ${err}`);
  }, { type: "f16" });
});
