import { deepEqual, notDeepEqual, ok } from "node:assert/strict";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import type { GpuModelOptions } from "../src/model/gpu_model_options.ts";
import { withTinyModel } from "./gpu_ops_helpers.ts";

Deno.test("gpu model: decode ablations for benchmarks leave ops out or run them twice", async () => {
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    const decodeLogits = async (options: Partial<GpuModelOptions>) => {
      const model = await GpuModel.load(gpu, file, hp, { contextLength: 32, maxBatch: 16, ...options });
      try {
        const prompt = Array.from({ length: 5 }, (_, i) => (i * 7919 + 3) % hp.nVocab);
        await model.forward(prompt, 0, "logits");
        return Array.from(await model.forward([3], prompt.length, "logits"));
      } finally {
        model.destroy();
      }
    };
    const want = await decodeLogits({});
    // Q, K and V (with their KV store) and gate/up write the same values when run again.
    deepEqual(await decodeLogits({ decodeRepeatOps: ["attn_qkv", "ffn_gate_up"] }), want);
    // attn_output adds into the residual stream: twice is another result; so is leaving gate/up out.
    notDeepEqual(await decodeLogits({ decodeRepeatOps: ["attn_output"] }), want);
    notDeepEqual(await decodeLogits({ decodeSkipOps: ["ffn_gate_up"] }), want);
    // The far-layer copy of gate/up writes the other layer's activations into the shared buffer, which this
    // layer's ffn_down then reads: another result, where the same-layer copy changed nothing.
    const far = await decodeLogits({ decodeRepeatOps: ["ffn_gate_up"], decodeRepeatSource: "far-layer" });
    notDeepEqual(far, want);
    ok(far.every(Number.isFinite));
  });
});
