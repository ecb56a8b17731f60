/**
 * Fused decode ops (`wgsl/matvec_fast.wgsl`, see `./matvec_units.ts`): several matrix-vector products over
 * the same activations in one dispatch, with the element-wise step after them applied before the single
 * write. Each dispatch removed saves its fixed launch cost, which at one token per step is comparable to
 * streaming the weights.
 *
 * - {@link createGateUpSwiGlu}: `out = silu(x · W_gateᵀ) · (x · W_upᵀ)`, replacing two matvecs and SwiGLU.
 * - {@link createQkvMatvec}: `q, k, v = x · W_qᵀ, x · W_kᵀ, x · W_vᵀ`, optionally with RoPE on q and k,
 *   replacing three matvecs and RoPE, and with `append` also storing K and V into the paged KV cache
 *   (replacing the KV append, see `./qkv_kv_store.ts`). The three weights may have different GGUF types.
 * - {@link createGateUpSwiGluMatmul}: the gate/up + SwiGLU fusion for prefill (`wgsl/matmul.wgsl`, entry
 *   `swiglu`, tiled), replacing two matmuls and SwiGLU and the round trip of the gate and up activations.
 *
 * The fused ops need each weight in one buffer (a single {@link GpuWeight.parts} entry) and weights of
 * the same row length; {@link canFuseGateUp} and {@link canFuseQkv} say whether a set qualifies, and the
 * factories throw an {@link UnsupportedError} naming the tensors when it does not, so callers can fall
 * back to `createMatvec` + `createSwiGlu` / `createRope`. The decode factories also throw one for weights
 * no decode kernel reads (unquantised rows that are not a multiple of 4 values), as `createMatvec` does.
 *
 * @module
 */

import {
  defaultMatvecWorkgroup,
  MATMUL_TILE_ROWS,
  matmulConstants,
  matmulDefines,
  matmulKernelName,
  matmulShape,
  type MatmulTuning,
  type QkvProductOptions,
} from "./matmul.ts";
import { BadFlagError, UnsupportedError } from "../../errors.ts";
import type { Gpu, Kernel } from "../device.ts";
import { dequantSource, type GpuWeight } from "../weights.ts";
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
import { ropeTurnTable } from "./rope.ts";
import { type ChainedInt8, type Int8InputParts, int8InputParts, int8OutputParts } from "./int8_input.ts";
import { type QkvKvAppend, qkvKvAppendBlocker, qkvKvStoreParts } from "./qkv_kv_store.ts";
import {
  checkMatvecTuningKeys,
  checkMatvecWeights,
  checkUnitsPerStep,
  int8InputBytes,
  int8InputFits,
  int8MatvecBlocker,
  launchedGroups,
  reduceLanes,
  subblockDefines,
  subgroupReduceParts,
} from "./matvec_units.ts";

/** Tuning knobs of the fused decode kernels (WGSL override constants). */
export interface FusedMatvecTuning {
  /** Threads per workgroup, a power of two in [32, 1024] (default: cols / 16 rounded up, within [32, 256]). */
  workgroupSize?: number;
  /**
   * Output rows per workgroup, 1..8 (even for QKV with RoPE). Defaults: gate/up 1, or 2 from 8192 rows;
   * QKV 2, or 4 from 8192 rows in all.
   */
  rowsPerWorkgroup?: number;
  /** Tokens per workgroup, 1..8 (default min(maxTokens, 4)). */
  tokensPerWorkgroup?: number;
  /** Units (32-element pieces of a row) each thread loads before computing on them, 1, 2 or 4 (default 1). */
  unitsPerStep?: number;
  /**
   * Quantise x to int8 (per 16 values: in each workgroup's memory, or once by a pass of its own with
   * `sharedInt8`) and take the products with integer dot products where every weight's type allows it and
   * the workgroup memory holds it; f32 otherwise (the default).
   */
  int8?: boolean;
  /** With int8 input: x quantised once per step by a pass of its own, as `MatvecTuning.sharedInt8`. */
  sharedInt8?: boolean;
  /** Most workgroups launched per token group, as `MatvecTuning.maxWorkgroups` (default: one per row group). */
  maxWorkgroups?: number;
  /** Each workgroup's sums added per subgroup first, as `MatvecTuning.subgroupReduce` (default false). */
  subgroupReduce?: boolean | "emulated";
  /** Gate/up only: weight loads a step ahead, as `MatvecTuning.prefetchGroups` (default false). */
  prefetchGroups?: boolean;
}

