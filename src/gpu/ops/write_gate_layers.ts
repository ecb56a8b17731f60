/**
 * The write gates of all layers of a decode step in two dispatches after the last layer
 * (`wgsl/write_gate.wgsl` with `all_layers = 1`: entries `main` and `finish_layers`), instead of one or two
 * per layer between QKV and attention.
 *
 * A decode step's attention never needs the flags of the step's own token: the token is in the local window
 * whatever its flag, and leaves it `window` tokens later, when the dual cache promotes it (or not) by its
 * flag. So the fused QKV of each layer stores K (after RoPE) and V into the ring and records the slot's
 * position (`createQkvMatvec` with a dual cache as its `append`), writes the layer's keys before and after
 * RoPE into that layer's rows of two buffers, and this op then scores every layer at once and sets the
 * flags in the ring's slot info, as the per-layer gate would have.
 *
 * @module
 */

import { BadFlagError } from "../../errors.ts";
import type { Gpu } from "../device.ts";
import type { DualKvView } from "../../kv/dual_cache.ts";
import { loadShader } from "../shader.ts";
import { layerUniform, poolShaderSource } from "../../kv/paged_view.ts";
import {
  checkGateCache,
  GATE_CHUNK,
  GATE_FINISH_THREADS,
  GATE_TILE,
  gateLayerFloats,
  gateOpConstants,
  type GateOpOptions,
  type GateShape,
  type UploadedGate,
} from "./write_gate.ts";
import { NO_RING_APPEND } from "./write_gate_append.ts";
import {
  BINDING_OFFSET_ALIGNMENT,
  bindNumbered,
  type BufferSlice,
  ceilDiv,
  checkSlice,
  checkWorkgroups,
  type GpuOp,
} from "./op.ts";

/** Options of {@link createWriteGateLayers}. */
export interface WriteGateLayersOptions extends GateOpOptions {
  /**
   * Keys before RoPE of every layer: layer l's `f32 [maxTokens][kvHeads · headDim]` from byte
   * `l · {@link gateKeyRowsBytes}`.
   */
  preK: BufferSlice;
  /** Keys after RoPE of every layer, laid out as `preK`. */
  postK: BufferSlice;
  /** The gate's weights with all layers in one binding (`UploadedGate.all`). */
  params: NonNullable<UploadedGate["all"]>;
  /** Scratch for the partial logits, {@link gateLayersScratchBytes} bytes. Created when absent. */
  scratch?: BufferSlice;
  /** The dual cache whose ring slots get the flags (its QKV ops stored the keys, values and positions). */
  kv: DualKvView;
}

/** Bytes from one layer's keys to the next in {@link WriteGateLayersOptions.preK} (aligned for bindings). */
export function gateKeyRowsBytes(maxTokens: number, kvHeads: number, headDim: number): number {
  return ceilDiv(maxTokens * kvHeads * headDim * 4, BINDING_OFFSET_ALIGNMENT) * BINDING_OFFSET_ALIGNMENT;
}

/** Bytes of the partial-logit scratch of {@link createWriteGateLayers}. */
export function gateLayersScratchBytes(
  maxTokens: number,
  layers: number,
  kvHeads: number,
  inner: number,
): number {
  return layers * maxTokens * kvHeads * ceilDiv(inner, GATE_CHUNK) * 4;
}

/**
 * Why the write gates of `layers` layers of shape `shape` cannot run as one op on `gpu` (a one-line
 * reason), or undefined when they can: the weights of all layers must be one binding (see `uploadGate`)
 * and the grid must fit.
 */
export function writeGateLayersBlocker(
  gpu: Gpu,
  uploaded: UploadedGate,
  shape: GateShape,
  layers: number,
): string | undefined {
  if (!uploaded.all) return "the gate's weights of all layers do not fit one binding";
  const groups = layers * ceilDiv(shape.inner, GATE_CHUNK);
  if (groups > gpu.limits.maxComputeWorkgroupsPerDimension) {
    return `the gates of all layers need ${groups} workgroups in one dimension, this GPU allows ` +
      `${gpu.limits.maxComputeWorkgroupsPerDimension}`;
  }
  return undefined;
}

