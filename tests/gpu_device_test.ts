import { equal, equal as assertEquals, ok } from "node:assert/strict";
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

Deno.test("gpu: cooperative matrices only when asked; the note says how they are used or why not", async () => {
  const asked = await Gpu.create({ coopMatrix: true });
  try {
    ok(asked.coopMatrixNote.length > 0 && !asked.coopMatrixNote.includes("\n"), asked.coopMatrixNote);
    if (asked.coopMatrix) {
      // Found by the probe: the hardware's fragments, with a matching row-major load and store.
      ok(!asked.coopMatrix.emulated, JSON.stringify(asked.coopMatrix));
      ok(
        ["coopLoadT/coopStoreT", "coopLoad/coopStore"].includes(
          `${asked.coopMatrix.loadRowMajor}/${asked.coopMatrix.storeRowMajor}`,
        ),
        JSON.stringify(asked.coopMatrix),
      );
      ok(asked.device.features.has("wgpu-cooperative-matrix" as GPUFeatureName));
    }
  } finally {
    asked.destroy();
  }
  const plain = await Gpu.create();
  try {
    assertEquals(plain.coopMatrix, undefined);
    assertEquals(plain.coopMatrixNote, "cooperative matrices not requested");
  } finally {
    plain.destroy();
  }
});

Deno.test("gpu: subgroups are on where the adapter offers them, with their sizes, and off when asked", async () => {
  const gpu = await getGpu();
  if (gpu.subgroups) {
    ok(gpu.device.features.has("subgroups"), "subgroups reported but not on the device");
    ok(gpu.subgroups.minSize <= gpu.subgroups.maxSize, JSON.stringify(gpu.subgroups));
  }
  const off = await Gpu.create({ disableSubgroups: true });
  try {
    assertEquals(off.subgroups, undefined);
    ok(!off.device.features.has("subgroups"));
  } finally {
    off.destroy();
  }
});

Deno.test("gpu: getGpu shares a device among callers it serves and opens another for more features", async () => {
  const plain = await getGpu();
  equal(await getGpu({}), plain);
  // Asking for cooperative matrices after a plain device: a device of its own that asked for them.
  const coop = await getGpu({ coopMatrix: true });
  ok(coop !== plain);
  ok(coop.coopMatrixNote !== "cooperative matrices not requested", coop.coopMatrixNote);
  // A later request for them gets that device again.
  equal(await getGpu({ coopMatrix: true }), coop);
  // Features turned off must match: a device without f16 is never handed to a caller who did not ask.
  const noF16 = await getGpu({ disableF16: true });
  ok(noF16 !== plain && noF16 !== coop);
  equal(noF16.hasF16, false);
  equal(await getGpu(), plain);
});
