/**
 * `y = x · Wᵀ` with W a {@link GpuWeight} in its GGUF type: activations `x` are f32 `[nTokens][cols]`, outputs
 * `y` f32 `[nTokens][rows]`, both row-major. Two kernels: {@link createMatvec} for decode (a few tokens,
 * bandwidth-bound, `wgsl/matvec_fast.wgsl`, see `./matvec_units.ts`) and {@link createMatmul} for prefill
 * (tiled, `wgsl/matmul.wgsl`).
 * A weight split into several parts is dispatched once per part, each writing its own output columns.
 *
 * @module
 */

import { BadFlagError, UnsupportedError } from "../../errors.ts";
import type { Gpu, Kernel } from "../device.ts";
import type { GpuWeight } from "../weights.ts";
import { suffixedDequantSource } from "./fused.ts";
import { EMULATED_COOP_MATRIX } from "../coop_probe.ts";
import { loadShader } from "../shader.ts";
import { type ChainedInt8, int8InputParts, int8OutputParts } from "./int8_input.ts";
import {
  checkMatvecTuningKeys,
  checkMatvecWeights,
  checkUnitsPerStep,
  int8InputFits,
  launchedGroups,
  reduceLanes,
  subblockDefines,
  subgroupReduceParts,
} from "./matvec_units.ts";
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

/**
 * The `part` uniform of the prefill product kernels for part `index` of `weight`: rows (in the part),
 * first_row, out_stride (rows of the whole weight), cols, row_bytes.
 */
export function partUniform(gpu: Gpu, label: string, weight: GpuWeight, index: number): GPUBuffer {
  const part = weight.parts[index];
  return gpu.uniform(
    `${label}.part${index}`,
    new Uint32Array([part.rows, part.firstRow, weight.rows, weight.cols, weight.rowBytes]),
  );
}

/** What both matrix ops bind. */
export interface LinearOptions {
  /** Name for errors and the profiler, e.g. "blk.0.attn_q". */
  label: string;
  /** The weight, ggml shape `[cols, rows]`. */
  weight: GpuWeight;
  /** Input activations, f32 `[maxTokens][weight.cols]`. */
  x: BufferSlice;
  /** Output, f32 `[maxTokens][weight.rows]`. */
  y: BufferSlice;
  /** Largest number of tokens per step; dispatches are sized for it. At most `step.maxTokens`. */
  maxTokens: number;
  /** Per-step token count (`nTokens`). */
  step: StepParams;
}

/** Tuning knobs of the decode kernel (WGSL override constants). */
export interface MatvecTuning {
  /**
   * Threads per workgroup, a power of two in [32, 1024] (default: cols / 16 rounded up, within [32, 64]; 128
   * for rows of 8192 values and more, and 256 for single products of such rows where the reduction fits).
   */
  workgroupSize?: number;
  /** Weight rows per workgroup, 1..8 (default 4; the fused ops take fewer where workgroup memory is short). */
  rowsPerWorkgroup?: number;
  /** Tokens per workgroup, 1..8 (default min(maxTokens, 4)). */
  tokensPerWorkgroup?: number;
  /** Units (32-element pieces of a row) each thread loads before computing on them, 1, 2 or 4 (default 1). */
  unitsPerStep?: number;
  /**
   * Quantise x to int8 (per 16 values: in each workgroup's memory, or once by a pass of its own with
   * `sharedInt8`) and take the products with integer dot products where the weight type allows it
   * (`INT8_UNIT_SECTIONS` of `./matvec_units.ts`) and the workgroup memory holds it; f32 otherwise (the
   * default).
   */
  int8?: boolean;
  /**
   * With int8 input: x quantised once per step by a pass of its own before the product, into buffers every
   * workgroup reads, instead of by each workgroup into its workgroup memory (default false; see
   * `./int8_input.ts`). The same blocks either way; one more dispatch.
   */
  sharedInt8?: boolean;
  /**
   * Most workgroups launched per token group (default: one per row group). Fewer workgroups each take
   * several row groups in turn (w, w + W, …): with int8 input they quantise x once for all of them, and the
   * dispatch has no partial last wave.
   */
  maxWorkgroups?: number;
  /**
   * Sum each thread's products over its subgroup first (WGSL subgroups, one size dividing the workgroup),
   * so the workgroup reduction adds one sum per subgroup: two barriers instead of three. `"emulated"`
   * runs the same path with the subgroup sums through workgroup memory (for tests). Default false. Tested;
   * not run on a GPU yet: Deno 2.9.6 offers no subgroups on the H100.
   */
  subgroupReduce?: boolean | "emulated";
  /**
   * Issue each step's weight loads before the products of the step before, across the row groups a
   * workgroup takes in turn (with `maxWorkgroups`), so a workgroup has loads in flight while it multiplies
   * and reduces; it holds two steps of weights in registers. Default false. An experiment: not yet timed
   * on a GPU.
   */
  prefetchGroups?: boolean;
}

/**
 * An RMSNorm folded into a decode matvec and the fused matvec after it: the producer adds its products onto
 * the residual stream `y` in place and writes `y · weight` and per-workgroup sums of squares; the consumer
 * ({@link FoldedNormInput}) turns those into `rmsnorm(y) · weight`.
 */