/**
 * The consumer side of an RMSNorm folded into the decode matvec before (see `FoldedNormOutput` in
 * `./matmul.ts`): `x` is the residual stream times the norm weight, not yet divided by its RMS, which comes
 * from the producer's per-workgroup sums of squares.
 */
export interface FoldedNormInput {
  /** Σ y² per producer workgroup, f32 `[maxTokens][partials]`. */
  sums: BufferSlice;
  /** Partial sums per token (the producer's `normPartials`). */
  partials: number;
  /** Values per normed row (the hidden size). */
  width: number;
  /** The norm's epsilon. */
  eps: number;
}

/** Override constants and the sums binding of a folded norm's consumer (placeholders without one). */
function normInputParts(
  gpu: Gpu,
  label: string,
  maxTokens: number,
  norm?: FoldedNormInput,
): { constants: Record<string, number>; sums: BufferSlice } {
  if (!norm) return { constants: { norm_mode: 0 }, sums: gpu.buffer(`${label}.no_norm_sums`, 4) };
  checkInt(label, "norm.partials", norm.partials, 1);
  checkInt(label, "norm.width", norm.width, 1);
  checkSlice(label, "norm.sums", norm.sums, maxTokens * norm.partials * 4);
  return {
    constants: { norm_mode: 2, norm_partials: norm.partials, norm_width: norm.width, norm_eps: norm.eps },
    sums: norm.sums,
  };
}

/** Options of {@link createGateUpSwiGlu}. */
export interface GateUpSwiGluOptions {
  /** Name for errors and the profiler, e.g. "blk.0.ffn_gate_up". */
  label: string;
  /** The gate weight, ggml shape `[cols, rows]`. */
  gate: GpuWeight;
  /** The up weight: same type and shape as `gate`. */
  up: GpuWeight;
  /** Input activations, f32 `[maxTokens][cols]`. */
  x: BufferSlice;
  /** Output `silu(gate) · up`, f32 `[maxTokens][rows]`. */
  out: BufferSlice;
  /** Largest number of tokens per step; dispatches are sized for it. At most `step.maxTokens`. */
  maxTokens: number;
  /** Per-step token count (`nTokens`). */
  step: StepParams;
  /** Override constants for tuning on a given GPU. */
  tuning?: FusedMatvecTuning;
  /** `x` is the residual times the norm weight; the RMS comes from the producer's sums. */
  norm?: FoldedNormInput;
  /** With shared int8 input (`tuning.sharedInt8`): read it as the product before wrote it, no pass of its own. */
  int8In?: ChainedInt8;
  /** Write the next product's shared int8 input (of `out`) as `out` is written (`./int8_input.ts`). */
  int8Out?: ChainedInt8;
}

/** RoPE applied by {@link createQkvMatvec} to Q and K as they are written (GGUF adjacent-pair layout). */
export interface QkvRope {
  /** Values per head (Q and K rows are whole heads). */
  headDim: number;
  /** Leading values of each head that are rotated (default headDim). */
  ropeDim?: number;
  /** Per-pair inverse frequencies (ropeDim / 2), as for `createRope`. */
  invFreq: Float32Array;
  /** Positions stay below this (the context length); sets the precision split of the angle table. */
  maxPosition: number;
}

/** Options of {@link createQkvMatvec}. */
export interface QkvMatvecOptions extends QkvProductOptions {
  /** When given, q and k are rotated at positions `step.pos0 + t` before they are written. */
  rope?: QkvRope;
  /** When given, K is also written here before RoPE, f32 `[maxTokens][kRows]` (the write gate reads both). */
  kPre?: BufferSlice;
  /**
   * When given, K and V are also stored, as f16, into this layer of the paged KV cache for the step's
   * tokens, exactly as `createKvAppend` would (so decode needs no append dispatch); the cache's lengths
   * must already count the step's tokens. K and V must be whole heads of the cache and the cache's
   * bindings must fit: see `qkvKvAppendBlocker` in `./qkv_kv_store.ts`. With RoPE, `rope.headDim` must be
   * the cache's.
   */
  append?: QkvKvAppend;
  /** `x` is the residual times the norm weight; the RMS comes from the producer's sums. */
  norm?: FoldedNormInput;
  /** Override constants for tuning on a given GPU. */
  tuning?: FusedMatvecTuning;
  /** With shared int8 input (`tuning.sharedInt8`): read it as the product before wrote it, no pass of its own. */
  int8In?: ChainedInt8;
}

