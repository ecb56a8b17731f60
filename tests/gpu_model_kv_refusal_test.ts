// A KV cache the GPU's kernels cannot bind is refused with the numbers before any weight is uploaded, and the
// loader's cache layout is the one `info` prints and the cache allocates.

import { equal, ok, rejects } from "node:assert/strict";
import { OutOfMemoryError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { kvCacheLayout } from "../src/model/kv_layout.ts";
import { defaultKvPoolSize } from "../src/cli/info.ts";
import { smallBindingView, withTinyModel } from "./gpu_ops_helpers.ts";

Deno.test("gpu model: a KV pool too large to bind is refused, with the numbers, before the weights are uploaded", async () => {
  await withTinyModel(async (file, hp) => {
    const gpu = await getGpu();
    // A binding of 2 pages: a pool of the whole context needs far more shards than a kernel can bind.
    const pageBytes = 2 * 16 * hp.headDim * 2;
    for (const policy of [{ kind: "full" as const }, { kind: "window" as const, window: 64 }]) {
      const labels: string[] = [];
      const view = smallBindingView(gpu, 2 * pageBytes, labels);
      await rejects(
        GpuModel.load(view, file, hp, { contextLength: hp.contextLength, maxBatch: 64, policy }),
        (e: unknown) => {
          ok(e instanceof OutOfMemoryError, `${policy.kind}: ${e}`);
          ok(!e.message.includes("\n"), `${policy.kind}: one line: ${e.message}`);
          ok(/KV cache: .* asked \(\d+ pages × \d+ B\)/.test(e.message), e.message);
          // What to lower: the context for a full cache; for a dual cache also its ring and global share.
          const remedy = policy.kind === "full"
            ? "(lower --ctx)"
            : "(lower --ctx, --kv-global, --window or --batch)";
          ok(e.message.endsWith(remedy), e.message);
          return true;
        },
      );
      equal(labels.length, 0, `${policy.kind}: buffers made before the refusal: ${labels.join(", ")}`);
    }
  }, { type: "f16" });
});

Deno.test("gpu model: the loader's KV layout is the pool the cache allocates and info prints", async () => {
  await withTinyModel(async (file, hp) => {
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
  }, { type: "f32" });
});
