import { ok } from "node:assert/strict";
import { getGpu } from "../src/gpu/device.ts";
import { createCopy } from "../src/gpu/ops/copy.ts";
import { timeOps } from "../bench/kernel_timing.ts";

Deno.test("bench timing: timeOps gives a positive time per dispatch, by GPU timestamps where the device has them", async () => {
  const gpu = await getGpu({ profile: true });
  const floats = 1 << 16;
  const src = gpu.buffer("src", floats * 4), dst = gpu.buffer("dst", floats * 4);
  const { us, dispatches } = await timeOps(gpu, [createCopy(gpu, "copy", src, dst, floats)], true);
  ok(Number.isFinite(us) && us > 0, `${us} µs per dispatch`);
  ok(dispatches[1] > dispatches[0] && dispatches[0] >= 2, `dispatches ${dispatches}`);
  src.destroy();
  dst.destroy();
});