/**
 * Why `gate` and `up` cannot go through {@link createGateUpSwiGlu} (a one-line reason naming the
 * tensors), or undefined when they can.
 */
export function gateUpFusionBlocker(gate: GpuWeight, up: GpuWeight): string | undefined {
  if (gate.type !== up.type) {
    return `${gate.name} is ${gate.info.name} but ${up.name} is ${up.info.name}`;
  }
  if (gate.cols !== up.cols || gate.rows !== up.rows) {
    return `${gate.name} is [${gate.cols}, ${gate.rows}] but ${up.name} is [${up.cols}, ${up.rows}]`;
  }
  return splitBlocker([gate, up]);
}

/** Whether {@link createGateUpSwiGlu} accepts `gate` and `up` (same type and shape, one buffer each). */
export function canFuseGateUp(gate: GpuWeight, up: GpuWeight): boolean {
  return gateUpFusionBlocker(gate, up) === undefined;
}

/**
 * Why `wq`, `wk`, `wv` cannot go through {@link createQkvMatvec} (a one-line reason naming the tensors),
 * or undefined when they can. Types may differ; row lengths must agree.
 */
export function qkvFusionBlocker(wq: GpuWeight, wk: GpuWeight, wv: GpuWeight): string | undefined {
  for (const w of [wk, wv]) {
    if (w.cols !== wq.cols) return `${wq.name} has rows of ${wq.cols} but ${w.name} of ${w.cols}`;
  }
  return splitBlocker([wq, wk, wv]);
}

/** Whether {@link createQkvMatvec} accepts the three weights (equal row lengths, one buffer each). */
export function canFuseQkv(wq: GpuWeight, wk: GpuWeight, wv: GpuWeight): boolean {
  return qkvFusionBlocker(wq, wk, wv) === undefined;
}

function splitBlocker(weights: GpuWeight[]): string | undefined {
  const split = weights.find((w) => w.parts.length !== 1);
  return split && `${split.name} is split into ${split.parts.length} buffers`;
}

/**
 * Builds the fused FFN input op: for each of the step's tokens t and each row i,
 * `out[t][i] = silu(W_gate[i] · x[t]) · (W_up[i] · x[t])`, in one dispatch. Throws an
 * {@link UnsupportedError} when {@link canFuseGateUp} is false or no decode kernel reads the weights.
 */
export function createGateUpSwiGlu(gpu: Gpu, options: GateUpSwiGluOptions): GpuOp {
  const { label, gate, up, x, out, maxTokens, step } = options;
  const blocker = gateUpFusionBlocker(gate, up);
  if (blocker) throw new UnsupportedError(`${label}: cannot fuse gate and up: ${blocker}`);
  checkMatvecWeights(label, [gate, up]);
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  checkSlice(label, "x", x, maxTokens * gate.cols * 4);
  checkSlice(label, "out", out, maxTokens * gate.rows * 4);
  const shape = tuningFor(gpu, label, {
    weights: [gate, up],
    cols: gate.cols,
    totalRows: gate.rows,
    accumulators: 2,
    maxTokens,
    defaultRows: 4, // an H100 sweep: 64 threads × 4 rows ran gate/up 2.7× faster than 256 × 2
    evenRows: false,
    tuning: options.tuning,
  });
  const norm = normInputParts(gpu, label, maxTokens, options.norm);
  const partials = subgroupReduceParts(gpu, label, options.tuning?.subgroupReduce, shape.workgroupSize);
  const int8Input = sharedInt8Parts(gpu, label, shape.int8, options, x, gate.cols, maxTokens, step);
  const int8Output = int8OutputParts(label, options.int8Out, gate.rows, shape.rowsPerWorkgroup, maxTokens);
  const kernel = gpu.kernel(
    "matvec_fast",
    {
      ...norm.constants,
      ...partials.constants,
      cols: gate.cols,
      rows_a: gate.rows,
      row_bytes_a: gate.rowBytes,
      row_bytes_b: up.rowBytes,
      wg_size: shape.workgroupSize,
      rows_per_wg: shape.rowsPerWorkgroup,
      tokens_per_wg: shape.tokensPerWorkgroup,
      reduce_lanes: reduceLanes(shape.workgroupSize),
      slots: 2,
      units_per_step: shape.unitsPerStep,
      x_int8: shape.int8 ? 1 : 0,
      prefetch_groups: options.tuning?.prefetchGroups ? 1 : 0,
    },
    {
      ...subblockDefines(gate, up),
      ...partials.defines,
      X_INT8: int8Input.define,
      INT8_OUT: int8Output.define,
    },
    "swiglu",
  );
  const group = bindNumbered(gpu, kernel, [
    [0, gate.parts[0].buffer],
    [1, up.parts[0].buffer],
    [3, x],
    [4, out],
    [7, step.buffer],
    [13, norm.sums],
    ...int8Input.entries,
    ...int8Output.entries,
    // int8_out's next_input also names `main`'s norm_x (binding 12), unread here: a placeholder.
    ...(options.int8Out ? [[12, gpu.buffer(`${label}.no_norm_x`, 4)] as [number, BufferSlice]] : []),
  ]);
  const groups = launchedGroups(
    label,
    ceilDiv(gate.rows, shape.rowsPerWorkgroup),
    options.tuning?.maxWorkgroups,
  );
  const grid = grid2d(gpu, label, groups, shape.tokenGroups);
  return new FusedOp(label, kernel, group, grid, int8Input.pass);
}

