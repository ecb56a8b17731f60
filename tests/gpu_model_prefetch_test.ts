import { deepEqual, equal, ok } from "node:assert/strict";
import { openGGUF } from "../src/gguf/reader.ts";
import { getGpu } from "../src/gpu/device.ts";
import type { GpuWeight } from "../src/gpu/weights.ts";
import { decodePrefetch, GpuModel } from "../src/model/gpu_model.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";

Deno.test("gpu model: decode attention's prefetch leaves the logits and greedy tokens as they were", async () => {
  const gpu = await getGpu();
  const dir = await Deno.makeTempDir();
  const path = `${dir}/tiny-q4_k_m.gguf`;
  await writeSyntheticModel({
    shape: "tiny",
    type: "q4_k_m",
    out: path,
    seed: Math.floor(Math.random() * 1e6),
  });
  const file = await openGGUF(path);
  try {
    const hp = hparamsFromGGUF(file);
    // directKeys 0: the split path with its fused merge; the default: the direct path at these lengths.
    for (const decodeDirectKeys of [0, undefined]) {
      const load = (bytes: number) =>
        GpuModel.load(gpu, file, hp, {
          contextLength: 64,
          maxBatch: 8,
          decodeDirectKeys,
          decodePrefetch: bytes > 0 ? { bytes, workgroups: 5 } : undefined,
        });
      const plain = await load(0), prefetching = await load(1 << 20);
      try {
        const prompt = Array.from({ length: 11 }, () => Math.floor(Math.random() * hp.nVocab));
        await plain.forward(prompt, 0, "logits");
        await prefetching.forward(prompt, 0, "logits");
        for (let i = 0; i < 3; i++) {
          const token = Math.floor(Math.random() * hp.nVocab);
          const want = await plain.forward([token], prompt.length + i, "logits");
          const got = await prefetching.forward([token], prompt.length + i, "logits");
          ok(
            got.every((v, j) => Object.is(v, want[j])),
            `directKeys ${decodeDirectKeys}: step ${i} logits differ`,
          );
        }
        const first = Math.floor(Math.random() * hp.nVocab);
        const at = prompt.length + 3;
        deepEqual(await prefetching.decodeGreedy(first, at, 5), await plain.decodeGreedy(first, at, 5));
      } finally {
        plain.destroy();
        prefetching.destroy();
      }
    }
  } finally {
    file.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("gpu model: the prefetch plan takes attn_output first, then gate and up evenly, then ffn_down", () => {
  const weight = (size: number) => ({ parts: [{ buffer: { size } }] }) as unknown as GpuWeight;
  const [wo, gate, up, down] = [weight(1000), weight(4096), weight(4096), weight(3000)];
  const sizes = (bytes: number) =>
    decodePrefetch({ bytes }, [wo, gate, up, down])?.ranges.map((r) => (r as { size: number }).size);
  equal(decodePrefetch({ bytes: 0 }, [wo, gate, up, down]), undefined);
  deepEqual(sizes(500), [496]);
  deepEqual(sizes(3000), [992, 992, 992, 16]);
  deepEqual(sizes(10000), [992, 4096, 4096, 816]);
  deepEqual(sizes(1e9), [992, 4096, 4096, 2992]);
  equal(decodePrefetch({ bytes: 64, workgroups: 9, maxPosition: 100 }, [wo])?.workgroups, 9);
});
