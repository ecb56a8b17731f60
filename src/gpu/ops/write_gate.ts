/**
 * The WG-KV write gate on the GPU (`wgsl/write_gate.wgsl`): per token of the step and per KV head, the
 * admission score g of a small MLP on the key (pre- and post-RoPE, each RMS-normalised) and the flag
 * `g > threshold` (strict). Scores and flags of all layers share two buffers laid out
 * `[maxTokens][layers][kvHeads]` (token-major), so the flags of a whole step are one contiguous range of
 * `nTokens · layers · kvHeads` u32 words that the forward pass copies into its readback.
 *
 * Pre-RoPE keys: the forward pass rotates K in place, so the gate reads two buffers, the key before RoPE
 * (a copy taken before the RoPE op) and after. We chose the copy over rotating inside the gate kernel so
 * that RoPE (with its exact angle reduction, frequency factors and partial rotary dims) has a single
 * implementation; the copy is `nTokens · kvHeads · headDim` floats, negligible next to the gate's weights.
 *
 * With `append` the op also does the layer's WG-KV append (the ring store of `createWgkvAppend`) in the
 * dispatch that decides the flags, see `./write_gate_append.ts`.
 *
 * @module
 */

import { BadFlagError, UnsupportedError } from "../../errors.ts";
import type { GateWeights } from "../../gate/format.ts";
import type { Gpu } from "../device.ts";
import { layerUniform } from "../../kv/paged_view.ts";
import { type WriteGateAppend, writeGateAppendBlocker, writeGateAppendParts } from "./write_gate_append.ts";
import type { DualKvView } from "../../kv/dual_cache.ts";
import {
  BINDING_OFFSET_ALIGNMENT,
  bindNumbered,
  type BufferSlice,
  ceilDiv,
  checkInt,
  checkSlice,
  checkWorkgroups,
  type GpuOp,
  type StepParams,
} from "./op.ts";

/** Tokens per gate workgroup (`TILE` in the shader). */
export const GATE_TILE = 8;

/** Hidden units per gate workgroup (`UNITS` in the shader). */
export const GATE_CHUNK = 32;

/** Threads of a `finish` workgroup (`FINISH_THREADS` in the shader). */
export const GATE_FINISH_THREADS = 64;

/** Default admission threshold τ (strict `g > τ`). */
export const DEFAULT_GATE_THRESHOLD = 0.1;

/** Lower clamp of the score (the reference's slow path). */
export const GATE_EPSILON = 1e-3;

/** One layer's gate weights, f32, in the checkpoint's layout (conv weights with the trailing 1 squeezed). */
export interface GateLayerWeights {
  /** RMSNorm weight of the pre-RoPE key, [headDim], shared by all KV heads. */
  readonly preNorm: Float32Array;
  /** RMSNorm weight of the post-RoPE key, [headDim]. */
  readonly postNorm: Float32Array;
  /** First layer, [kvHeads][inner][2·headDim] (row h·inner + i reads input [pre ; post]). */
  readonly w1: Float32Array;
  /** First bias, [kvHeads][inner]. */
  readonly b1: Float32Array;
  /** Second layer, [kvHeads][inner]. */
  readonly w2: Float32Array;
  /** Second bias, [kvHeads]. */
  readonly b2: Float32Array;
}

/** Shape of a gate: KV heads, head size and hidden width (`inner = headDim · expand`). */
export interface GateShape {
  /** KV heads per layer. */
  readonly kvHeads: number;
  /** Values per head. */
  readonly headDim: number;
  /** Hidden units per head. */
  readonly inner: number;
}

/** f32 values of one packed layer (see {@link packGateLayer}). */
export function gateLayerFloats(shape: GateShape): number {
  const { kvHeads: H, headDim: D, inner } = shape;
  return 2 * D + H * inner * 2 * D + 2 * H * inner + H;
}

