import { deepEqual, equal } from "node:assert/strict";
import { getGpu } from "../src/gpu/device.ts";
import { defaultReadbackMode, type ReadbackMode, StagingRing } from "../src/gpu/readback.ts";

for (const mode of ["early", "wait"] as ReadbackMode[]) {
  Deno.test(`gpu readback (${mode}): every read returns what the GPU last copied, buffers reused in turn`, async () => {
    const gpu = await getGpu();
    const words = 37;
    const ring = new StagingRing(gpu.device, "test staging", words * 4, 2, mode);
    const source = gpu.buffer("source", words * 4);
    try {
      equal(ring.bytes, words * 4);
      // More reads than buffers, back to back: a buffer comes back from take() only once its last read has
      // settled, so no copy into a mapped buffer is ever submitted (that would be a validation error).
      gpu.device.pushErrorScope("validation");
      for (let round = 0; round < 7; round++) {
        const values = Uint32Array.from({ length: words }, () => (Math.random() * 2 ** 32) >>> 0);
        gpu.device.queue.writeBuffer(source, 0, values);
        const staging = await ring.take();
        const encoder = gpu.device.createCommandEncoder();
        encoder.copyBufferToBuffer(source, 0, staging, 0, words * 4);
        gpu.device.queue.submit([encoder.finish()]);
        // The first reads of each buffer and the later ones (the early path) alike.
        const n = 1 + (round % words);
        deepEqual(
          Array.from(new Uint32Array(await ring.read(staging, n * 4))),
          Array.from(values.subarray(0, n)),
        );
      }
      equal(await gpu.device.popErrorScope(), null);
    } finally {
      for (const b of ring.buffers) b.destroy();
      source.destroy();
    }
  });
}

Deno.test("gpu readback: early reads by default only on the Deno releases they were checked on", () => {
  equal(defaultReadbackMode("2.9.6"), "early");
  equal(defaultReadbackMode("2.10.0"), "wait");
  equal(defaultReadbackMode("1.46.3"), "wait");
  equal(defaultReadbackMode(Deno.version.deno), Deno.version.deno.startsWith("2.9.") ? "early" : "wait");
});