/** Options of {@link createGateUpSwiGluMatmul}: those of {@link createGateUpSwiGlu}, with the prefill tuning. */
export interface GateUpSwiGluMatmulOptions extends Omit<GateUpSwiGluOptions, "tuning" | "norm"> {
  /** Override constants for tuning on a given GPU (tile shape of `wgsl/matmul.wgsl`). */
  tuning?: MatmulTuning;
}

/**
 * Builds the prefill form of {@link createGateUpSwiGlu}: `out = silu(X · W_gateᵀ) · (X · W_upᵀ)` for the
 * step's tokens in output tiles of 64 rows × 64 or 128 tokens (32 when tuned so), one dispatch. Throws an
 * {@link UnsupportedError} when {@link canFuseGateUp} is false.
 */
export function createGateUpSwiGluMatmul(gpu: Gpu, options: GateUpSwiGluMatmulOptions): GpuOp {
  const { label, gate, up, x, out, maxTokens, step } = options;
  const blocker = gateUpFusionBlocker(gate, up);
  if (blocker) throw new UnsupportedError(`${label}: cannot fuse gate and up: ${blocker}`);
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  checkSlice(label, "x", x, maxTokens * gate.cols * 4);
  checkSlice(label, "out", out, maxTokens * gate.rows * 4);
  // Each workgroup's 128-row product tile holds 64 gate rows, then the same 64 up rows.
  const rowsPerTile = MATMUL_TILE_ROWS / 2;
  const rowTiles = ceilDiv(gate.rows, rowsPerTile);
  const shape = matmulShape(gpu, label, maxTokens, rowTiles, options.tuning);
  const kernel = gpu.kernel(
    matmulKernelName(shape),
    {
      ...matmulConstants(shape),
      rows_a: gate.rows,
      row_bytes_a: gate.rowBytes,
      row_bytes_b: up.rowBytes,
    },
    // The gate through copy _a, up through _b; binding W_c repeats the gate (unread).
    matmulDefines(gpu, shape, gate, up, gate),
    "swiglu",
  );
  const info = gpu.uniform(`${label}.cols`, new Uint32Array([0, 0, 0, gate.cols, 0]));
  // The K and V outputs of entry `qkv` get placeholders (distinct: writable bindings must not alias).
  const group = bindNumbered(gpu, kernel, [
    [0, gate.parts[0].buffer],
    [5, up.parts[0].buffer],
    [6, gate.parts[0].buffer],
    [1, x],
    [2, out],
    [7, gpu.buffer(`${label}.no_y_b`, 4)],
    [8, gpu.buffer(`${label}.no_y_c`, 4)],
    [3, step.buffer],
    [4, info],
  ]);
  const tokenTiles = ceilDiv(maxTokens, shape.tileTokens);
  checkWorkgroups(gpu, label, rowTiles);
  checkWorkgroups(gpu, label, tokenTiles);
  return new FusedOp(label, kernel, group, [rowTiles, tokenTiles, 1]);
}