/**
 * Packs one layer's weights the way the kernel reads them: both norms, W1 transposed per head to
 * `[kvHeads][2·headDim][inner]` (coalesced reads), b1, w2, b2. Throws {@link BadFlagError} naming the
 * tensor whose length does not match `shape`.
 */
export function packGateLayer(weights: GateLayerWeights, shape: GateShape): Float32Array<ArrayBuffer> {
  const { kvHeads: H, headDim: D, inner } = shape;
  const want: Record<keyof GateLayerWeights, number> = {
    preNorm: D,
    postNorm: D,
    w1: H * inner * 2 * D,
    b1: H * inner,
    w2: H * inner,
    b2: H,
  };
  for (const [name, n] of Object.entries(want)) {
    const got = weights[name as keyof GateLayerWeights].length;
    if (got !== n) throw new BadFlagError(`write gate: tensor ${name} has ${got} values, expected ${n}`);
  }
  const out = new Float32Array(gateLayerFloats(shape));
  out.set(weights.preNorm, 0);
  out.set(weights.postNorm, D);
  let o = 2 * D;
  for (let h = 0; h < H; h++) {
    for (let c = 0; c < 2 * D; c++) {
      for (let r = 0; r < inner; r++) out[o++] = weights.w1[(h * inner + r) * 2 * D + c];
    }
  }
  out.set(weights.b1, o);
  out.set(weights.w2, o + H * inner);
  out.set(weights.b2, o + 2 * H * inner);
  return out;
}

/** What every write-gate op takes: the gate's shape, its outputs and settings. */
export interface GateOpOptions extends GateShape {
  /** Name for the profiler and errors. */
  label: string;
  /** Decoder layers (the second dimension of the outputs). */
  layers: number;
  /** Largest number of tokens per step; the dispatch is sized for it. */
  maxTokens: number;
  /** Scores, f32[maxTokens][layers][kvHeads]. */
  scores: BufferSlice;
  /** Flags, u32[maxTokens][layers][kvHeads]. */
  flags: BufferSlice;
  /** Admission threshold in [0, 1] (default {@link DEFAULT_GATE_THRESHOLD}); 1 admits nothing. */
  threshold?: number;
  /** Hidden activation (default exact GELU). */
  activation?: "gelu" | "silu";
  /** Per-step token count (`nTokens`) and position. */
  step: StepParams;
  /** Scratch for the partial logits (its size depends on the op). Created when absent. */
  scratch?: BufferSlice;
}

/**
 * Checks what every write-gate op takes (shape, step, threshold, outputs; a {@link BadFlagError} naming the
 * op and value) and returns the kernel constants they share.
 */
export function gateOpConstants(label: string, options: GateOpOptions): Record<string, number> {
  const { kvHeads, headDim, inner, layers, maxTokens, step } = options;
  checkInt(label, "kvHeads", kvHeads, 1);
  checkInt(label, "headDim", headDim, 2, 256);
  checkInt(label, "inner", inner, 1);
  checkInt(label, "layers", layers, 1);
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  const threshold = options.threshold ?? DEFAULT_GATE_THRESHOLD;
  if (!(threshold >= 0 && threshold <= 1)) {
    throw new BadFlagError(`${label}: threshold must be in [0, 1], got ${threshold}`);
  }
  checkSlice(label, "scores", options.scores, gateOutputBytes(maxTokens, layers, kvHeads));
  checkSlice(label, "flags", options.flags, gateOutputBytes(maxTokens, layers, kvHeads));
  return {
    head_dim: headDim,
    kv_heads: kvHeads,
    layers,
    inner,
    threshold,
    epsilon: GATE_EPSILON,
    activation: options.activation === "silu" ? 1 : 0,
  };
}

/**
 * Throws a {@link BadFlagError} unless `kv` is a `wgkv` dual cache of the gate's layers, KV heads and head
 * size (the cache whose ring the op writes the flags of).
 */