export interface FoldedNormOutput {
  /** The next RMSNorm's weight, f32 `[rows]`. */
  weight: BufferSlice;
  /** `y · weight` (not yet divided by the RMS), f32 `[maxTokens][rows]`: the consumer's input. */
  out: BufferSlice;
  /** Σ y² per producer workgroup, f32 `[maxTokens][normPartials]`. */
  sums: BufferSlice;
}

/** Options of {@link createMatvec}. */
export interface MatvecOptions extends LinearOptions {
  /** Override constants for tuning on a given GPU. */
  tuning?: MatvecTuning;
  /** Fold the next RMSNorm in: `y += W · x` in place, then `fold.out = y · fold.weight` and the sums. */
  fold?: FoldedNormOutput;
  /**
   * Write the next product's shared int8 input as the outputs it reads (`fold.out`, else `y`) are written
   * (`./int8_input.ts`); the weight in one part, its rows in whole blocks of 16.
   */
  int8Out?: ChainedInt8;
  /** With shared int8 input (`tuning.sharedInt8`): read it as the product before wrote it, no pass of its own. */
  int8In?: ChainedInt8;
}

/** A decode matvec op; with {@link MatvecOptions.fold}, how many partial sums per token it writes. */
export interface MatvecOp extends GpuOp {
  /** Partial sums of squares per token written to `fold.sums` (0 without a fold). */
  readonly normPartials: number;
}

function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** One dispatch of a product op: the bind group of a weight part and its grid. */
export interface PartDispatch {
  /** The part's bind group. */
  group: GPUBindGroup;
  /** The grid of the part's dispatch. */
  workgroups: [number, number, number];
}

/** A product op: one kernel, dispatched once per weight part. */
export class LinearOp implements MatvecOp {
  /** Name for errors and the profiler. */
  readonly label: string;
  /** Partial sums of squares per token written for a folded norm (0 without one). */
  readonly normPartials: number;
  readonly #kernel: Kernel;
  readonly #parts: PartDispatch[];
  readonly #before?: GpuOp;

  /** An op running `kernel` once per entry of `parts`, after `before` (a pass preparing its input). */
  constructor(label: string, kernel: Kernel, parts: PartDispatch[], normPartials = 0, before?: GpuOp) {
    this.label = label;
    this.normPartials = normPartials;
    this.#kernel = kernel;
    this.#parts = parts;
    this.#before = before;
  }

  /** The grid's z of the next dispatches (the parts' own; {@link SplitKMatmulOp} picks it per step). */
  protected gridZ(part: PartDispatch): number {
    return part.workgroups[2];
  }

