/**
 * `wgkv gpu`: the WebGPU device wgkv would run on: adapter, the features it uses (shader-f16, timestamps,
 * subgroups, cooperative matrices, checked by their probe), the limits that size its kernels and KV cache,
 * and every feature the adapter offers.
 *
 * @module
 */

import { formatBytes, Gpu } from "../gpu/device.ts";
import type { Command } from "./main.ts";
import { type FlagSpec, helpText, parseFlags } from "./flags.ts";

const FLAGS: Record<string, FlagSpec> = {
  json: { type: "boolean", help: "print one JSON object" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

/** The `gpu` subcommand. */
export const gpuCommand: Command = {
  summary: "describe the WebGPU device (features, subgroups, matrix units, limits)",
  async main(args) {
    const { values } = parseFlags("gpu", args, FLAGS);
    if (values.help) {
      console.log(helpText("wgkv gpu [--json]", gpuCommand.summary, FLAGS));
      return 0;
    }
    // Opened as the cooperative-matrix prefill opens it, so the matrix units are probed too.
    const gpu = await Gpu.create({ profile: true, coopMatrix: true });
    try {
      const l = gpu.limits;
      const summary = {
        adapter: gpu.description,
        backends: gpu.backends,
        software: gpu.isFallback,
        shader_f16: gpu.hasF16,
        timestamps: gpu.hasTimestamps,
        subgroups: gpu.subgroups ?? null,
        matrix_units: gpu.coopMatrix ? { ...gpu.coopMatrix } : null,
        matrix_units_note: gpu.coopMatrixNote,
        adapter_features: gpu.adapterFeatures,
        limits: {
          max_buffer_size: l.maxBufferSize,
          max_storage_buffer_binding_size: l.maxStorageBufferBindingSize,
          max_storage_buffers_per_shader_stage: l.maxStorageBuffersPerShaderStage,
          max_compute_workgroup_storage_size: l.maxComputeWorkgroupStorageSize,
          max_compute_invocations_per_workgroup: l.maxComputeInvocationsPerWorkgroup,
          max_compute_workgroups_per_dimension: l.maxComputeWorkgroupsPerDimension,
        },
      };
      if (values.json) {
        console.log(JSON.stringify(summary, null, 2));
        return 0;
      }
      const yes = (b: boolean) => (b ? "yes" : "no");
      console.log([
        `adapter:        ${gpu.description}${gpu.isFallback ? " (software: slow, for tests)" : ""}`,
        `backends:       ${gpu.backends}`,
        `shader-f16:     ${yes(gpu.hasF16)}`,
        `timestamps:     ${yes(gpu.hasTimestamps)} (per-kernel --profile)`,
        `subgroups:      ${
          gpu.subgroups ? `${gpu.subgroups.minSize}-${gpu.subgroups.maxSize} invocations` : "no"
        }`,
        `matrix units:   ${gpu.coopMatrixNote}`,
        `largest buffer: ${formatBytes(l.maxBufferSize)}, binding ${
          formatBytes(l.maxStorageBufferBindingSize)
        }, ` +
        `${l.maxStorageBuffersPerShaderStage} storage buffers per kernel`,
        `workgroups:     ${formatBytes(l.maxComputeWorkgroupStorageSize)} of workgroup memory, ` +
        `${l.maxComputeInvocationsPerWorkgroup} invocations`,
        `features:       ${gpu.adapterFeatures.join(" ") || "none"}`,
      ].join("\n"));
      return 0;
    } finally {
      gpu.destroy();
    }
  },
};
