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

/** Opens a device in a fresh process whose environment is exactly `env`; returns what the child saw. */
async function openInChild(
  env: Record<string, string>,
): Promise<{ backends?: string; described: string; glLoaded: boolean }> {
  const device = new URL("../src/gpu/device.ts", import.meta.url).href;
  const code = `import { Gpu } from "${device}";
const gpu = await Gpu.create();
const maps = Deno.build.os === "linux" ? Deno.readTextFileSync("/proc/self/maps") : "";
console.log(JSON.stringify({
  backends: Deno.env.get("DENO_WEBGPU_BACKEND"),
  described: gpu.backends,
  glLoaded: /libEGL|_dri\\.so/.test(maps),
}));
gpu.destroy();`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", code],
    clearEnv: true,
    env: { ...env, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  ok(out.success, stderr);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

Deno.test("gpu: on Linux the device opens through Vulkan alone unless the user chose the backends", async () => {
  if (Deno.build.os !== "linux") return;
  const base: Record<string, string> = { HOME: Deno.env.get("HOME") ?? "/tmp" };
  for (const key of ["PATH", "DENO_DIR", "XDG_RUNTIME_DIR", "VK_ICD_FILENAMES", "LD_LIBRARY_PATH"]) {
    const value = Deno.env.get(key);
    if (value !== undefined) base[key] = value;
  }
  const chosen = await openInChild(base);
  equal(chosen.backends, "vulkan");
  equal(chosen.glLoaded, false, "the OpenGL driver stack was loaded");
  equal(chosen.described, "vulkan (wgkv's choice on Linux; set DENO_WEBGPU_BACKEND to choose)");
  const kept = await openInChild({ ...base, DENO_WEBGPU_BACKEND: "vulkan,gl" });
  equal(kept.backends, "vulkan,gl");
  equal(kept.described, "vulkan,gl (DENO_WEBGPU_BACKEND)");
});