export function checkGateCache(label: string, options: GateOpOptions, kv: DualKvView): void {
  if (kv.policy.kind !== "wgkv") {
    throw new BadFlagError(
      `${label}: the gate's flags go to a wgkv cache, but the cache's policy is ${kv.policy.kind}`,
    );
  }
  for (const key of ["layers", "kvHeads", "headDim"] as const) {
    if (kv[key] !== options[key]) {
      throw new BadFlagError(`${label}: the gate has ${key} ${options[key]}, the cache ${kv[key]}`);
    }
  }
}

/** Options of {@link createWriteGate}. */
export interface WriteGateOptions extends GateOpOptions {
  /** Layer this op gates (its column of the outputs). */
  layer: number;
  /** Keys before RoPE, f32[maxTokens][kvHeads · headDim]. */
  preK: BufferSlice;
  /** Keys after RoPE, f32[maxTokens][kvHeads · headDim]. */
  postK: BufferSlice;
  /** This layer's weights packed by {@link packGateLayer}. */
  params: BufferSlice;
  /**
   * Scratch for the partial logits, {@link gateScratchBytes} bytes; may be shared by the gate ops of all
   * layers (they run one after another). Created when absent.
   */
  scratch?: BufferSlice;
  /**
   * When given, the dispatch that decides the flags also appends the step's keys after RoPE (`postK`) and
   * values (`append.v`) to this layer's ring in `append.kv`, with each slot's position and flag, exactly as
   * `createWgkvAppend` with these flags would (so no append dispatch is needed). The cache's bindings must
   * fit: see `writeGateAppendBlocker` in `./write_gate_append.ts`.
   */
  append?: WriteGateAppend;
  /**
   * A chain of layers at decode (with `append`, steps of at most the cache's window): this op is one
   * dispatch that computes the partial logits, stores the step's keys and values in the ring and records
   * their positions, and, with `previousParams` (the previous layer's weights, whose op had `finishLater`),
   * decides the previous layer's flags; with `finishLater` false it then decides its own flags in a second
   * dispatch as usual (the last layer). The ops of a chain share `scratch` of {@link gateScratchBytes} with
   * `chained` (two ranges, by layer parity). Saves one dispatch per layer but the last.
   */
  chain?: WriteGateChain;
}

/** A write gate's place in a decode chain of layers (see {@link WriteGateOptions.chain}). */
export interface WriteGateChain {
  /** The next layer's op decides this layer's flags (this op has no second dispatch). */
  finishLater: boolean;
  /** The previous layer's packed weights: this op decides that layer's flags (its op had `finishLater`). */
  previousParams?: BufferSlice;
}

/** Bytes of the partial-logit scratch of a gate op (of the ops of a decode chain, with `chained`). */
export function gateScratchBytes(maxTokens: number, kvHeads: number, inner: number, chained = false): number {
  return (chained ? 2 : 1) * maxTokens * kvHeads * ceilDiv(inner, GATE_CHUNK) * 4;
}

/** Bytes of the scores (or flags) buffer shared by the gate ops of all layers. */
export function gateOutputBytes(maxTokens: number, layers: number, kvHeads: number): number {
  return maxTokens * layers * kvHeads * 4;
}

