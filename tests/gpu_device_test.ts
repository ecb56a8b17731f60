import { equal as assertEquals, ok } from "node:assert/strict";
import { getGpu, Gpu } from "../src/gpu/device.ts";

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

Deno.test("gpu: the cooperative-matrix note says how they are used or why not, and off means off", async () => {
  const gpu = await getGpu();
  ok(gpu.coopMatrixNote.length > 0 && !gpu.coopMatrixNote.includes("\n"), gpu.coopMatrixNote);
  if (gpu.coopMatrix) {
    // Found by the probe: the hardware's fragments, with one row-major and one column-major load.
    ok(!gpu.coopMatrix.emulated, JSON.stringify(gpu.coopMatrix));
    ok(gpu.coopMatrix.loadRowMajor !== gpu.coopMatrix.loadColMajor, JSON.stringify(gpu.coopMatrix));
  }
  const off = await Gpu.create({ disableCoopMatrix: true });
  try {
    assertEquals(off.coopMatrix, undefined);
    assertEquals(off.coopMatrixNote, "cooperative matrices are turned off");
  } finally {
    off.destroy();
  }
});

Deno.test("gpu: subgroups are on where the adapter offers them, with their sizes, and off when asked", async () => {
  const gpu = await getGpu();
  if (gpu.subgroups) {
    ok(gpu.device.features.has("subgroups"), "subgroups reported but not on the device");
    ok(gpu.subgroups.minSize <= gpu.subgroups.maxSize, JSON.stringify(gpu.subgroups));
  }
  const off = await Gpu.create({ disableSubgroups: true, disableCoopMatrix: true });
  try {
    assertEquals(off.subgroups, undefined);
    ok(!off.device.features.has("subgroups"));
  } finally {
    off.destroy();
  }
});