  /** Records the op's dispatches. */
  encode(pass: GPUComputePassEncoder): void {
    this.#before?.encode(pass);
    pass.setPipeline(this.#kernel.pipeline);
    for (const part of this.#parts) {
      pass.setBindGroup(0, part.group);
      pass.dispatchWorkgroups(part.workgroups[0], part.workgroups[1], this.gridZ(part));
    }
  }
}

function checkLinear(gpu: Gpu, op: string, options: LinearOptions): void {
  const { weight, x, y, maxTokens, step } = options;
  checkInt(op, "maxTokens", maxTokens, 1, step.maxTokens);
  checkSlice(op, "x", x, maxTokens * weight.cols * 4);
  checkSlice(op, "y", y, maxTokens * weight.rows * 4);
  checkWorkgroups(gpu, op, ceilDiv(maxTokens, 64));
}

/**
 * Creates the decode matrix-vector op: for each of the step's tokens, `y[t] = W · x[t]`. Meant for a few
 * tokens per step (it reads W once per `tokensPerWorkgroup` tokens); use {@link createMatmul} for prefill.
 * Throws an `UnsupportedError` for a weight the decode kernels cannot read (unquantised rows that are not
 * a multiple of 4 values; see `./matvec_units.ts`).
 */
export function createMatvec(gpu: Gpu, options: MatvecOptions): MatvecOp {
  const op = options.label;
  checkLinear(gpu, op, options);
  const { weight, maxTokens } = options;
  const t = options.tuning ?? {};
  checkMatvecTuningKeys(op, t);
  checkMatvecWeights(op, [weight]);
  // Defaults from an H100 sweep (Vulkan, Q4_K and Q6_K at Llama-1B/8B shapes) of the earlier 16-column
  // kernel: 64 threads and 4 rows per workgroup (128 threads for rows of 8192 columns or more) were within
  // ~15% of the best tuning on every shape. The sub-block kernel kept them, but for long rows, which now
  // take 256 threads (longRowWorkgroup); bench/matvec.ts sweeps tunings.
  const rowsPerWorkgroup = t.rowsPerWorkgroup ?? 4;
  const tokensPerWorkgroup = t.tokensPerWorkgroup ?? Math.min(maxTokens, 4);
  const workgroupSize = t.workgroupSize ??
    longRowWorkgroup(gpu, weight.cols, (rowsPerWorkgroup + 1) * tokensPerWorkgroup * 4);
  checkInt(op, "workgroupSize", workgroupSize, 32, gpu.limits.maxComputeInvocationsPerWorkgroup);
  if ((workgroupSize & (workgroupSize - 1)) !== 0) {
    throw new BadFlagError(`${op}: workgroupSize must be a power of two, got ${workgroupSize}`);
  }
  checkInt(op, "rowsPerWorkgroup", rowsPerWorkgroup, 1, 8);
  checkInt(op, "tokensPerWorkgroup", tokensPerWorkgroup, 1, 8);
  checkInt(
    op,
    "rowsPerWorkgroup × tokensPerWorkgroup",
    rowsPerWorkgroup * tokensPerWorkgroup,
    1,
    workgroupSize,
  );
  // The reduction keeps one more sum per token (a folded norm's).
  const reductionBytes = workgroupSize * (rowsPerWorkgroup + 1) * tokensPerWorkgroup * 4;
  if (reductionBytes > gpu.limits.maxComputeWorkgroupStorageSize) {
    throw new BadFlagError(
      `${op}: workgroupSize × (rowsPerWorkgroup + 1) × tokensPerWorkgroup × 4 = ${reductionBytes} bytes of workgroup ` +
        `memory, this GPU allows ${gpu.limits.maxComputeWorkgroupStorageSize}`,
    );
  }
  const int8 = int8InputFits(
    gpu,
    t.int8 ?? false,
    [weight],
    tokensPerWorkgroup,
    reductionBytes,
    t.sharedInt8,
  );
  const int8Input = int8InputParts(
    gpu,
    op,
    int8 && (t.sharedInt8 ?? false),
    options.x,
    weight.cols,
    maxTokens,
    options.step,
    options.int8In,
  );
  if (options.int8Out && weight.parts.length !== 1) {
    throw new UnsupportedError(`${op}: int8 output needs a weight in one part`);
  }
  const int8Output = int8OutputParts(op, options.int8Out, weight.rows, rowsPerWorkgroup, maxTokens);
  const fold = options.fold;
  const normPartials = fold ? ceilDiv(weight.rows, rowsPerWorkgroup) : 0;
  if (fold) {
    if (weight.parts.length !== 1) throw new BadFlagError(`${op}: a folded norm needs a weight in one part`);
    checkSlice(op, "fold.weight", fold.weight, weight.rows * 4);
    checkSlice(op, "fold.out", fold.out, maxTokens * weight.rows * 4);
    checkSlice(op, "fold.sums", fold.sums, maxTokens * normPartials * 4);
  }
  const maxPerDim = gpu.limits.maxComputeWorkgroupsPerDimension;
  const tokenGroups = ceilDiv(maxTokens, tokensPerWorkgroup);
  checkWorkgroups(gpu, op, tokenGroups);
  const workgroups = (rows: number): [number, number, number] => {
    const groups = launchedGroups(op, ceilDiv(rows, rowsPerWorkgroup), t.maxWorkgroups);
    const gx = Math.min(groups, maxPerDim);
    return [gx, ceilDiv(groups, gx), tokenGroups];
  };
  const partials = subgroupReduceParts(gpu, op, t.subgroupReduce, workgroupSize);
  const kernel = gpu.kernel(
    "matvec_fast",
    {
      cols: weight.cols,
      out_stride: weight.rows,
      row_bytes_a: weight.rowBytes,
      wg_size: workgroupSize,
      rows_per_wg: rowsPerWorkgroup,
      tokens_per_wg: tokensPerWorkgroup,
      reduce_lanes: reduceLanes(workgroupSize),
      norm_mode: fold ? 1 : 0,
      units_per_step: checkUnitsPerStep(op, t.unitsPerStep),
      norm_partials: Math.max(1, normPartials),
      x_int8: int8 ? 1 : 0,
      prefetch_groups: t.prefetchGroups ? 1 : 0,
      ...partials.constants,
    },
    {
      ...subblockDefines(weight),
      ...partials.defines,
      X_INT8: int8Input.define,
      INT8_OUT: int8Output.define,
    },
  );
  // Unused bindings get tiny placeholders (distinct: writable bindings must not alias).
  const unused = (name: string) => gpu.buffer(`${op}.${name}`, 4);
  const parts = weight.parts.map((part, i): PartDispatch => {
    const info = gpu.uniform(`${op}.part${i}`, new Uint32Array([part.rows, part.firstRow]));
    const group = bindNumbered(gpu, kernel, [
      [0, part.buffer],
      [3, options.x],
      [4, options.y],
      [7, options.step.buffer],
      [9, info],
      [11, fold?.weight ?? unused("no_norm_weight")],
      [12, fold?.out ?? unused("no_norm_out")],
      [13, fold?.sums ?? unused("no_norm_sums")],
      ...int8Input.entries,
      ...int8Output.entries,
    ]);
    return { group, workgroups: workgroups(part.rows) };
  });
  return new LinearOp(op, kernel, parts, normPartials, int8Input.pass);
}

/** Tuning knobs of the prefill kernels (WGSL override constants of `wgsl/matmul.wgsl`, every entry). */
export interface MatmulTuning {
  /**
   * Tokens per thread: 4 (64-token output tiles) or 8 (128-token tiles, twice the FMAs per workgroup-memory
   * read, half the workgroups and half the W decoding). Default: 8 when that still gives at least 256
   * workgroups (about two per SM of a large GPU) and fits the workgroup memory, else 4. 2 (32-token tiles,
   * half the accumulators of 4, twice the W decoding) is never the default: a tuning to try.
   */
  tokensPerThread?: number;
  /**
   * Columns of K staged per step, 16 or 32 (default 16 with 8 tokens per thread, else 32 where it fits the
   * workgroup memory).
   */
  kStep?: number;
  /**
   * Unroll the FMA loop over the kStep columns of a step (constant workgroup-memory offsets, room for the
   * compiler to schedule the loads ahead of the FMAs), at the cost of longer code. Default true.
   */
  unrollK?: boolean;
  /**
   * Fetch the next step's weight unit and activations into registers before the current step's FMAs, so
   * the global reads overlap them (true, the default), or after the FMAs (false: fewer registers live
   * across the FMA loop, which may allow more workgroups per SM, but the reads are no longer hidden).
   */
  prefetch?: boolean;
  /**
   * Products of f16 values (needs `shader-f16`): tiles of f16 in workgroup memory and FMAs on f16 vectors,
   * each step's kStep products summed in f16, the steps in f32. Exact for f16 weights up to the rounding of
   * the activations to f16 and of the step sums (about 1e-3 of a sum's scale). Pays only where f16
   * arithmetic runs faster than f32: on an H100 (Vulkan) it ran slower (see GpuModelOptions.halfPrefill).
   * Default false.
   */
  half?: boolean;
  /**
   * Products on the GPU's matrix units (cooperative matrices, `wgsl/matmul_coop.wgsl`): 64-token × 128-row
   * tiles of f16 values (activations and weights rounded to f16) multiplied by 16 × 16 fragments into f32
   * sums. Where the device has no working cooperative matrices (`Gpu.coopMatrix`), the same kernel runs
   * with emulated fragments: correct, far slower, for tests. The other fields do not apply. Default false.
   */
  coop?: boolean;
  /**
   * With `coop`: tokens per output tile, 64 or 128 (twice the accumulators per subgroup, half the weight
   * decoding per token). Default: 128 when that still gives at least 256 workgroups and fits the workgroup
   * memory, else 64.
   */
  coopTileTokens?: number;
}

/** The names of {@link MatmulTuning}'s fields (a tuning naming anything else is rejected). */
export const MATMUL_TUNING_KEYS: readonly string[] = [
  "tokensPerThread",
  "kStep",
  "unrollK",
  "prefetch",
  "half",
  "coop",
  "coopTileTokens",
];

/** Options of {@link createMatmul}. */
export interface MatmulOptions extends LinearOptions {
  /** Override constants for tuning on a given GPU. */
  tuning?: MatmulTuning;
  /**
   * Split K for steps of few tokens: at most this many column ranges (a power of two), each range's partial
   * sums written as part s of `y`, `[s][nTokens][rows]`, for the consumer to add up (see
   * {@link prefillKSplits} for how many a step takes, and {@link SplitKMatmulOp.splitsFor}); part s starts
   * {@link SPLIT_K_SKEW} floats past the end of part s − 1, and `y` must hold {@link splitKOutputFloats}.
   * Default 1: never. Not with cooperative matrices.
   */
  maxKSplits?: number;
  /** Workgroups a split step aims for ({@link prefillKSplits}; default {@link SPLIT_K_WORKGROUPS}). */
  kSplitWorkgroups?: number;
}

/**
 * Workgroups a prefill product aims for when it splits K: two per SM on a 128-SM GPU, about what the
 * default tile shape reaches without splitting (it picks 128-token tiles from 256 tiles on).
 */
export const SPLIT_K_WORKGROUPS = 256;

/** Floats between the parts of a split-K product's output (`SPLIT_SKEW` of `wgsl/matmul.wgsl`). */
export const SPLIT_K_SKEW = 64;

/** Floats a split-K product's output holds: `splits` parts of `maxTokens` rows of `rows`, and the skews. */
export function splitKOutputFloats(splits: number, maxTokens: number, rows: number): number {
  return splits * (maxTokens * rows + SPLIT_K_SKEW);
}

/**
 * Column ranges a split-K prefill product takes at a step of `nTokens` tokens: doubling from 1 while the
 * product's tiles (`rowTiles` × the step's token tiles of `tileTokens`) stay under `workgroups`, the parts
 * fit `capacity` tokens of output (`splits · nTokens ≤ capacity`), every range keeps 256 columns or more,
 * and up to `maxSplits`.
 */
export function prefillKSplits(
  rowTiles: number,
  tileTokens: number,
  cols: number,
  capacity: number,
  maxSplits: number,
  nTokens: number,
  workgroups: number = SPLIT_K_WORKGROUPS,
): number {
  const tiles = rowTiles * ceilDiv(nTokens, tileTokens);
  let splits = 1;
  while (
    2 * splits <= maxSplits && tiles * splits < workgroups && 2 * splits * nTokens <= capacity &&
    cols / (2 * splits) >= 256
  ) {
    splits *= 2;
  }
  return splits;
}

/** `maxKSplits` checked (an integer power of two from 1 to 64; a {@link BadFlagError} naming `label` else). */
export function checkMaxKSplits(label: string, maxKSplits: number): number {
  checkInt(label, "maxKSplits", maxKSplits, 1, 64);
  if ((maxKSplits & (maxKSplits - 1)) !== 0) {
    throw new BadFlagError(`${label}: maxKSplits must be a power of two, got ${maxKSplits}`);
  }
  return maxKSplits;
}

/** A prefill product that splits K at steps of few tokens ({@link MatmulOptions.maxKSplits}). */
export class SplitKMatmulOp extends LinearOp {
  /** The most column ranges a step takes. */
  readonly maxSplits: number;
  readonly #step: StepParams;
  readonly #rule: (nTokens: number) => number;