/**
 * Builds the fused attention input op: `q, k, v = W_q · x[t], W_k · x[t], W_v · x[t]` for each of the
 * step's tokens in one dispatch, optionally rotating q and k (RoPE at position `step.pos0 + t`) as they
 * are written and storing K and V into the paged KV cache (`append`). Throws an {@link UnsupportedError}
 * when {@link canFuseQkv} is false, no decode kernel reads the weights, or the append does not apply.
 */
export function createQkvMatvec(gpu: Gpu, options: QkvMatvecOptions): GpuOp {
  const { label, wq, wk, wv, x, q, k, v, maxTokens, step, rope } = options;
  const blocker = qkvFusionBlocker(wq, wk, wv);
  if (blocker) throw new UnsupportedError(`${label}: cannot fuse Q, K and V: ${blocker}`);
  checkMatvecWeights(label, [wq, wk, wv]);
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  checkSlice(label, "x", x, maxTokens * wq.cols * 4);
  checkSlice(label, "q", q, maxTokens * wq.rows * 4);
  checkSlice(label, "k", k, maxTokens * wk.rows * 4);
  checkSlice(label, "v", v, maxTokens * wv.rows * 4);
  if (options.kPre) checkSlice(label, "kPre", options.kPre, maxTokens * wk.rows * 4);
  const append = options.append;
  if (append) {
    checkInt(label, "append.layer", append.layer, 0, append.kv.layers - 1);
    const appendBlocker = qkvKvAppendBlocker(gpu.limits, append.kv, wk, wv);
    if (appendBlocker) {
      throw new UnsupportedError(`${label}: cannot append to the KV cache: ${appendBlocker}`);
    }
    if (rope && rope.headDim !== append.kv.headDim) {
      throw new BadFlagError(
        `${label}: rope.headDim ${rope.headDim} is not the KV cache's ${append.kv.headDim}`,
      );
    }
    // A workgroup stores whole f16 pairs of rows.
    const rows = options.tuning?.rowsPerWorkgroup;
    if (rows !== undefined && rows % 2 !== 0) {
      throw new BadFlagError(`${label}: rowsPerWorkgroup must be even with the KV append, got ${rows}`);
    }
  }
  const totalRows = wq.rows + wk.rows + wv.rows;
  const shape = tuningFor(gpu, label, {
    weights: [wq, wk, wv],
    cols: wq.cols,
    totalRows,
    accumulators: 1,
    maxTokens,
    defaultRows: 4,
    evenRows: rope !== undefined || append !== undefined,
    tuning: options.tuning,
  });
  // Values per head: RoPE's, and the cache's page layout with the append.
  let headDim = append?.kv.headDim ?? 2;
  let ropePairs = 0;
  let turns: { data: Float32Array; chunks: number } = { data: new Float32Array(4), chunks: 1 };
  if (rope) {
    headDim = rope.headDim;
    const ropeDim = rope.ropeDim ?? headDim;
    checkInt(label, "rope.headDim", headDim, 2);
    if (headDim % 2 !== 0) throw new BadFlagError(`${label}: rope.headDim must be even, got ${headDim}`);
    checkInt(label, "rope.ropeDim", ropeDim, 2, headDim);
    if (ropeDim % 2 !== 0) throw new BadFlagError(`${label}: rope.ropeDim must be even, got ${ropeDim}`);
    if (rope.invFreq.length !== ropeDim / 2) {
      throw new BadFlagError(`${label}: ${rope.invFreq.length} inverse frequencies for ropeDim ${ropeDim}`);
    }
    for (const w of [wq, wk]) {
      if (w.rows % headDim !== 0) {
        throw new BadFlagError(`${label}: ${w.name} has ${w.rows} rows, not whole heads of ${headDim}`);
      }
    }
    ropePairs = ropeDim / 2;
    turns = ropeTurnTable(rope.invFreq, rope.maxPosition);
  }
  if (options.tuning?.prefetchGroups) {
    throw new BadFlagError(`${label}: prefetchGroups is for single products and gate/up, not QKV`);
  }
  const turnsBuffer = gpu.buffer(`${label}.turns`, turns.data.byteLength, turns.data);
  const norm = normInputParts(gpu, label, maxTokens, options.norm);
  const kvStore = qkvKvStoreParts(gpu, label, append);
  const partials = subgroupReduceParts(gpu, label, options.tuning?.subgroupReduce, shape.workgroupSize);
  const int8Input = sharedInt8Parts(gpu, label, shape.int8, options, x, wq.cols, maxTokens, step);
  const kernel = gpu.kernel(
    "matvec_fast",
    {
      ...norm.constants,
      ...kvStore.constants,
      ...partials.constants,
      cols: wq.cols,
      rows_a: wq.rows,
      rows_b: wk.rows,
      rows_c: wv.rows,
      row_bytes_a: wq.rowBytes,
      row_bytes_b: wk.rowBytes,
      row_bytes_c: wv.rowBytes,
      wg_size: shape.workgroupSize,
      rows_per_wg: shape.rowsPerWorkgroup,
      tokens_per_wg: shape.tokensPerWorkgroup,
      head_dim: headDim,
      rope_pairs: ropePairs,
      n_chunks: turns.chunks,
      keep_pre_k: options.kPre ? 1 : 0,
      reduce_lanes: reduceLanes(shape.workgroupSize),
      units_per_step: shape.unitsPerStep,
      x_int8: shape.int8 ? 1 : 0,
    },
    {
      ...subblockDefines(wq, wk, wv),
      KV_STORE: kvStore.source,
      ...partials.defines,
      X_INT8: int8Input.define,
    },
    "qkv",
  );
  const group = bindNumbered(gpu, kernel, [
    [0, wq.parts[0].buffer],
    [1, wk.parts[0].buffer],
    [2, wv.parts[0].buffer],
    [3, x],
    [4, q],
    [5, k],
    [6, v],
    [7, step.buffer],
    [8, turnsBuffer],
    [10, options.kPre ?? gpu.buffer(`${label}.no_k_pre`, 4)],
    [13, norm.sums],
    ...kvStore.entries,
    ...int8Input.entries,
  ]);
  const per = shape.rowsPerWorkgroup;
  const groups = launchedGroups(
    label,
    ceilDiv(wq.rows, per) + ceilDiv(wk.rows, per) + ceilDiv(wv.rows, per),
    options.tuning?.maxWorkgroups,
  );
  return new FusedOp(label, kernel, group, grid2d(gpu, label, groups, shape.tokenGroups), int8Input.pass);
}

