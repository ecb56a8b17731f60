/**
 * Prefill matrix products through 8-bit integer dot products (`dot4I8Packed`, DP4A on GPUs that have it):
 * the activations are quantised per 32-value block ({@link createQ8Quantize}, `wgsl/quantize_q8.wgsl`), the
 * weights read as integer sub-blocks with their scales (`wgsl/int8_units.wgsl`), and
 * {@link createMatmulInt8} (`wgsl/matmul_int8.wgsl`) takes four products per instruction where the f32
 * kernel (`./matmul.ts`) takes one; {@link createGateUpSwiGluInt8} and {@link createQkvInt8} run several
 * products of one input in one dispatch. The result differs from the f32 product by the activations' rounding
 * (at most half a step of 1/127 of each block's largest magnitude), as in llama.cpp's quantised matmuls.
 *
 * @module
 */

import { BadFlagError, UnsupportedError } from "../../errors.ts";
import type { Gpu, Kernel } from "../device.ts";
import { suffixedWeightSource } from "./fused.ts";
import { loadShader } from "../shader.ts";
import type { GpuWeight } from "../weights.ts";
import { checkMaxKSplits, LinearOp, type PartDispatch, partUniform, productOp } from "./matmul.ts";
import {
  bindNumbered,
  type BufferSlice,
  ceilDiv,
  checkInt,
  checkSlice,
  checkWorkgroups,
  type GpuOp,
  type StepParams,
} from "./op.ts";

/** The weight types with an integer view in `wgsl/int8_units.wgsl`. */
export const INT8_WEIGHT_TYPES: readonly string[] = ["Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"];

/** Output rows and tokens per workgroup of `wgsl/matmul_int8.wgsl`. */
const TILE_ROWS = 128;
const TILE_TOKENS = 64;

/** 32-value blocks staged per K step by default. */
const K_BLOCKS = 2;

/**
 * Workgroup memory of `wgsl/matmul_int8.wgsl` with `kBlocks` blocks per step: the W tile, its scale pairs and
 * offsets, the X tile and its scales (8 KiB per block: 4 blocks fit 32 KiB).
 */
export function int8WorkgroupBytes(kBlocks: number): number {
  return kBlocks * (2 * TILE_ROWS * 16 + TILE_ROWS * 12 + 2 * TILE_TOKENS * 16 + TILE_TOKENS * 8);
}

/**
 * Why `weight` cannot go through {@link createMatmulInt8} (a one-line reason naming it), or undefined when it
 * can: its type needs an integer view, and its rows a whole number of 32-value blocks.
 */
export function int8MatmulBlocker(weight: GpuWeight): string | undefined {
  const type = weight.info.name;
  if (!INT8_WEIGHT_TYPES.includes(type)) return `${weight.name} is ${type}, which has no integer view`;
  if (weight.cols % 32 !== 0) return `${weight.name} has rows of ${weight.cols} values, not a multiple of 32`;
  return undefined;
}

/** Quantised activations: what {@link createQ8Quantize} writes and {@link createMatmulInt8} reads. */
export interface Q8Activations {
  /** Packed signed bytes, u32 `[maxTokens][cols / 4]`. */
  xq: BufferSlice;
  /** (d, d · Σq) per 32-value block, f32 pairs `[maxTokens][cols / 32]`. */
  xds: BufferSlice;
  /** Values per token row (a multiple of 32). */
  cols: number;
  /** Token rows the buffers hold. */
  maxTokens: number;
}

/** Bytes of the two buffers of {@link Q8Activations} for `maxTokens` rows of `cols` values. */
export function q8ActivationBytes(maxTokens: number, cols: number): { xq: number; xds: number } {
  return { xq: maxTokens * cols, xds: maxTokens * (cols / 32) * 8 };
}

/** Options of {@link createQ8Quantize}. */
export interface Q8QuantizeOptions {
  /** Name for errors and the profiler, e.g. "blk.0.ffn_q8". */
  label: string;
  /** The activations, f32 `[maxTokens][cols]`. */
  x: BufferSlice;
  /** Where the quantised activations go (their `cols` and `maxTokens` size the op). */
  out: Q8Activations;
  /** Per-step token count (`nTokens`). */
  step: StepParams;
}