  /** An op running `kernel` once per part with `rule(nTokens)` splits of K (the grid's z). */
  constructor(
    label: string,
    kernel: Kernel,
    parts: PartDispatch[],
    step: StepParams,
    maxSplits: number,
    rule: (nTokens: number) => number,
  ) {
    super(label, kernel, parts);
    this.#step = step;
    this.maxSplits = maxSplits;
    this.#rule = rule;
  }

  /** Column ranges (parts of the output) at a step of `nTokens` tokens. */
  splitsFor(nTokens: number): number {
    return this.#rule(nTokens);
  }

  /** The step's splits. */
  protected override gridZ(): number {
    return this.#rule(this.#step.nTokens);
  }
}

/** What {@link productOp} needs to know of a prefill product besides its kernel and part dispatches. */
export interface ProductOpShape {
  weight: GpuWeight;
  y: BufferSlice;
  maxTokens: number;
  step: StepParams;
  /** Tokens per output tile and the most row tiles of a part. */
  tileTokens: number;
  rowTiles: number;
  /** `maxKSplits` of the product's options, checked. */
  maxSplits: number;
  /** Workgroups a split step aims for (`kSplitWorkgroups` of the options; default {@link SPLIT_K_WORKGROUPS}). */
  kSplitWorkgroups?: number;
}

/**
 * The op of a prefill product's part dispatches: a {@link LinearOp}, or, with `maxSplits` > 1, a
 * {@link SplitKMatmulOp} whose steps split K as {@link prefillKSplits} says (its `y` checked to hold the
 * parts).
 */
export function productOp(
  label: string,
  kernel: Kernel,
  parts: PartDispatch[],
  shape: ProductOpShape,
): LinearOp {
  const { weight, y, maxTokens, step, tileTokens, rowTiles, maxSplits } = shape;
  if (maxSplits === 1) return new LinearOp(label, kernel, parts);
  checkSlice(label, "y", y, splitKOutputFloats(maxSplits, maxTokens, weight.rows) * 4);
  const workgroups = shape.kSplitWorkgroups ?? SPLIT_K_WORKGROUPS;
  checkInt(label, "kSplitWorkgroups", workgroups, 1, 1 << 20);
  const rule = (n: number) =>
    prefillKSplits(rowTiles, tileTokens, weight.cols, maxSplits * maxTokens, maxSplits, n, workgroups);
  return new SplitKMatmulOp(label, kernel, parts, step, maxSplits, rule);
}

/** The tile shape and code variant a prefill kernel runs with (see {@link matmulShape}). */
export interface MatmulShape {
  /** Tokens per thread, 2, 4 or 8. */
  tokensPerThread: number;
  /** Columns of K per step, 16 or 32. */
  kStep: number;
  /** Tokens per output tile (16 · tokensPerThread). */
  tileTokens: number;
  /** Whether the FMA loop over a K step is unrolled ({@link MatmulTuning.unrollK}). */
  unrollK: boolean;
  /** Whether the next step is fetched before the FMAs ({@link MatmulTuning.prefetch}). */
  prefetch: boolean;
  /** Whether the products are of f16 values ({@link MatmulTuning.half}). */
  half: boolean;
  /** Whether the products run on cooperative matrices, `wgsl/matmul_coop.wgsl` ({@link MatmulTuning.coop}). */
  coop: boolean;
}

/**
 * Product rows per workgroup of `wgsl/matmul.wgsl`: output rows of entries `main` and `qkv`; entry `swiglu`
 * pairs 64 gate rows with the same 64 up rows, writing 64 output rows.
 */
export const MATMUL_TILE_ROWS = 128;

/**
 * Workgroup memory of the prefill kernels' tiles: X `[kStep][tileTokens]` and W `[kStep][128]`, f32 (f16
 * with `half`).
 */
export function matmulWorkgroupBytes(tokensPerThread: number, kStep: number, half = false): number {
  return kStep * (16 * tokensPerThread + MATMUL_TILE_ROWS) * (half ? 2 : 4);
}

/**
 * Workgroup memory of `wgsl/matmul_coop.wgsl` with tiles of `tileTokens` tokens: f16 tiles of the tokens ×
 * 40 values (32 columns and padding) and of 32 columns × 136 values (128 rows and padding), and 8
 * subgroups' f32 output staging of 16 × 16.
 */
export function coopMatmulWorkgroupBytes(tileTokens: number): number {
  return tileTokens * 40 * 2 + 32 * (MATMUL_TILE_ROWS + 8) * 2 + 8 * 16 * 16 * 4;
}

/**
 * Picks (or checks) the tile shape of a prefill kernel for `maxTokens` tokens and `rowTiles` output tiles
 * along the rows: the given tuning, checked, or the defaults of {@link MatmulTuning} within this GPU's
 * workgroup memory. Throws a {@link BadFlagError} naming `op` for a tuning that is invalid (an unknown
 * field, a value out of range, a non-boolean flag) or too large.
 */
export function matmulShape(
  gpu: Gpu,
  op: string,
  maxTokens: number,
  rowTiles: number,
  tuning: MatmulTuning = {},
): MatmulShape {
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const half = tuning.half ?? false;
  const fits = (t: number, k: number) => matmulWorkgroupBytes(t, k, half) <= limit;
  for (const key of Object.keys(tuning)) {
    if (!MATMUL_TUNING_KEYS.includes(key)) {
      throw new BadFlagError(
        `${op}: unknown prefill tuning field ${JSON.stringify(key)} (known: ${
          MATMUL_TUNING_KEYS.join(", ")
        })`,
      );
    }
  }
  for (
    const [what, value, allowed] of [
      ["tokensPerThread", tuning.tokensPerThread, [2, 4, 8]],
      ["kStep", tuning.kStep, [16, 32]],
    ] as const
  ) {
    if (value !== undefined && !(allowed as readonly number[]).includes(value)) {
      const list = `${allowed.slice(0, -1).join(", ")} or ${allowed[allowed.length - 1]}`;
      throw new BadFlagError(`${op}: ${what} must be ${list}, got ${JSON.stringify(value)}`);
    }
  }
  for (
    const [what, value] of [
      ["unrollK", tuning.unrollK],
      ["prefetch", tuning.prefetch],
      ["half", tuning.half],
    ] as const
  ) {
    if (value !== undefined && typeof value !== "boolean") {
      throw new BadFlagError(`${op}: ${what} must be true or false, got ${JSON.stringify(value)}`);
    }
  }
  if (half && !gpu.hasF16) {
    throw new BadFlagError(`${op}: half products need the shader-f16 feature, which this GPU does not offer`);
  }
  if (tuning.coop !== undefined && typeof tuning.coop !== "boolean") {
    throw new BadFlagError(`${op}: coop must be true or false, got ${JSON.stringify(tuning.coop)}`);
  }
  if (tuning.coopTileTokens !== undefined && ![64, 128].includes(tuning.coopTileTokens)) {
    throw new BadFlagError(
      `${op}: coopTileTokens must be 64 or 128, got ${JSON.stringify(tuning.coopTileTokens)}`,
    );
  }
  if (tuning.coop) {
    if (!gpu.hasF16) {
      throw new BadFlagError(`${op}: cooperative-matrix products need the shader-f16 feature, which is off`);
    }
    const coopFits = (t: number) => coopMatmulWorkgroupBytes(t) <= limit;
    const tileTokens = tuning.coopTileTokens ??
      (ceilDiv(maxTokens, 128) * rowTiles >= 256 && coopFits(128) ? 128 : 64);
    if (!coopFits(tileTokens)) {
      throw new BadFlagError(
        `${op}: cooperative-matrix products of ${tileTokens}-token tiles need ${
          coopMatmulWorkgroupBytes(tileTokens)
        } bytes of workgroup memory, this GPU allows ${limit}`,
      );
    }
    return {
      tokensPerThread: tileTokens / 16,
      kStep: 32,
      tileTokens,
      unrollK: false,
      prefetch: true,
      half: true,
      coop: true,
    };
  }
  let tokensPerThread = tuning.tokensPerThread;
  if (tokensPerThread === undefined) {
    const bigTiles = ceilDiv(maxTokens, 128) * rowTiles;
    tokensPerThread = bigTiles >= 256 && fits(8, tuning.kStep ?? 16) ? 8 : 4;
  }
  // H100 sweep (bench/results/h100-matmul-variants.json, 8B shapes, 512 tokens): unrolled, 8 tokens per
  // thread with 16 columns per step ran the fused gate/up (896 tiles of 128 tokens) at 29-31 TFLOP/s (17.8
  // before unrolling, with 32 columns); ffn_down (128 such tiles, under one per SM) ran best with 4 tokens
  // × 32 columns, 5-10% ahead of 8 × 16.
  // Half tiles take half the memory: 32 columns per step fit with 8 tokens per thread (16 KB).
  const kStep = tuning.kStep ??
    ((tokensPerThread === 8 && !half) || !fits(tokensPerThread, 32) ? 16 : 32);
  const bytes = matmulWorkgroupBytes(tokensPerThread, kStep, half);
  if (bytes > limit) {
    throw new BadFlagError(
      `${op}: tokensPerThread ${tokensPerThread} with kStep ${kStep} needs ${bytes} bytes of workgroup ` +
        `memory, this GPU allows ${limit}`,
    );
  }
  return {
    tokensPerThread,
    kStep,
    tileTokens: 16 * tokensPerThread,
    unrollK: tuning.unrollK ?? true,
    prefetch: tuning.prefetch ?? true,
    half,
    coop: false,
  };
}

/** The prefill kernel of `shape`: `wgsl/matmul_coop.wgsl` on cooperative matrices, else `wgsl/matmul.wgsl`. */
export function matmulKernelName(shape: MatmulShape): string {
  return shape.coop ? "matmul_coop" : "matmul";
}

/** The override constants of the prefill kernel (every entry) for `shape`. */
export function matmulConstants(shape: MatmulShape): Record<string, number> {
  if (shape.coop) {
    const t = shape.tileTokens;
    return { tile_tokens: t, token_blocks: t / 32, x_per_thread: t / 8 };
  }
  return {
    tokens_per_thread: shape.tokensPerThread,
    k_step: shape.kStep,
    prefetch: shape.prefetch ? 1 : 0,
    unroll_k: shape.unrollK ? 1 : 0,
  };
}

/**
 * Creates the prefill matrix-matrix op: `Y = X · Wᵀ` for the step's tokens, in output tiles of 128 rows ×
 * 64 or 128 tokens (32 when tuned so; see {@link MatmulTuning}).
 */
export function createMatmul(gpu: Gpu, options: MatmulOptions): GpuOp {
  const op = options.label;
  checkLinear(gpu, op, options);
  const { weight, maxTokens } = options;
  const maxRowTiles = Math.max(...weight.parts.map((part) => ceilDiv(part.rows, MATMUL_TILE_ROWS)));
  const shape = matmulShape(gpu, op, maxTokens, maxRowTiles, options.tuning);
  const kernel = gpu.kernel(
    matmulKernelName(shape),
    matmulConstants(shape),
    matmulDefines(gpu, shape, weight, weight, weight),
  );
  const tokenTiles = ceilDiv(maxTokens, shape.tileTokens);
  checkWorkgroups(gpu, op, tokenTiles);
  const { x, y, step, label } = options;
  // Bindings 7 and 8 (entry qkv's K and V outputs) are unused here: tiny placeholders, distinct since
  // writable bindings must not alias.
  const unusedK = gpu.buffer(`${label} unused K output`, 4);
  const unusedV = gpu.buffer(`${label} unused V output`, 4);
  const parts = weight.parts.map((part, i): PartDispatch => {
    checkWorkgroups(gpu, op, ceilDiv(part.rows, MATMUL_TILE_ROWS));
    const info = partUniform(gpu, label, weight, i);
    // The part's rows go through copy _a; the other two weight bindings repeat it (unread).
    const group = bindNumbered(gpu, kernel, [
      [0, part.buffer],
      [5, part.buffer],
      [6, part.buffer],
      [1, x],
      [2, y],
      [7, unusedK],
      [8, unusedV],
      [3, step.buffer],
      [4, info],
    ]);
    return { group, workgroups: [ceilDiv(part.rows, MATMUL_TILE_ROWS), tokenTiles, 1] };
  });
  const maxSplits = shape.coop ? 1 : checkMaxKSplits(op, options.maxKSplits ?? 1);
  return productOp(op, kernel, parts, {
    weight,
    y,
    maxTokens,
    step,
    tileTokens: shape.tileTokens,
    rowTiles: maxRowTiles,
    maxSplits,
    kSplitWorkgroups: options.kSplitWorkgroups,
  });
}

/** What the Q, K and V products of one layer bind, for prefill ({@link createQkvMatmul}) and decode. */
export interface QkvProductOptions {
  /** Name for errors and the profiler, e.g. "blk.0.attn_qkv". */
  label: string;
  /** Query weight, ggml shape `[cols, qRows]`. */
  wq: GpuWeight;
  /** Key weight, ggml shape `[cols, kRows]`. */
  wk: GpuWeight;
  /** Value weight, ggml shape `[cols, vRows]`. */
  wv: GpuWeight;
  /** Input activations, f32 `[maxTokens][cols]`. */
  x: BufferSlice;
  /** Query output, f32 `[maxTokens][qRows]`. */
  q: BufferSlice;
  /** Key output, f32 `[maxTokens][kRows]`. */
  k: BufferSlice;
  /** Value output, f32 `[maxTokens][vRows]`. */
  v: BufferSlice;
  /** Largest number of tokens per step; dispatches are sized for it. At most `step.maxTokens`. */
  maxTokens: number;
  /** Per-step token count (`nTokens`) and first position (`pos0`). */
  step: StepParams;
}

/** Options of {@link createQkvMatmul}: the three weights of the same width, each in one part. */
export interface QkvMatmulOptions extends QkvProductOptions {
  /** Tile shape (see {@link MatmulTuning}). */
  tuning?: MatmulTuning;
}

/** Why Q, K and V cannot go through {@link createQkvMatmul} (a one-line reason), or undefined when they can. */
export function qkvMatmulBlocker(wq: GpuWeight, wk: GpuWeight, wv: GpuWeight): string | undefined {
  for (const w of [wq, wk, wv]) {
    if (w.parts.length !== 1) return `${w.name} is split into ${w.parts.length} parts`;
    if (w.cols !== wq.cols) return `${w.name} has rows of ${w.cols} values, ${wq.name} of ${wq.cols}`;
  }
  return undefined;
}

/**
 * Creates the prefill product of attention's Q, K and V weights with the same input in one dispatch
 * (`wgsl/matmul.wgsl`, entry `qkv`): the row tiles of the three weights side by side, each in its own type,
 * each writing its own output. K and V have few rows (a quarter of Q's or less with GQA): alone they would
 * occupy a fraction of a large GPU. Throws an {@link UnsupportedError} when {@link qkvMatmulBlocker} says so.
 */
export function createQkvMatmul(gpu: Gpu, options: QkvMatmulOptions): GpuOp {
  const { label, wq, wk, wv, x, q, k, v, maxTokens, step } = options;
  const blocker = qkvMatmulBlocker(wq, wk, wv);
  if (blocker) throw new UnsupportedError(`${label}: cannot fuse Q, K and V: ${blocker}`);
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  checkSlice(label, "x", x, maxTokens * wq.cols * 4);
  checkSlice(label, "q", q, maxTokens * wq.rows * 4);
  checkSlice(label, "k", k, maxTokens * wk.rows * 4);
  checkSlice(label, "v", v, maxTokens * wv.rows * 4);
  const rowTiles = [wq, wk, wv].reduce((n, w) => n + ceilDiv(w.rows, MATMUL_TILE_ROWS), 0);
  const shape = matmulShape(gpu, label, maxTokens, rowTiles, options.tuning);
  const tokenTiles = ceilDiv(maxTokens, shape.tileTokens);
  checkWorkgroups(gpu, label, Math.max(rowTiles, tokenTiles));
  const kernel = gpu.kernel(
    matmulKernelName(shape),
    {
      ...matmulConstants(shape),
      rows_a: wq.rows,
      rows_b: wk.rows,
      rows_c: wv.rows,
      row_bytes_a: wq.rowBytes,
      row_bytes_b: wk.rowBytes,
      row_bytes_c: wv.rowBytes,
    },
    matmulDefines(gpu, shape, wq, wk, wv),
    "qkv",
  );
  const info = gpu.uniform(`${label}.cols`, new Uint32Array([0, 0, 0, wq.cols, 0]));
  const group = bindNumbered(gpu, kernel, [
    [0, wq.parts[0].buffer],
    [5, wk.parts[0].buffer],
    [6, wv.parts[0].buffer],
    [1, x],
    [2, q],
    [7, k],
    [8, v],
    [3, step.buffer],
    [4, info],
  ]);
  return new LinearOp(label, kernel, [{ group, workgroups: [rowTiles, tokenTiles, 1] }]);
}

/**
 * The text defines of the prefill kernel for `shape`: the three dequantisation copies it splices in (names
 * suffixed _a, _b, _c) for weights `a`, `b` and `c`, and `wgsl/matmul.wgsl`'s arithmetic (f32 or f16
 * products) or `wgsl/matmul_coop.wgsl`'s fragments (the device's cooperative matrices, or the emulated
 * ones where it has none).
 */
export function matmulDefines(
  gpu: Gpu,
  shape: MatmulShape,
  a: GpuWeight,
  b: GpuWeight,
  c: GpuWeight,
): Record<string, string> {
  const dequant = {
    DEQUANT_A: suffixedDequantSource(a.info.name, "a"),
    DEQUANT_B: suffixedDequantSource(b.info.name, "b"),
    DEQUANT_C: suffixedDequantSource(c.info.name, "c"),
  };
  if (shape.coop) {
    const coop = gpu.coopMatrix ?? EMULATED_COOP_MATRIX;
    // The hardware fragments name the device's row-major builtins (see src/gpu/coop_probe.ts).
    const fragments = coop.emulated
      ? loadShader("coop_fragments_emulated")
      : loadShader("coop_fragments").replaceAll("{{LOAD_ROW_MAJOR}}", coop.loadRowMajor)
        .replaceAll("{{STORE_ROW_MAJOR}}", coop.storeRowMajor);
    return {
      ENABLE: coop.emulated ? "enable f16;" : "enable f16;\nenable wgpu_cooperative_matrix;",
      FRAGMENTS: fragments,
      ...dequant,
    };
  }
  return {
    ENABLE_F16: shape.half ? "enable f16;" : "",
    HALF: String(shape.half),
    TILE_SCALAR: shape.half ? "f16" : "f32",
    ...dequant,
  };
}

/**
 * Threads per workgroup of a single decode product (createMatvec) for rows of `cols` values, each thread's
 * share of the reduction `bytesPerThread`: 256 for rows of 8192 values and more (Llama's ffn_down), as
 * far as the GPU's workgroup memory holds the reduction, else {@link defaultMatvecWorkgroup}. On an H100 the
 * 8B Q4_K_M decoded at 236.6 / 210.1 tok/s (depth 0 / 4096) against 233.7–234.0 / 207.5–207.9 with 128
 * threads, the 1B at 919.9 / 771.2 against 898.2 / 759.1; `bench:matvec` timed the 8B ffn_down at 26.9
 * against 31.3 µs in Q4_K and alike in Q6_K (`h100-ffn-down-workgroup-256.json`).
 */
export function longRowWorkgroup(gpu: Gpu, cols: number, bytesPerThread: number): number {
  const fits = 256 * bytesPerThread <= gpu.limits.maxComputeWorkgroupStorageSize &&
    256 <= gpu.limits.maxComputeInvocationsPerWorkgroup;
  return cols >= 8192 && fits ? 256 : defaultMatvecWorkgroup(cols);
}

/** Default threads per workgroup of the decode matvec kernels for rows of `cols` values (see createMatvec). */
export function defaultMatvecWorkgroup(cols: number): number {
  return Math.min(cols >= 8192 ? 128 : 64, Math.max(32, nextPowerOfTwo(ceilDiv(cols, 16))));
}
