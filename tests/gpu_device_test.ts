import { equal as assertEquals } from "node:assert/strict";
import { getGpu } from "../src/gpu/device.ts";

Deno.test("gpu: a specialised kernel runs and every output element is written", async () => {
  const gpu = await getGpu();
  const n = 257;
  const a = Float32Array.from({ length: n }, () => Math.random());
  const src = gpu.buffer("a", a.byteLength, a);
  const out = gpu.buffer("out", n * 4, new Float32Array(n).fill(NaN));
  gpu.dispatch(gpu.kernel("smoke", { scale: 2, n }), [src, out], [Math.ceil(n / 64)]);
  const got = await gpu.readF32(out);
  for (let i = 0; i < n; i++) assertEquals(got[i], Math.fround(a[i] * 2 + i));
});
