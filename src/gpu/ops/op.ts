/**
 * The shape every GPU op of the forward pass shares. An op is created once, with its buffers and static
 * shapes, by a factory `createXxx(gpu, options)`; it builds its pipeline and bind group there, and
 * {@link GpuOp.encode} only records `setPipeline`/`setBindGroup`/`dispatchWorkgroups`, so a decode step
 * replays the same command sequence every token. Values that change per step (the number of tokens in
 * this batch, the position of the first one) live in a small uniform buffer, usually one shared
 * {@link StepParams} written once per step.
 *
 * Activations are f32 buffers laid out `[nTokens][width]` row-major. Dispatches are sized for the largest
 * batch given at creation; rows at or past the step's `nTokens` are skipped by the kernels.
 *
 * @module
 */

import { BadFlagError } from "../../errors.ts";
import type { Gpu, Kernel } from "../device.ts";

/** One recorded piece of the forward pass: a fixed sequence of dispatches into a compute pass. */
export interface GpuOp {
  /** Records this op's dispatches into `pass`; no allocation, no bind-group creation. */
  encode(pass: GPUComputePassEncoder): void;
  /** Name used by the profiler and in error messages, e.g. "blk.3.attn_norm". */
  readonly label: string;
}

/** A buffer, or a byte range of one, that an op binds. */
export type BufferSlice = GPUBuffer | GPUBufferBinding;

/**
 * Alignment of a storage binding's byte offset: WebGPU's `minStorageBufferOffsetAlignment`, 256 by default
 * and at most 256 on any device, so slices at multiples of it bind everywhere.
 */
export const BINDING_OFFSET_ALIGNMENT = 256;

/** `ceil(a / b)` for non-negative integers. */
export function ceilDiv(a: number, b: number): number {
  return Math.floor((a + b - 1) / b);
}

/** The bytes of `slice` a binding can see (its explicit size, or the rest of the buffer after its offset). */
export function sliceBytes(slice: BufferSlice): number {
  if (slice instanceof GPUBuffer) return slice.size;
  return slice.size ?? slice.buffer.size - (slice.offset ?? 0);
}

/** The buffer behind `slice`. */
export function sliceBuffer(slice: BufferSlice): GPUBuffer {
  return slice instanceof GPUBuffer ? slice : slice.buffer;
}

/**
 * Throws a {@link BadFlagError} unless `slice` holds at least `bytes` bytes, naming the op, the binding
 * and both sizes.
 */
export function checkSlice(op: string, what: string, slice: BufferSlice, bytes: number): void {
  const have = sliceBytes(slice);
  if (have < bytes) {
    throw new BadFlagError(`${op}: buffer '${what}' holds ${have} bytes, the op needs ${bytes}`);
  }
}

/** Throws a {@link BadFlagError} unless `value` is an integer in [min, max], naming the op and option. */
export function checkInt(op: string, what: string, value: number, min: number, max = 2 ** 31 - 1): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new BadFlagError(`${op}: ${what} must be an integer in [${min}, ${max}], got ${value}`);
  }
}

/** Throws a {@link BadFlagError} unless a 1-D dispatch of `count` workgroups fits the device. */
export function checkWorkgroups(gpu: Gpu, op: string, count: number): void {
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  if (count > max) {
    throw new BadFlagError(`${op}: needs ${count} workgroups in one dimension, this GPU allows ${max}`);
  }
}

/**
 * The per-step values shared by many ops, as the WGSL uniform
 * `struct Step { nTokens: u32, pos0: u32, _pad0: u32, _pad1: u32 }`: the number of tokens in this batch
 * and the absolute position of the first. Write it once per step with {@link StepParams.set} before
 * submitting the step's command buffer.
 */
export class StepParams {
  /** The uniform buffer (16 bytes) to bind. */
  readonly buffer: GPUBuffer;
  /** The largest `nTokens` the ops reading this buffer were sized for. */
  readonly maxTokens: number;
  readonly #gpu: Gpu;
  readonly #data = new Uint32Array(4);

  /** Creates the buffer with `nTokens = maxTokens`, `pos0 = 0`. */
  constructor(gpu: Gpu, maxTokens: number, label = "step") {
    checkInt(label, "maxTokens", maxTokens, 1);
    this.#gpu = gpu;
    this.maxTokens = maxTokens;
    this.#data[0] = maxTokens;
    this.buffer = gpu.uniform(label, this.#data);
  }

  /** The number of tokens of the current step. */
  get nTokens(): number {
    return this.#data[0];
  }

  /** The absolute position of the first token of the current step. */
  get pos0(): number {
    return this.#data[1];
  }

  /** Sets this step's token count (1 … maxTokens) and first position (queued with `writeBuffer`). */
  set(nTokens: number, pos0 = 0): void {
    checkInt("step", "nTokens", nTokens, 1, this.maxTokens);
    checkInt("step", "pos0", pos0, 0, 2 ** 32 - 1);
    this.#data[0] = nTokens;
    this.#data[1] = pos0;
    this.#gpu.device.queue.writeBuffer(this.buffer, 0, this.#data);
  }
}

/** Something that can open a compute pass for a label: a profiler, or nothing (one pass for all ops). */
export interface PassProvider {
  /** Begins a compute pass on `encoder` whose time is attributed to `label`. */
  beginPass(encoder: GPUCommandEncoder, label: string): GPUComputePassEncoder;
}

/**
 * Dispatches `ops` record as they stand (an op may choose its dispatches from host-side state, e.g. the
 * step's position): each is encoded into a stand-in pass that only counts `dispatchWorkgroups` calls.
 */
export function countDispatches(ops: readonly GpuOp[]): number {
  let count = 0;
  const pass = new Proxy({}, {
    get: (_target, name) =>
      name === "dispatchWorkgroups" || name === "dispatchWorkgroupsIndirect" ? () => count++ : () => {},
  }) as GPUComputePassEncoder;
  for (const op of ops) op.encode(pass);
  return count;
}

/**
 * Records `ops` into `encoder`: all in one compute pass, or, with a `profiler`, one pass per op so each
 * op's time can be measured.
 */
export function encodeOps(encoder: GPUCommandEncoder, ops: readonly GpuOp[], profiler?: PassProvider): void {
  if (!profiler) {
    const pass = encoder.beginComputePass();
    for (const op of ops) op.encode(pass);
    pass.end();
    return;
  }
  for (const op of ops) {
    const pass = profiler.beginPass(encoder, op.label);
    op.encode(pass);
    pass.end();
  }
}

/**
 * A bind group for `kernel` from explicit (binding number, buffer) pairs; entries the pipeline does not
 * use (its automatic layout drops them) must be left out by the caller.
 */
export function bindNumbered(
  gpu: Gpu,
  kernel: Kernel,
  entries: readonly (readonly [number, BufferSlice])[],
): GPUBindGroup {
  return gpu.device.createBindGroup({
    label: kernel.key,
    layout: kernel.pipeline.getBindGroupLayout(0),
    entries: entries.map(([binding, slice]) => ({
      binding,
      resource: slice instanceof GPUBuffer ? { buffer: slice } : slice,
    })),
  });
}