/** Creates the op that quantises the step's activation rows into `out`, one 32-value block per thread. */
export function createQ8Quantize(gpu: Gpu, options: Q8QuantizeOptions): GpuOp {
  const { label, x, out, step } = options;
  const { cols, maxTokens } = out;
  checkQ8(label, out, step);
  checkSlice(label, "x", x, maxTokens * cols * 4);
  const workgroups = ceilDiv(maxTokens * (cols / 32), 64);
  checkWorkgroups(gpu, label, workgroups);
  const kernel = gpu.kernel("quantize_q8", { cols });
  const group = bindNumbered(gpu, kernel, [[0, x], [1, out.xq], [2, out.xds], [3, step.buffer]]);
  return {
    label,
    encode(pass: GPUComputePassEncoder): void {
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(workgroups);
    },
  };
}

function checkQ8(label: string, q8: Q8Activations, step: StepParams): void {
  checkInt(label, "maxTokens", q8.maxTokens, 1, step.maxTokens);
  if (q8.cols % 32 !== 0 || q8.cols < 32) {
    throw new UnsupportedError(`${label}: rows of ${q8.cols} values are not a multiple of 32`);
  }
  const bytes = q8ActivationBytes(q8.maxTokens, q8.cols);
  checkSlice(label, "xq", q8.xq, bytes.xq);
  checkSlice(label, "xds", q8.xds, bytes.xds);
}

/** Checks the input and output of a product with `weight`: `x` quantised rows of its width, `y` room for its rows. */
function checkProductIo(
  label: string,
  x: Q8Activations,
  step: StepParams,
  weight: GpuWeight,
  y: BufferSlice,
  maxTokens: number,
): void {
  checkQ8(label, x, step);
  if (x.cols !== weight.cols) {
    throw new UnsupportedError(`${label}: activations of ${x.cols} values for rows of ${weight.cols}`);
  }
  checkInt(label, "maxTokens", maxTokens, 1, x.maxTokens);
  checkSlice(label, "y", y, maxTokens * weight.rows * 4);
}

/** Options of {@link createMatmulInt8}. */
export interface MatmulInt8Options {
  /** Name for errors and the profiler, e.g. "blk.0.attn_q". */
  label: string;
  /** The weight, ggml shape `[cols, rows]`, of a type in {@link INT8_WEIGHT_TYPES}. */
  weight: GpuWeight;
  /** The activations, quantised by {@link createQ8Quantize} (`cols` = the weight's). */
  x: Q8Activations;
  /** Output, f32 `[maxTokens][weight.rows]`. */
  y: BufferSlice;
  /** Largest number of tokens per step; dispatches are sized for it. At most `x.maxTokens`. */
  maxTokens: number;
  /** Per-step token count (`nTokens`). */
  step: StepParams;
  /** 32-value blocks per K step, 2 (default) or 4 (32 KiB of workgroup memory). */
  kBlocks?: number;
  /**
   * Split K for steps of few tokens, as `MatmulOptions.maxKSplits` (`./matmul.ts`): at most this many
   * ranges of blocks, part s of `y` from s · (nTokens · rows + `SPLIT_K_SKEW`); `y` must hold
   * `splitKOutputFloats(maxKSplits, maxTokens, rows)`. Default 1: never.
   */
  maxKSplits?: number;
  /** Workgroups a split step aims for, as `MatmulOptions.kSplitWorkgroups` (`./matmul.ts`). */
  kSplitWorkgroups?: number;
}

/**
 * Creates `Y = X · Wᵀ` for the step's tokens from quantised activations, in output tiles of 128 rows × 64
 * tokens, one dispatch per weight part. Throws an {@link UnsupportedError} where
 * {@link int8MatmulBlocker} gives a reason.
 */
