// A KV cache the GPU's kernels cannot bind is refused with the numbers before any weight is uploaded, and the
// loader's cache layout is the one `info` prints and the cache allocates.

import { equal, ok, rejects } from "node:assert/strict";
import { OutOfMemoryError } from "../src/errors.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { GpuModel, kvCacheLayout } from "../src/model/gpu_model.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";
import { defaultKvPoolSize } from "../src/cli/info.ts";

/** `gpu` with a storage binding of at most `maxBinding` bytes, recording the label of every buffer made. */
function limitedView(gpu: Gpu, maxBinding: number, labels: string[]): Gpu {
  const limits: Record<string, number> = {};
  for (const key in gpu.limits) limits[key] = gpu.limits[key as keyof GPUSupportedLimits] as number;
  limits.maxStorageBufferBindingSize = maxBinding;
  return new Proxy(gpu, {
    get(target, prop) {
      if (prop === "limits") return limits;
      const value = Reflect.get(target, prop, target);
      if (prop === "buffer") {
        return (label: string, ...rest: unknown[]) => {
          labels.push(label);
          return (value as (...a: unknown[]) => GPUBuffer).call(target, label, ...rest);
        };
      }
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

Deno.test("gpu model: a KV pool too large to bind is refused, with the numbers, before the weights are uploaded", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/tiny.gguf`;
    await writeSyntheticModel({
      shape: "tiny",
      type: "f16",
      out: path,
      seed: Math.floor(Math.random() * 1e6),
    });
    const file = await openGGUF(path);
    try {
      const hp = hparamsFromGGUF(file);
      const gpu = await getGpu();
      // A binding of 2 pages: a pool of 4096 tokens needs far more shards than a kernel can bind.
      const pageBytes = 2 * 16 * hp.headDim * 2;
      for (const policy of [{ kind: "full" as const }, { kind: "window" as const, window: 64 }]) {
        const labels: string[] = [];
        const view = limitedView(gpu, 2 * pageBytes, labels);
        await rejects(
          GpuModel.load(view, file, hp, { contextLength: hp.contextLength, maxBatch: 64, policy }),
          (e: unknown) => {
            ok(e instanceof OutOfMemoryError, `${policy.kind}: ${e}`);
            ok(!e.message.includes("\n"), `${policy.kind}: one line: ${e.message}`);
            ok(/KV cache: .* asked \(\d+ pages × \d+ B\)/.test(e.message), e.message);
            return true;
          },
        );
        equal(labels.length, 0, `${policy.kind}: buffers made before the refusal: ${labels.join(", ")}`);
      }
    } finally {
      file.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("gpu model: the loader's KV layout is the pool the cache allocates and info prints", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/tiny.gguf`;
    await writeSyntheticModel({
      shape: "tiny",
      type: "f32",
      out: path,
      seed: Math.floor(Math.random() * 1e6),
    });
    const file = await openGGUF(path);
    try {
      const hp = hparamsFromGGUF(file);
      const gpu = await getGpu();
      const ctx = 48 + Math.floor(Math.random() * 200);
      for (const policy of [{ kind: "full" as const }, { kind: "sink" as const, window: 32, sinks: 4 }]) {
        const layout = kvCacheLayout(hp, policy, ctx, 16);
        const model = await GpuModel.load(gpu, file, hp, { contextLength: ctx, maxBatch: 16, policy });
        try {
          equal(model.kv.pool.capacity, layout.pages, `${policy.kind} at ${ctx} tokens`);
        } finally {
          model.destroy();
        }
      }
      equal(defaultKvPoolSize(hp, ctx).pages, kvCacheLayout(hp, { kind: "full" }, ctx, 1).pages);
    } finally {
      file.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