/** Builds the op that gates every layer of a decode step (two dispatches), see the module notes. */
export function createWriteGateLayers(gpu: Gpu, options: WriteGateLayersOptions): GpuOp {
  const { label, kvHeads, headDim, inner, layers, maxTokens, step, kv } = options;
  const shared = gateOpConstants(label, options);
  checkGateCache(label, options, kv);
  if (kv.policy.kind === "wgkv" && maxTokens > kv.policy.window) {
    throw new BadFlagError(
      `${label}: the gates after the last layer take steps of at most the window (${kv.policy.window}), ` +
        `not ${maxTokens}`,
    );
  }
  const keyRows = gateKeyRowsBytes(maxTokens, kvHeads, headDim);
  checkSlice(label, "preK", options.preK, (layers - 1) * keyRows + maxTokens * kvHeads * headDim * 4);
  checkSlice(label, "postK", options.postK, (layers - 1) * keyRows + maxTokens * kvHeads * headDim * 4);
  const layerFloats = gateLayerFloats(options);
  const { buffer: params, strideFloats } = options.params;
  if (strideFloats < layerFloats) {
    throw new BadFlagError(
      `${label}: params stride ${strideFloats} is below a layer's ${layerFloats} floats`,
    );
  }
  checkSlice(label, "params", params, ((layers - 1) * strideFloats + layerFloats) * 4);
  const chunks = ceilDiv(inner, GATE_CHUNK);
  const tiles = ceilDiv(maxTokens, GATE_TILE);
  const finishGroups = ceilDiv(maxTokens * layers * kvHeads, GATE_FINISH_THREADS);
  checkWorkgroups(gpu, label, Math.max(tiles, kvHeads, layers * chunks, finishGroups));
  const scratchBytes = gateLayersScratchBytes(maxTokens, layers, kvHeads, inner);
  const scratch = options.scratch ?? gpu.buffer(`${label} partial logits`, scratchBytes);
  checkSlice(label, "scratch", scratch, scratchBytes);
  const constants = {
    ...shared,
    all_layers: 1,
    k_stride: keyRows / 4,
    params_stride: strideFloats,
    layer_scratch: maxTokens * kvHeads * chunks,
  };
  // `main` reads none of the ring (the stub define); `finish_layers` records the flags through ring_record
  // (the slot info and sequence of the RING_APPEND define; its other bindings go unused, so the layout
  // leaves them out).
  const ring = loadShader("write_gate_append").replace("{{POOL}}", poolShaderSource(kv.shards.length, true));
  const ringConstants = { ring_append: 1, ring_tokens: kv.ringTokens };
  const mainKernel = gpu.kernel("write_gate", constants, { RING_APPEND: NO_RING_APPEND }, "main");
  const finishKernel = gpu.kernel(
    "write_gate",
    { ...constants, ...ringConstants },
    { RING_APPEND: ring },
    "finish_layers",
  );
  // (`main` names the layer uniform, scores and flags in its chain branches, unused here but bound.)
  const mainGroup = bindNumbered(gpu, mainKernel, [
    [0, step.buffer],
    [1, layerUniform(gpu, label, 0)],
    [2, options.preK],
    [3, options.postK],
    [4, params],
    [5, options.scores],
    [6, options.flags],
    [7, scratch],
  ]);
  const finishGroup = bindNumbered(gpu, finishKernel, [
    [0, step.buffer],
    [4, params],
    [5, options.scores],
    [6, options.flags],
    [7, scratch],
    [8, kv.sequence],
    [11, kv.slotInfo],
  ]);
  return {
    label,
    encode(pass: GPUComputePassEncoder): void {
      pass.setPipeline(mainKernel.pipeline);
      pass.setBindGroup(0, mainGroup);
      pass.dispatchWorkgroups(tiles, kvHeads, layers * chunks);
      pass.setPipeline(finishKernel.pipeline);
      pass.setBindGroup(0, finishGroup);
      pass.dispatchWorkgroups(finishGroups);
    },
  };
}
