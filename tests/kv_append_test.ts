import { equal, ok, rejects } from "node:assert/strict";
import { OutOfMemoryError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { createKvAppend } from "../src/gpu/ops/kv_append.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { PAGE_TOKENS } from "../src/kv/page_pool.ts";
import { MAX_POOL_SHARDS } from "../src/kv/pool_storage.ts";

Deno.test("kv append: f16 keys and values land in their pages (scattered, 3 shards), nothing else is written", async () => {
  const gpu = await getGpu();
  const layers = 2, kvHeads = 3, headDim = 24, maxTokens = 21;
  const pageWords = PAGE_TOKENS * headDim;
  const kv = await KvCache.create(gpu, {
    layers,
    kvHeads,
    headDim,
    maxTokensPerHead: 64,
    pages: 40,
    maxShardBytes: 16 * pageWords * 4,
  });
  equal(kv.shards.length, 3);
  const junk = kv.pool.allocate(13);
  kv.pool.release(junk.filter((_, i) => i % 2 === 0)); // scatter the free list
  const step = new StepParams(gpu, maxTokens);
  const width = kvHeads * headDim;
  const kBuf = gpu.buffer("k", maxTokens * width * 4);
  const vBuf = gpu.buffer("v", maxTokens * width * 4);
  const layer = 1;
  const op = createKvAppend(gpu, { label: "append", kv, layer, maxTokens, k: kBuf, v: vBuf, step });
  const slot = kv.openSequence();
  const written: { k: Float32Array; v: Float32Array; from: number; m: number }[] = [];
  for (const m of [5, 21, 1]) {
    const from = kv.length(slot, layer, 0);
    kv.append(slot, m);
    kv.flush();
    kv.selectSequence(slot);
    step.set(m);
    const k = Float32Array.from({ length: m * width }, () => Math.random() * 8 - 4);
    const v = Float32Array.from({ length: m * width }, () => Math.random() * 8 - 4);
    gpu.device.queue.writeBuffer(kBuf, 0, k);
    gpu.device.queue.writeBuffer(vBuf, 0, v);
    const encoder = gpu.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    op.encode(pass);
    pass.end();
    gpu.device.queue.submit([encoder.finish()]);
    written.push({ k, v, from, m });
  }
  const shards = await Promise.all(kv.shards.map(async (b) => new Float16Array(await gpu.read(b))));
  const seen = new Set<string>();
  const at = (page: number, half: number) => {
    const shard = Math.floor(page / kv.pagesPerShard);
    return {
      arr: shards[shard],
      base: (page % kv.pagesPerShard) * pageWords * 2 + half * PAGE_TOKENS * headDim,
    };
  };
  for (const { k, v, from, m } of written) {
    for (let h = 0; h < kvHeads; h++) {
      const pages = kv.pagesOf(slot, layer, h);
      for (let t = 0; t < m; t++) {
        const index = from + t;
        const page = pages[Math.floor(index / PAGE_TOKENS)];
        for (let d = 0; d < headDim; d++) {
          const src = t * width + h * headDim + d;
          for (const [half, x] of [[0, k], [1, v]] as const) {
            const { arr, base } = at(page, half);
            const i = base + (index % PAGE_TOKENS) * headDim + d;
            equal(arr[i], Math.f16round(x[src]), `head ${h} token ${index} dim ${d} ${half ? "V" : "K"}`);
            seen.add(`${shards.indexOf(arr)}:${i}`);
          }
        }
      }
    }
  }
  // Every other value of the pool is still zero (layer 0 rows and free pages were not touched).
  let nonZero = 0;
  shards.forEach((arr, s) =>
    arr.forEach((x, i) => {
      if (x !== 0 && !seen.has(`${s}:${i}`)) nonZero++;
    })
  );
  equal(nonZero, 0);
  ok(seen.size === 27 * kvHeads * headDim * 2);
  kv.destroy();
});

Deno.test("kv cache: a pool the kernels cannot bind is refused before allocating, with the numbers", async () => {
  const gpu = await getGpu();
  const limit = gpu.limits.maxStorageBufferBindingSize;
  // More than MAX_POOL_SHARDS shards' worth for one head.
  const tokens = Math.ceil(((MAX_POOL_SHARDS + 1) * limit) / (2 * 2 * 128));
  await rejects(
    KvCache.create(gpu, { layers: 1, kvHeads: 1, headDim: 128, maxTokensPerHead: tokens }),
    (e: Error) =>
      e instanceof OutOfMemoryError &&
      /asked \(\d+ pages × 8192 B\) but kernels can bind at most/.test(e.message),
  );
});
