import { ok } from "node:assert/strict";
import { type GGUFFile, openGGUF } from "../src/gguf/reader.ts";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import type { GpuModelOptions } from "../src/model/gpu_model_options.ts";
import type { MatvecTuning } from "../src/gpu/ops/matmul.ts";
import { hparamsFromGGUF, type LlamaHParams } from "../src/model/hparams.ts";
import { ReferenceModel } from "../src/model/reference.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";
import { relativeError } from "./gpu_ops_helpers.ts";

/**
 * Runs `body` as a test step on a fresh tiny synthetic model (random seed) of each quantised type with int8
 * products, the file open and its CPU reference loaded; the file is closed and removed afterwards.
 */
async function forTinyQuantisedModels(
  t: Deno.TestContext,
  body: (type: string, file: GGUFFile, hp: LlamaHParams, cpu: ReferenceModel) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    for (const type of ["q8_0", "q4_k_m"] as const) {
      await t.step(type, async () => {
        const path = `${dir}/tiny-${type}.gguf`;
        await writeSyntheticModel({ shape: "tiny", type, out: path, seed: Math.floor(Math.random() * 1e6) });
        const file = await openGGUF(path);
        try {
          await body(type, file, hparamsFromGGUF(file), await ReferenceModel.load(file));
        } finally {
          file.close();
        }
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("gpu model: int8 prefill stays near the CPU reference, and decode goes on from its cache", async (t) => {
  const gpu = await getGpu();
  await forTinyQuantisedModels(t, async (type, file, hp, cpu) => {
    const load = (int8Prefill: boolean) =>
      GpuModel.load(gpu, file, hp, { contextLength: 64, maxBatch: 8, int8Prefill, int8Decode: false });
    const exact = await load(false), int8 = await load(true);
    try {
      const prompt = Array.from({ length: 19 }, () => Math.floor(Math.random() * hp.nVocab));
      let want = new Float32Array(0);
      for (let i = 0; i < prompt.length; i++) want = cpu.forward(prompt[i], i);
      const exactErr = relativeError(await exact.forward(prompt, 0, "logits"), want);
      const int8Err = relativeError(await int8.forward(prompt, 0, "logits"), want);
      ok(exactErr < 1e-3, `${type}: f32 prefill relative error ${exactErr}`);
      // Activations rounded to 8 bits per 32-value block: about 1% of the logits' scale on these random
      // weights (0.9–1.5% over a dozen runs), but not none (the path ran).
      ok(int8Err < 5e-2, `${type}: int8 prefill relative error ${int8Err}`);
      ok(int8Err > exactErr / 10 && int8Err > 1e-6, `${type}: int8 error ${int8Err} vs f32 ${exactErr}`);
      // Decode (f32 matvecs) after the int8 prefill: the cache it left is as good as its logits.
      const next = Math.floor(Math.random() * hp.nVocab);
      const decodeErr = relativeError(
        await int8.forward([next], prompt.length, "logits"),
        cpu.forward(next, prompt.length),
      );
      ok(decodeErr < 5e-2, `${type}: decode after int8 prefill, relative error ${decodeErr}`);
      // The dual cache (window policy) behind the same int8 products.
      const windowed = (int8Prefill: boolean) =>
        GpuModel.load(gpu, file, hp, {
          contextLength: 64,
          maxBatch: 8,
          int8Prefill,
          int8Decode: false,
          policy: { kind: "window", window: 8 },
        });
      const [w32, w8] = [await windowed(false), await windowed(true)];
      const windowErr = relativeError(
        await w8.forward(prompt, 0, "logits"),
        await w32.forward(prompt, 0, "logits"),
      );
      w32.destroy();
      w8.destroy();
      ok(windowErr < 5e-2, `${type}: int8 prefill under the window policy, relative error ${windowErr}`);
    } finally {
      exact.destroy();
      int8.destroy();
    }
  });
});

Deno.test("gpu model: int8 decode products stay near the CPU reference, token after token", async (t) => {
  const gpu = await getGpu();
  await forTinyQuantisedModels(t, async (type, file, hp, cpu) => {
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
    }
  });
});

/**
 * Loads each tiny quantised model twice with int8 input in every decode role (and `base` in every role's
 * tuning), once as it is and once with `variant` added to every role's tuning and `options` to the model's,
 * and checks that decode steps and a greedy chain come out the same to the bit (the same sums in the same
 * order), and with `fewerDispatches` that the variant's decode step records fewer dispatches.
 */
async function checkDecodeVariant(
  t: Deno.TestContext,
  variant: MatvecTuning,
  base: MatvecTuning = {},
  options: Partial<GpuModelOptions> = {},
  fewerDispatches = false,
): Promise<void> {
  const gpu = await getGpu();
  await forTinyQuantisedModels(t, async (type, file, hp) => {
    const roles = ["attn_qkv", "attn_output", "ffn_gate_up", "ffn_down", "output"] as const;
    const load = (extra: MatvecTuning, more: Partial<GpuModelOptions>) =>
      GpuModel.load(gpu, file, hp, {
        contextLength: 64,
        maxBatch: 8,
        int8Prefill: false,
        int8Decode: true,
        matvecTuning: Object.fromEntries(roles.map((role) => [role, { int8: true, ...base, ...extra }])),
        ...more,
      });
    const first = await load({}, {}), other = await load(variant, options);
    try {
      if (fewerDispatches) {
        ok(
          other.decodeDispatches(20) < first.decodeDispatches(20),
          `${type}: the variant left out no dispatch`,
        );
      }
      const prompt = Array.from({ length: 9 }, () => Math.floor(Math.random() * hp.nVocab));
      await first.forward(prompt, 0, "logits");
      await other.forward(prompt, 0, "logits");
      for (let i = 0; i < 4; i++) {
        const token = Math.floor(Math.random() * hp.nVocab);
        const pos = prompt.length + i;
        const want = await first.forward([token], pos, "logits");
        const got = await other.forward([token], pos, "logits");
        ok(
          got.every((v, j) => Object.is(v, want[j])),
          `${type} step ${i}: ${JSON.stringify(variant)} logits differ`,
        );
      }
      const token0 = Math.floor(Math.random() * hp.nVocab);
      const at = prompt.length + 4;
      const chainBase = await first.decodeGreedy(token0, at, 5);
      const chainOther = await other.decodeGreedy(token0, at, 5);
      ok(chainBase.join() === chainOther.join(), `${type}: greedy ${chainOther} against ${chainBase}`);
    } finally {
      first.destroy();
      other.destroy();
    }
  });
}

Deno.test("gpu model: decode products capped to a few workgroups give the logits of one workgroup per row group", async (t) => {
  // The capped model's workgroups take several row groups each (folded norms' partial sums, RoPE and the KV
  // store included).
  await checkDecodeVariant(t, { maxWorkgroups: 3 });
});

Deno.test("gpu model: int8 input quantised once per step (sharedInt8) gives the logits of each workgroup's own", async (t) => {
  // Every role's input quantised by a pass of its own (folded norms' consumers and producers included).
  await checkDecodeVariant(t, { sharedInt8: true });
});

Deno.test("gpu model: int8 inputs written by the product before (decodeInt8Chain) give the logits of passes of their own", async (t) => {
  // Every role with the shared int8 input; the chain has attn_output write gate/up's, gate/up ffn_down's and
  // ffn_down the next layer's QKV's.
  await checkDecodeVariant(t, {}, { sharedInt8: true }, { decodeInt8Chain: true }, true);
});