/**
 * WGSL of the dequantisation library for type `typeName` with every name it declares (functions,
 * constants) and the weight binding `W` suffixed by `_<suffix>`, so that several copies, each reading
 * its own binding `W_<suffix>`, can live in one shader. `cols` stays shared.
 */
export function suffixedDequantSource(typeName: string, suffix: string): string {
  return suffixedWeightSource(dequantSource(typeName), suffix);
}

/**
 * `source` (WGSL reading a weight binding `W`) with `W` and every function and constant it declares renamed
 * `<name>_<suffix>`, so that copies for several weights can sit in one kernel (structs keep their names:
 * the kernel declares them once).
 */
export function suffixedWeightSource(source: string, suffix: string): string {
  const names = new Set<string>(["W"]);
  for (const match of source.matchAll(/\b(?:fn|const)\s+(\w+)/g)) names.add(match[1]);
  const pattern = new RegExp(`\\b(?:${[...names].join("|")})\\b`, "g");
  return source.replace(pattern, (name) => `${name}_${suffix}`);
}

/** The int8 input parts of a fused product: shared where its tuning asks and it takes int8 input at all. */
function sharedInt8Parts(
  gpu: Gpu,
  label: string,
  int8: boolean,
  options: { tuning?: FusedMatvecTuning; int8In?: ChainedInt8 },
  x: BufferSlice,
  cols: number,
  maxTokens: number,
  step: StepParams,
): Int8InputParts {
  const shared = int8 && (options.tuning?.sharedInt8 ?? false);
  return int8InputParts(gpu, label, shared, x, cols, maxTokens, step, options.int8In);
}

class FusedOp implements GpuOp {
  readonly label: string;
  readonly #kernel: Kernel;
  readonly #group: GPUBindGroup;
  readonly #grid: [number, number, number];
  readonly #before?: GpuOp;

  /** One dispatch of `kernel` over `grid`, after `before` (a pass preparing its input). */
  constructor(
    label: string,
    kernel: Kernel,
    group: GPUBindGroup,
    grid: [number, number, number],
    before?: GpuOp,
  ) {
    this.label = label;
    this.#kernel = kernel;
    this.#group = group;
    this.#grid = grid;
    this.#before = before;
  }