export function createMatmulInt8(gpu: Gpu, options: MatmulInt8Options): GpuOp {
  const { label, weight, x, y, maxTokens, step } = options;
  const blocker = int8MatmulBlocker(weight);
  if (blocker) throw new UnsupportedError(`${label}: no integer prefill product: ${blocker}`);
  checkProductIo(label, x, step, weight, y, maxTokens);
  const kBlocks = checkKBlocks(gpu, label, options.kBlocks);
  const tokenTiles = ceilDiv(maxTokens, TILE_TOKENS);
  checkWorkgroups(gpu, label, tokenTiles);
  const kernel = int8Kernel(gpu, [weight.info.name], kBlocks, "plain");
  const parts = weight.parts.map((part, i): PartDispatch => {
    checkWorkgroups(gpu, label, ceilDiv(part.rows, TILE_ROWS));
    const uniform = partUniform(gpu, label, weight, i);
    const group = bindNumbered(gpu, kernel, [
      ...int8Bindings([part.buffer], x, [y], [uniform]),
      [4, step.buffer],
    ]);
    return { group, workgroups: [ceilDiv(part.rows, TILE_ROWS), tokenTiles, 1] };
  });
  const maxSplits = checkMaxKSplits(label, options.maxKSplits ?? 1);
  const rowTiles = Math.max(...weight.parts.map((part) => ceilDiv(part.rows, TILE_ROWS)));
  return productOp(label, kernel, parts, {
    weight,
    y,
    maxTokens,
    step,
    tileTokens: TILE_TOKENS,
    rowTiles,
    maxSplits,
    kSplitWorkgroups: options.kSplitWorkgroups,
  });
}

/** Options of {@link createGateUpSwiGluInt8}. */
export interface GateUpSwiGluInt8Options {
  /** Name for errors and the profiler, e.g. "blk.0.ffn_gate_up". */
  label: string;
  /** The gate weight, ggml shape `[cols, rows]`, in one part. */
  gate: GpuWeight;
  /** The up weight: the gate's type and shape, in one part. */
  up: GpuWeight;
  /** The FFN input, quantised by {@link createQ8Quantize} (`cols` = the weights'). */
  x: Q8Activations;
  /** Output, f32 `[maxTokens][rows]`: silu(x · gateᵀ) · (x · upᵀ). */
  out: BufferSlice;
  /** Largest number of tokens per step; dispatches are sized for it. At most `x.maxTokens`. */
  maxTokens: number;
  /** Per-step token count (`nTokens`). */
  step: StepParams;
  /** 32-value blocks per K step, 2 (default) or 4. */
  kBlocks?: number;
}

/**
 * Why gate and up cannot go through {@link createGateUpSwiGluInt8} (a one-line reason), or undefined when
 * they can: both need an integer view, the same type and shape, and one part each.
 */
export function gateUpInt8Blocker(gate: GpuWeight, up: GpuWeight): string | undefined {
  const blocker = int8MatmulBlocker(gate) ?? int8MatmulBlocker(up);
  if (blocker) return blocker;
  if (gate.info.name !== up.info.name) return `${gate.name} is ${gate.info.name}, ${up.name} ${up.info.name}`;
  if (gate.rows !== up.rows || gate.cols !== up.cols) return `${gate.name} and ${up.name} differ in shape`;
  if (gate.parts.length !== 1 || up.parts.length !== 1) {
    return `${gate.name} or ${up.name} is split into parts`;
  }
  return undefined;
}

/**
 * Creates the prefill FFN input `silu(X · gateᵀ) · (X · upᵀ)` from quantised activations in one dispatch
 * (`wgsl/matmul_int8.wgsl` with `paired`: 64 gate rows and the same 64 up rows per tile). Throws an
 * {@link UnsupportedError} where {@link gateUpInt8Blocker} gives a reason.
 */