/** Builds the write-gate op of one layer (pipeline shared by all layers, bind group once). */
export function createWriteGate(gpu: Gpu, options: WriteGateOptions): GpuOp {
  const { label, kvHeads, headDim, inner, layers, layer, maxTokens, step } = options;
  const shared = gateOpConstants(label, options);
  checkInt(label, "layer", layer, 0, layers - 1);
  checkSlice(label, "preK", options.preK, maxTokens * kvHeads * headDim * 4);
  checkSlice(label, "postK", options.postK, maxTokens * kvHeads * headDim * 4);
  checkSlice(label, "params", options.params, gateLayerFloats(options) * 4);
  const append = options.append;
  if (append) checkAppend(gpu, label, options, append);
  const chain = options.chain;
  if (chain) checkChain(gpu, label, options, chain);
  const tiles = ceilDiv(maxTokens, GATE_TILE);
  const chunks = ceilDiv(inner, GATE_CHUNK);
  // `finish`: a thread per (token, head), or with the append a workgroup per (token, head).
  const finishGroups: [number, number] = append
    ? [maxTokens, kvHeads]
    : [ceilDiv(maxTokens * kvHeads, GATE_FINISH_THREADS), 1];
  checkWorkgroups(gpu, label, Math.max(tiles, kvHeads, chunks, ...finishGroups));
  const scratchBytes = gateScratchBytes(maxTokens, kvHeads, inner, chain !== undefined);
  const scratch = options.scratch ?? gpu.buffer(`${label} partial logits`, scratchBytes);
  checkSlice(label, "scratch", scratch, scratchBytes);
  // In a chain, the partial logits of even layers come first, those of odd layers after them.
  const parityFloats = maxTokens * kvHeads * chunks;
  const constants = { ...shared, scratch_base: chain ? (layer % 2) * parityFloats : 0 };
  const ring = writeGateAppendParts(append);
  const chainConstants = chain
    ? {
      ...ring.constants,
      finish_later: chain.finishLater ? 1 : 0,
      finish_previous: chain.previousParams ? 1 : 0,
      prev_scratch_base: ((layer + 1) % 2) * parityFloats,
    }
    : {};
  const partialKernel = gpu.kernel(
    "write_gate",
    { ...constants, ...chainConstants },
    { RING_APPEND: chain ? ring.source : writeGateAppendParts().source },
    "main",
  );
  const layerParams = layerUniform(gpu, label, layer);
  const outputs: [number, BufferSlice][] = [
    [0, step.buffer],
    [1, layerParams],
    [4, options.params],
    [5, options.scores],
    [6, options.flags],
    [7, scratch],
  ];
  const partialGroup = bindNumbered(gpu, partialKernel, [
    ...outputs,
    [2, options.preK],
    [3, options.postK],
    ...(chain
      ? [...ring.entries, [12, chain.previousParams ?? options.params] as [number, BufferSlice]]
      : []),
  ]);
  const dispatches: [GPUComputePipeline, GPUBindGroup, [number, number, number]][] = [
    [partialKernel.pipeline, partialGroup, [tiles, kvHeads, chunks]],
  ];
  if (!chain?.finishLater) {
    const finishKernel = gpu.kernel(
      "write_gate",
      { ...constants, ...ring.constants },
      { RING_APPEND: ring.source },
      "finish",
    );
    const finishGroup = bindNumbered(gpu, finishKernel, [
      ...outputs,
      ...(append ? [[3, options.postK] as [number, BufferSlice]] : []),
      ...ring.entries,
    ]);
    dispatches.push([finishKernel.pipeline, finishGroup, [...finishGroups, 1]]);
  }
  return {
    label,
    encode(pass: GPUComputePassEncoder): void {
      for (const [pipeline, group, grid] of dispatches) {
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, group);
        pass.dispatchWorkgroups(...grid);
      }
    },
  };
}

/**
 * Throws unless `options` may take its place in a decode chain: an append to the ring (checked already),
 * whose bindings fit with the previous layer's weights ({@link UnsupportedError}), steps of at most the
 * window, and a previous layer to finish only after the first ({@link BadFlagError}).
 */
function checkChain(gpu: Gpu, label: string, options: WriteGateOptions, chain: WriteGateChain): void {
  const append = options.append;
  if (!append) throw new BadFlagError(`${label}: a chain of write gates needs the ring append`);
  if (!options.scratch) throw new BadFlagError(`${label}: the write gates of a chain must share a scratch`);
  const window = append.kv.policy.kind === "wgkv" ? append.kv.policy.window : 0;
  if (options.maxTokens > window) {
    throw new BadFlagError(
      `${label}: a chain of write gates takes steps of at most the window (${window}), not ${options.maxTokens}`,
    );
  }
  if (chain.previousParams) {
    if (options.layer === 0) throw new BadFlagError(`${label}: layer 0 has no previous layer to finish`);
    checkSlice(label, "chain.previousParams", chain.previousParams, gateLayerFloats(options) * 4);
  }
  const blocker = writeGateAppendBlocker(gpu.limits, append.kv, true);
  if (blocker) throw new UnsupportedError(`${label}: cannot chain: ${blocker}`);
}

