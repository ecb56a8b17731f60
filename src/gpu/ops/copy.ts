/**
 * A buffer copy inside a compute pass (`wgsl/copy.wgsl`): WebGPU's `copyBufferToBuffer` cannot be
 * recorded between dispatches of one pass, this can. Also the kernel the benchmark measures the device's
 * copy bandwidth with.
 *
 * @module
 */

import { BadFlagError } from "../../errors.ts";
import type { Gpu } from "../device.ts";
import type { GpuOp } from "./op.ts";

/** Builds an op copying `floats` 32-bit values (a multiple of 4) from `src` to `dst`. */
export function createCopy(gpu: Gpu, label: string, src: GPUBuffer, dst: GPUBuffer, floats: number): GpuOp {
  if (!Number.isInteger(floats) || floats <= 0 || floats % 4 !== 0) {
    throw new BadFlagError(
      `${label}: the copy moves whole vec4s, ${floats} values is not a positive multiple of 4`,
    );
  }
  const n = floats / 4;
  const groups = Math.ceil(n / 256);
  const row = Math.min(groups, gpu.limits.maxComputeWorkgroupsPerDimension);
  const kernel = gpu.kernel("copy", { N: n, WG: 256, ROW: row });
  const group = gpu.bind(kernel, [src, dst]);
  return {
    label,
    encode(pass) {
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(row, Math.ceil(groups / row));
    },
  };
}