  encode(pass: GPUComputePassEncoder): void {
    this.#before?.encode(pass);
    pass.setPipeline(this.#kernel.pipeline);
    pass.setBindGroup(0, this.#group);
    pass.dispatchWorkgroups(...this.#grid);
  }
}

interface ShapeRequest {
  /** The op's weights (whether they can take int8 input). */
  weights: readonly GpuWeight[];
  cols: number;
  totalRows: number;
  /** Sums kept per (row, token): 2 for gate/up, 1 for QKV. */
  accumulators: number;
  maxTokens: number;
  defaultRows: number;
  evenRows: boolean;
  tuning?: FusedMatvecTuning;
}

interface Shape {
  workgroupSize: number;
  rowsPerWorkgroup: number;
  tokensPerWorkgroup: number;
  tokenGroups: number;
  unitsPerStep: number;
  /** Int8 input (x_int8). */
  int8: boolean;
}

/** The tuning to use: the given values, checked, or defaults shrunk to fit the workgroup memory. */
function tuningFor(gpu: Gpu, op: string, request: ShapeRequest): Shape {
  const t = request.tuning ?? {};
  checkMatvecTuningKeys(op, t);
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const workgroupSize = t.workgroupSize ?? defaultMatvecWorkgroup(request.cols);
  let rowsPerWorkgroup = t.rowsPerWorkgroup ?? request.defaultRows;
  let tokensPerWorkgroup = t.tokensPerWorkgroup ?? Math.min(request.maxTokens, 4);
  // The reduction keeps one more sum per token (a folded norm's); int8 input quantised by each workgroup
  // adds the quantised x rows.
  const int8Wanted = (t.int8 ?? false) && int8MatvecBlocker(request.weights) === undefined;
  const staged = int8Wanted && !(t.sharedInt8 ?? false);
  const reductionBytes = () =>
    workgroupSize * (rowsPerWorkgroup * request.accumulators + 1) * tokensPerWorkgroup * 4;
  const bytes = () => reductionBytes() + (staged ? int8InputBytes(request.cols, tokensPerWorkgroup) : 0);
  while (bytes() > limit && t.tokensPerWorkgroup === undefined && tokensPerWorkgroup > 1) {
    tokensPerWorkgroup--;
  }
  const minRows = request.evenRows ? 2 : 1;
  while (bytes() > limit && t.rowsPerWorkgroup === undefined && rowsPerWorkgroup > minRows) {
    rowsPerWorkgroup -= minRows;
  }
  checkInt(op, "workgroupSize", workgroupSize, 32, gpu.limits.maxComputeInvocationsPerWorkgroup);
  if ((workgroupSize & (workgroupSize - 1)) !== 0) {
    throw new BadFlagError(`${op}: workgroupSize must be a power of two, got ${workgroupSize}`);
  }
  checkInt(op, "rowsPerWorkgroup", rowsPerWorkgroup, 1, 8);
  if (request.evenRows && rowsPerWorkgroup % 2 !== 0) {
    throw new BadFlagError(`${op}: rowsPerWorkgroup must be even with RoPE, got ${rowsPerWorkgroup}`);
  }
  checkInt(op, "tokensPerWorkgroup", tokensPerWorkgroup, 1, 8);
  checkInt(
    op,
    "rowsPerWorkgroup × tokensPerWorkgroup",
    rowsPerWorkgroup * tokensPerWorkgroup,
    1,
    workgroupSize,
  );
  if (reductionBytes() > limit) {
    throw new BadFlagError(
      `${op}: the reduction needs ${reductionBytes()} bytes of workgroup memory, this GPU allows ${limit}`,
    );
  }
  const tokenGroups = ceilDiv(request.maxTokens, tokensPerWorkgroup);
  checkWorkgroups(gpu, op, tokenGroups);
  const unitsPerStep = checkUnitsPerStep(op, t.unitsPerStep);
  const int8 = int8InputFits(
    gpu,
    int8Wanted,
    request.weights,
    tokensPerWorkgroup,
    reductionBytes(),
    t.sharedInt8,
  );
  return { workgroupSize, rowsPerWorkgroup, tokensPerWorkgroup, tokenGroups, unitsPerStep, int8 };
}

/** A (x, y, z) grid holding `groups` workgroups in x·y (x within the device limit) and `z` in z. */
function grid2d(gpu: Gpu, op: string, groups: number, z: number): [number, number, number] {
  const gx = Math.min(groups, gpu.limits.maxComputeWorkgroupsPerDimension);
  const gy = ceilDiv(groups, gx);
  checkWorkgroups(gpu, op, gy);
  return [gx, gy, z];
}