export function createGateUpSwiGluInt8(gpu: Gpu, options: GateUpSwiGluInt8Options): GpuOp {
  const { label, gate, up, x, out, maxTokens, step } = options;
  const blocker = gateUpInt8Blocker(gate, up);
  if (blocker) throw new UnsupportedError(`${label}: no integer gate/up product: ${blocker}`);
  checkProductIo(label, x, step, gate, out, maxTokens);
  const kernel = int8Kernel(gpu, [gate.info.name], checkKBlocks(gpu, label, options.kBlocks), "paired");
  const rowTiles = ceilDiv(gate.rows, TILE_ROWS / 2), tokenTiles = ceilDiv(maxTokens, TILE_TOKENS);
  checkWorkgroups(gpu, label, Math.max(rowTiles, tokenTiles));
  const group = bindNumbered(gpu, kernel, [
    ...int8Bindings([gate.parts[0].buffer, up.parts[0].buffer], x, [out], [partUniform(gpu, label, gate, 0)]),
    [4, step.buffer],
  ]);
  return new LinearOp(label, kernel, [{ group, workgroups: [rowTiles, tokenTiles, 1] }]);
}

/** Options of {@link createQkvInt8}. */
export interface QkvInt8Options {
  /** Name for errors and the profiler, e.g. "blk.0.attn_qkv". */
  label: string;
  /** The Q, K and V weights (each of a type in {@link INT8_WEIGHT_TYPES}, in one part, rows of one width). */
  wq: GpuWeight;
  wk: GpuWeight;
  wv: GpuWeight;
  /** The attention input, quantised by {@link createQ8Quantize} (`cols` = the weights'). */
  x: Q8Activations;
  /** Outputs, f32 `[maxTokens][rows of wq / wk / wv]`. */
  q: BufferSlice;
  k: BufferSlice;
  v: BufferSlice;
  /** Largest number of tokens per step; dispatches are sized for it. At most `x.maxTokens`. */
  maxTokens: number;
  /** Per-step token count (`nTokens`). */
  step: StepParams;
  /** 32-value blocks per K step, 2 (default) or 4. */
  kBlocks?: number;
}

/**
 * Why Q, K and V cannot go through {@link createQkvInt8} (a one-line reason), or undefined when they can:
 * each needs an integer view and one part, and their rows one width.
 */
export function qkvInt8Blocker(wq: GpuWeight, wk: GpuWeight, wv: GpuWeight): string | undefined {
  for (const w of [wq, wk, wv]) {
    const blocker = int8MatmulBlocker(w);
    if (blocker) return blocker;
    if (w.parts.length !== 1) return `${w.name} is split into parts`;
  }
  if (wk.cols !== wq.cols || wv.cols !== wq.cols) {
    return `${wq.name}, ${wk.name} and ${wv.name} differ in width`;
  }
  return undefined;
}

/**
 * Creates the attention's Q, K and V products of one quantised input in one dispatch (`wgsl/matmul_int8.wgsl`
 * with `stacked`: the three weights' row tiles side by side, each weight of its own type), so that K and V,
 * a few row tiles each, share the GPU with Q. Throws an {@link UnsupportedError} where
 * {@link qkvInt8Blocker} gives a reason.
 */
export function createQkvInt8(gpu: Gpu, options: QkvInt8Options): GpuOp {
  const { label, wq, wk, wv, x, q, k, v, maxTokens, step } = options;
  const blocker = qkvInt8Blocker(wq, wk, wv);
  if (blocker) throw new UnsupportedError(`${label}: no integer QKV product: ${blocker}`);
  checkProductIo(label, x, step, wq, q, maxTokens);
  checkProductIo(label, x, step, wk, k, maxTokens);
  checkProductIo(label, x, step, wv, v, maxTokens);
  const kernel = int8Kernel(
    gpu,
    [wq.info.name, wk.info.name, wv.info.name],
    checkKBlocks(gpu, label, options.kBlocks),
    "stacked",
  );
  const rowTiles = [wq, wk, wv].reduce((n, w) => n + ceilDiv(w.rows, TILE_ROWS), 0);
  const tokenTiles = ceilDiv(maxTokens, TILE_TOKENS);
  checkWorkgroups(gpu, label, Math.max(rowTiles, tokenTiles));
  const group = bindNumbered(gpu, kernel, [
    ...int8Bindings(
      [wq.parts[0].buffer, wk.parts[0].buffer, wv.parts[0].buffer],
      x,
      [q, k, v],
      [partUniform(gpu, label, wq, 0), partUniform(gpu, label, wk, 0), partUniform(gpu, label, wv, 0)],
    ),
    [4, step.buffer],
  ]);
  return new LinearOp(label, kernel, [{ group, workgroups: [rowTiles, tokenTiles, 1] }]);
}