/**
 * Throws unless `append` can be fused into the gate of `options`: a `wgkv` dual cache of the gate's shape
 * ({@link BadFlagError}) whose bindings fit next to the gate's ({@link UnsupportedError}), and values
 * large enough.
 */
function checkAppend(gpu: Gpu, label: string, options: WriteGateOptions, append: WriteGateAppend): void {
  const { kv } = append;
  checkGateCache(label, options, kv);
  const blocker = writeGateAppendBlocker(gpu.limits, kv);
  if (blocker) throw new UnsupportedError(`${label}: cannot append to the ring: ${blocker}`);
  checkSlice(label, "append.v", append.v, options.maxTokens * options.kvHeads * options.headDim * 4);
}

/** A gate's weights on the GPU (see {@link uploadGate}). */
export interface UploadedGate {
  /** Each layer's packed weights, for `WriteGateOptions.params`. */
  readonly layers: readonly BufferSlice[];
  /**
   * All layers in one binding, layer l from float `l · strideFloats` (each slice at a multiple of
   * `BINDING_OFFSET_ALIGNMENT` bytes), for the gates of all layers at once (`createWriteGateLayers`); absent where they do not fit one binding.
   */
  readonly all?: { readonly buffer: GPUBuffer; readonly strideFloats: number };
  /** The buffers holding them (to destroy with the model). */
  readonly buffers: readonly GPUBuffer[];
}

/**
 * Uploads every layer of `gate` (packed by {@link packGateLayer}): into one buffer, each layer's slice at
 * an offset that binds (`BINDING_OFFSET_ALIGNMENT`), where all of them fit one binding, otherwise into a
 * buffer per layer. Our keys come from GGUF models, so the gate must expect GGUF key order
 * (`gate import` permutes Hugging Face checkpoints); any other order is refused with an
 * {@link UnsupportedError}, as are settings the kernel does not implement.
 */
export function uploadGate(gpu: Gpu, gate: GateWeights, what = "gate"): UploadedGate {
  if (gate.keyOrder !== "gguf") {
    throw new UnsupportedError(
      `${what}: weights expect keys in ${gate.keyOrder} order, the engine computes GGUF order (re-import the gate)`,
    );
  }
  if (gate.normEpsilon !== 1e-6 && Math.fround(gate.normEpsilon) !== Math.fround(1e-6)) {
    throw new UnsupportedError(`${what}: norm epsilon ${gate.normEpsilon} is not supported (1e-6)`);
  }
  if (Math.fround(gate.scoreFloor) !== Math.fround(GATE_EPSILON)) {
    throw new UnsupportedError(`${what}: score floor ${gate.scoreFloor} is not supported (${GATE_EPSILON})`);
  }
  const floats = gateLayerFloats(gate);
  const strideFloats = ceilDiv(floats, BINDING_OFFSET_ALIGNMENT / 4) * (BINDING_OFFSET_ALIGNMENT / 4);
  const allBytes = ((gate.layers.length - 1) * strideFloats + floats) * 4;
  if (allBytes <= Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize)) {
    const packed = new Float32Array(allBytes / 4);
    gate.layers.forEach((layer, i) => packed.set(packGateLayer(layer, gate), i * strideFloats));
    const buffer = gpu.buffer(`${what} layers`, allBytes, packed);
    return {
      layers: gate.layers.map((_, i) => ({ buffer, offset: i * strideFloats * 4, size: floats * 4 })),
      all: { buffer, strideFloats },
      buffers: [buffer],
    };
  }
  const buffers = gate.layers.map((layer, i) => {
    const packed = packGateLayer(layer, gate);
    return gpu.buffer(`${what} layer ${i}`, packed.byteLength, packed);
  });
  return { layers: buffers, buffers };
}