/**
 * The weight, input, output and part bindings of `wgsl/matmul_int8.wgsl`: one or two weights (W_a, W_b; a
 * missing W_b repeats W_a), one output and part; the stacked form's second and third (W_b and W_c, y_b and
 * y_c, part_b and part_c).
 */
function int8Bindings(
  weights: GPUBuffer[],
  x: Q8Activations,
  outputs: BufferSlice[],
  parts: GPUBuffer[],
): [number, BufferSlice][] {
  const entries: [number, BufferSlice][] = [
    [0, weights[0]],
    [6, weights[1] ?? weights[0]],
    [1, x.xq],
    [2, x.xds],
    [3, outputs[0]],
    [5, parts[0]],
  ];
  if (weights.length === 3) {
    entries.push([9, weights[2]], [7, outputs[1]], [10, outputs[2]], [8, parts[1]], [11, parts[2]]);
  }
  return entries;
}

/** The blocks per K step to use: `kBlocks` (2 by default), checked against the workgroup memory. */
function checkKBlocks(gpu: Gpu, label: string, kBlocks = K_BLOCKS): number {
  if (kBlocks !== 2 && kBlocks !== 4) {
    throw new BadFlagError(`${label}: kBlocks must be 2 or 4, got ${kBlocks}`);
  }
  const bytes = int8WorkgroupBytes(kBlocks);
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  if (bytes > limit) {
    throw new BadFlagError(
      `${label}: kBlocks ${kBlocks} needs ${bytes} bytes of workgroup memory, this GPU allows ${limit}`,
    );
  }
  return kBlocks;
}

/** Integer-viewable types with a scale per 16 values (two per 32-value unit); the others have one. */
const TWO_SCALE_TYPES = new Set(["Q6_K"]);

/**
 * `wgsl/matmul_int8.wgsl` for weights of `types` (W_a, W_b and, stacked, W_c; a missing one repeats the
 * first) in one of its forms: plain, paired (gate/up + SwiGLU) or stacked (Q, K and V).
 */
function int8Kernel(
  gpu: Gpu,
  types: string[],
  kBlocks: number,
  form: "plain" | "paired" | "stacked",
): Kernel {
  const stacked = shaderSections("matmul_int8_stacked");
  return gpu.kernel(
    "matmul_int8",
    {
      k_blocks: kBlocks,
      units_per_thread: kBlocks / 2,
      paired: form === "paired" ? 1 : 0,
      stacked: form === "stacked" ? 1 : 0,
      single_scale: types.every((type) => !TWO_SCALE_TYPES.has(type)) ? 1 : 0,
    },
    {
      INT8_UNITS_A: int8UnitSource(types[0], "a"),
      INT8_UNITS_B: int8UnitSource(types[1] ?? types[0], "b"),
      STACKED: form === "stacked"
        ? int8UnitSource(types[2], "c") + stacked.get("STACKED")!
        : stacked.get("NONE")!,
    },
  );
}

/** The `// ==== NAME ====` sections of a library shader, by name. */
function shaderSections(name: string): Map<string, string> {
  const sections = new Map<string, string>();
  const parts = loadShader(name).split(/^\/\/ ==== (\w+) ====$/m);
  for (let i = 1; i + 1 < parts.length; i += 2) sections.set(parts[i], parts[i + 1]);
  return sections;
}

/**
 * The WGSL spliced at INT8_UNITS_A or _B for weights of `type`: the byte readers (COMMON of
 * `wgsl/dequant.wgsl`), then the COMMON and `type` sections of `wgsl/int8_units.wgsl`, with the weight binding
 * and the function names suffixed `_<suffix>`.
 */
function int8UnitSource(type: string, suffix: string): string {
  const units = shaderSections("int8_units");
  const body = units.get(type);
  if (body === undefined) throw new UnsupportedError(`type ${type} has no integer view`);
  return suffixedWeightSource(shaderSections("dequant").get("COMMON")! + units.get("COMMON")! + body, suffix);
}
