/**
 * A decode layer's FFN block in one dispatch (`wgsl/matvec_chain.wgsl`): attn_output with the FFN RMSNorm
 * folded, gate/up with SwiGLU, ffn_down with the next RMSNorm folded and, optionally, the next layer's fused
 * QKV, chained inside the dispatch by ordered tickets instead of by dispatch boundaries. At one token per
 * step a boundary costs about as much as streaming a small weight (the GPU drains, the next kernel
 * launches); here the next phase's workgroups are already running, their first weight loads issued, when
 * the phase before finishes.
 *
 * The op computes exactly what `createMatvec` (with `fold`), `createGateUpSwiGlu` (with `norm`),
 * `createMatvec` (with `fold`) and `createQkvMatvec` (with `norm`) compute in turn, for one token, with the
 * same unit kernels (`./matvec_units.ts`); {@link ffnChainBlocker} and {@link ffnChainQkvBlocker} say when
 * the weights and bindings qualify.
 *
 * @module
 */

import { BadFlagError, UnsupportedError } from "../../errors.ts";
import type { Gpu, Kernel } from "../device.ts";
import type { GpuWeight } from "../weights.ts";
import { includeShaders, loadShader } from "../shader.ts";
import { defaultMatvecWorkgroup } from "./matmul.ts";
import { qkvKernelParts, type QkvMatvecOptions } from "./fused.ts";
import {
  bindNumbered,
  checkMatvecWeights,
  checkUnitsPerStep,
  int8InputBytes,
  int8MatvecBlocker,
  matvecBlocker,
  reduceLanes,
  UNIT_SECTION_WORDS,
  unitSection,
  unitsSource,
} from "./matvec_units.ts";
import { type BufferSlice, checkInt, checkSlice, checkWorkgroups, type GpuOp } from "./op.ts";

/** Tuning knobs of the chained FFN kernel (WGSL override constants). */
export interface FfnChainTuning {
  /** Threads per workgroup, all phases: a power of two in [32, 1024] (default: that of attn_output's rows). */
  workgroupSize?: number;
  /** Output rows per workgroup of attn_output, gate/up and ffn_down, each 1..8 (default 4 each). */
  rowsPerWorkgroup?: [number, number, number];
  /** Units each thread loads before computing on them per phase, 1, 2 or 4 (default 1). */
  unitsPerStep?: [number, number, number];
  /**
   * Per phase: quantise the input to int8 in workgroup memory and take integer dot products, where the
   * weights' types allow it and the workgroup memory holds it (default false).
   */
  int8?: [boolean, boolean, boolean];
}

/** Options of {@link createFfnChain}. */
export interface FfnChainOptions {
  /** Name for errors and the profiler, e.g. "blk.0.ffn_chain". */
  label: string;
  /** attn_output, ggml shape `[cols_o, E]`. */
  wo: GpuWeight;
  /** ffn_gate, `[E, FF]`. */
  gate: GpuWeight;
  /** ffn_up, same type and shape as `gate`. */
  up: GpuWeight;
  /** ffn_down, `[FF, E]`. */
  down: GpuWeight;
  /** The attention output, f32 `[cols_o]` (read). */
  att: BufferSlice;
  /** The residual stream, f32 `[E]`: x += attn_output, then x += ffn_down, in place. */
  x: BufferSlice;
  /** x · γ (not yet divided by the RMS), f32 `[E]`: γ_ffn's after attn_output, `nextNorm`'s at the end. */
  xn: BufferSlice;
  /** Σ x² per producer workgroup, f32, at least {@link FfnChainOp.normPartials} and attn_output's count. */
  sums: BufferSlice;
  /** silu(gate) · up, f32 `[FF]` (scratch between the phases). */
  hidden: BufferSlice;
  /** The FFN RMSNorm's weight, f32 `[E]`. */
  ffnNorm: BufferSlice;
  /** The next RMSNorm's weight (the next layer's attn_norm, or output_norm), f32 `[E]`. */
  nextNorm: BufferSlice;
  /** Four u32 counters, zero before the first dispatch; the kernel leaves them zero. */
  counters: BufferSlice;
  /** The RMSNorms' epsilon. */
  eps: number;
  /** Override constants for tuning on a given GPU. */
  tuning?: FfnChainTuning;
  /**
   * The next layer's fused QKV as a fourth phase, reading `xn` and the sums ffn_down's phase leaves (what
   * `createQkvMatvec` with `x: xn` and a folded norm computes, for one token; its tuning's workgroup size
   * is replaced by the chain's, its rows per workgroup are its own, even with RoPE or the append). Needs
   * attn_output's and ffn_down's rows per workgroup equal (one partial count for both norm consumers). See
   * {@link ffnChainQkvBlocker}.
   */
  qkv?: Omit<QkvMatvecOptions, "x" | "norm" | "maxTokens">;
}

/** The chained FFN op. */
export interface FfnChainOp extends GpuOp {
  /** Partial sums of squares ffn_down's phase leaves in `sums` for the next folded norm's consumer. */
  readonly normPartials: number;
}

/** Bytes of the counters a chained FFN op needs (see {@link FfnChainOptions.counters}). */
export const FFN_CHAIN_COUNTER_BYTES = 32;

/** Storage bindings of the chain with a QKV phase, before the KV store's (see `wgsl/matvec_chain_qkv.wgsl`). */
const CHAIN_QKV_STORAGE_BINDINGS = 20;

/**
 * Why the chain cannot take a QKV phase appending to `kv` (a one-line reason), or undefined when it can:
 * the block table, lengths and pool shards must fit the storage bindings next to the chain's own.
 */
export function ffnChainQkvBlocker(
  limits: { maxStorageBuffersPerShaderStage: number },
  kv?: { shards: readonly unknown[] },
): string | undefined {
  const needed = CHAIN_QKV_STORAGE_BINDINGS + (kv ? 2 + kv.shards.length : 0);
  if (needed > limits.maxStorageBuffersPerShaderStage) {
    return `the chain with a QKV phase binds ${needed} storage buffers, this GPU allows ` +
      `${limits.maxStorageBuffersPerShaderStage}`;
  }
  return undefined;
}

/** The QKV phase's bindings by `wgsl/matvec_fast.wgsl`'s number (see `qkvKernelParts`); others keep theirs. */
const QKV_CHAIN_BINDINGS: Readonly<Record<number, number>> = {
  0: 12,
  1: 13,
  2: 18,
  4: 19,
  5: 20,
  6: 21,
  7: 22,
  8: 23,
  10: 24,
};

/** `qkvKernelParts` constants that are the chain's own or renamed for the QKV phase. */
const QKV_RENAMED_CONSTANTS: Readonly<Record<string, string | undefined>> = {
  cols: "cols_q",
  units_per_step: "ups_q",
  x_int8: "int8_q",
  wg_size: undefined,
  reduce_lanes: undefined,
  tokens_per_wg: undefined,
};

/** The QKV phase when there is none. */
const NO_QKV_PHASE = "fn groups_q() -> u32 {\n  return 0u;\n}\nfn qkv_phase(w: u32, tid: u32) {}\n";

/**
 * Why the four weights cannot go through {@link createFfnChain} (a one-line reason naming a tensor), or
 * undefined when they can: each in one buffer, read by a decode kernel, gate and up of one type and
 * shape, and the shapes chaining (attn_output's rows = gate's row length = ffn_down's rows, ffn_down's
 * row length = gate's rows).
 */
export function ffnChainBlocker(
  wo: GpuWeight,
  gate: GpuWeight,
  up: GpuWeight,
  down: GpuWeight,
): string | undefined {
  for (const w of [wo, gate, up, down]) {
    if (w.parts.length !== 1) return `${w.name} is split into ${w.parts.length} buffers`;
    const unreadable = matvecBlocker(w);
    if (unreadable) return unreadable;
  }
  if (gate.type !== up.type || gate.cols !== up.cols || gate.rows !== up.rows) {
    return `${gate.name} and ${up.name} differ in type or shape`;
  }
  if (wo.rows !== gate.cols || down.rows !== gate.cols || down.cols !== gate.rows) {
    return `${wo.name} [${wo.cols}, ${wo.rows}], ${gate.name} [${gate.cols}, ${gate.rows}] and ${down.name} ` +
      `[${down.cols}, ${down.rows}] do not chain`;
  }
  return undefined;
}

/**
 * The free names of the unit library a phase renames (see `wgsl/matvec_units.wgsl`), by phase (phase q
 * keeps `rows_per_wg`, the chain's override for it).
 */
function phaseNames(phase: "o" | "f" | "d" | "q", input: string): Record<string, string> {
  return {
    x: input,
    cols: `cols_${phase}`,
    ...(phase === "q" ? {} : { rows_per_wg: `rows_${phase}` }),
    units_per_step: `ups_${phase}`,
    x_int8: `int8_${phase}`,
    x_blocks: `xb_${phase}`,
    x_scales: `xs_${phase}`,
    x_ready: `ready_${phase}`,
  };
}

class ChainOp implements FfnChainOp {
  readonly label: string;
  readonly normPartials: number;
  readonly #kernel: Kernel;
  readonly #group: GPUBindGroup;
  readonly #workgroups: number;

  constructor(label: string, kernel: Kernel, group: GPUBindGroup, workgroups: number, normPartials: number) {
    this.label = label;
    this.#kernel = kernel;
    this.#group = group;
    this.#workgroups = workgroups;
    this.normPartials = normPartials;
  }

  encode(pass: GPUComputePassEncoder): void {
    pass.setPipeline(this.#kernel.pipeline);
    pass.setBindGroup(0, this.#group);
    pass.dispatchWorkgroups(this.#workgroups);
  }
}

/**
 * Builds the chained FFN op for one token: `x += W_o · att`; `h = silu(W_g · n) · (W_u · n)` with
 * `n = rmsnorm(x) · γ_ffn`; `x += W_d · h`; then `xn = x · γ_next` and the sums of squares a folded norm's
 * consumer reads ({@link FfnChainOp.normPartials} of them). Throws an {@link UnsupportedError} where
 * {@link ffnChainBlocker} gives a reason, a `BadFlagError` for a bad tuning or a buffer too small.
 */
export function createFfnChain(gpu: Gpu, options: FfnChainOptions): FfnChainOp {
  const { label, wo, gate, up, down } = options;
  const blocker = ffnChainBlocker(wo, gate, up, down);
  if (blocker) throw new UnsupportedError(`${label}: cannot chain the FFN block: ${blocker}`);
  checkMatvecWeights(label, [wo, gate, up, down]);
  const E = wo.rows;
  const FF = gate.rows;
  const t = options.tuning ?? {};
  for (const key of Object.keys(t)) {
    if (!["workgroupSize", "rowsPerWorkgroup", "unitsPerStep", "int8"].includes(key)) {
      throw new BadFlagError(`${label}: unknown FFN chain tuning field ${JSON.stringify(key)}`);
    }
  }
  const workgroupSize = t.workgroupSize ?? defaultMatvecWorkgroup(wo.cols);
  checkInt(label, "workgroupSize", workgroupSize, 32, gpu.limits.maxComputeInvocationsPerWorkgroup);
  if ((workgroupSize & (workgroupSize - 1)) !== 0) {
    throw new BadFlagError(`${label}: workgroupSize must be a power of two, got ${workgroupSize}`);
  }
  const [rowsO, rowsF, rowsD] = t.rowsPerWorkgroup ?? [4, 4, 4];
  for (const rows of [rowsO, rowsF, rowsD]) checkInt(label, "rowsPerWorkgroup", rows, 1, 8);
  if (Math.max(rowsO, rowsD, 2 * rowsF + 1) > workgroupSize) {
    throw new BadFlagError(`${label}: workgroupSize ${workgroupSize} is smaller than the sums per workgroup`);
  }
  const units = (t.unitsPerStep ?? [1, 1, 1]).map((u) => checkUnitsPerStep(label, u));
  // The reduction's sums per thread: the largest phase's (a QKV phase's rows per workgroup are at most 8).
  const qkvRows = options.qkv ? options.qkv.tuning?.rowsPerWorkgroup ?? 4 : 0;
  const reductionBytes = workgroupSize * (Math.max(rowsO, rowsD, 2 * rowsF, qkvRows) + 1) * 4;
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  // Int8 input per phase where asked for, allowed by the weights, and while the workgroup memory holds it.
  let bytes = reductionBytes;
  const int8 = ([[wo], [gate, up], [down]] as GpuWeight[][]).map((weights, i) => {
    const wanted = (t.int8?.[i] ?? false) && int8MatvecBlocker(weights) === undefined;
    const extra = int8InputBytes(weights[0].cols, 1);
    if (!wanted || bytes + extra > limit) return false;
    bytes += extra;
    return true;
  });
  if (reductionBytes > limit) {
    throw new BadFlagError(
      `${label}: the reduction needs ${reductionBytes} bytes of workgroup memory, this GPU allows ${limit}`,
    );
  }
  const groupsO = Math.ceil(E / rowsO);
  const groupsF = Math.ceil(FF / rowsF);
  const groupsD = Math.ceil(E / rowsD);
  const workgroups = groupsO + groupsF + groupsD;
  checkSlice(label, "att", options.att, wo.cols * 4);
  checkSlice(label, "x", options.x, E * 4);
  checkSlice(label, "xn", options.xn, E * 4);
  checkSlice(label, "sums", options.sums, Math.max(groupsO, groupsD) * 4);
  checkSlice(label, "hidden", options.hidden, FF * 4);
  checkSlice(label, "ffnNorm", options.ffnNorm, E * 4);
  checkSlice(label, "nextNorm", options.nextNorm, E * 4);
  checkSlice(label, "counters", options.counters, FFN_CHAIN_COUNTER_BYTES);

  const defines: Record<string, string> = {};
  for (
    const [suffix, weight, phase, input] of [
      ["o", wo, "o", "att"],
      ["g", gate, "f", "xn"],
      ["u", up, "f", "xn"],
      ["d", down, "d", "h"],
    ] as const
  ) {
    const section = unitSection(weight);
    defines[`WORD_${suffix.toUpperCase()}`] = UNIT_SECTION_WORDS[section];
    defines[`UNITS_${suffix.toUpperCase()}`] = unitsSource(section, suffix, phaseNames(phase, input));
  }
  // The QKV phase: createQkvMatvec's constants, units and bindings, renamed and renumbered for the chain.
  const qkvConstants: Record<string, number> = {};
  const qkvEntries: [number, BufferSlice][] = [];
  let groupsQ = 0;
  defines.QKV_PHASE = NO_QKV_PHASE;
  if (options.qkv) {
    const qkv = options.qkv;
    if (rowsO !== rowsD) {
      throw new BadFlagError(
        `${label}: a QKV phase needs equal rows per workgroup for attn_output and ffn_down`,
      );
    }
    if (qkv.wq.cols !== E) throw new UnsupportedError(`${label}: ${qkv.wq.name} does not read rows of ${E}`);
    const qkvBlocker = ffnChainQkvBlocker(gpu.limits, qkv.append?.kv);
    if (qkvBlocker) throw new UnsupportedError(`${label}: ${qkvBlocker}`);
    // Int8 input for the QKV phase too, where its own workgroup arrays fit beside the other phases'.
    const int8Fits = bytes + int8InputBytes(qkv.wq.cols, 1) <= limit;
    const parts = qkvKernelParts(gpu, {
      ...qkv,
      label,
      maxTokens: 1,
      tuning: {
        ...qkv.tuning,
        workgroupSize,
        tokensPerWorkgroup: 1,
        int8: (qkv.tuning?.int8 ?? false) && int8Fits,
      },
    });
    for (const [name, value] of Object.entries(parts.constants)) {
      const renamed = name in QKV_RENAMED_CONSTANTS ? QKV_RENAMED_CONSTANTS[name] : name;
      if (renamed) qkvConstants[renamed] = value;
    }
    for (const [binding, slice] of parts.entries) {
      qkvEntries.push([QKV_CHAIN_BINDINGS[binding] ?? binding, slice]);
    }
    groupsQ = parts.groups;
    let text = includeShaders(loadShader("matvec_chain_qkv"), new Set(["matvec_reduce"]));
    for (const [suffix, weight] of [["a", qkv.wq], ["b", qkv.wk], ["c", qkv.wv]] as const) {
      const section = unitSection(weight);
      text = text.replace(`{{WORD_${suffix.toUpperCase()}}}`, UNIT_SECTION_WORDS[section])
        .replace(`{{UNITS_${suffix.toUpperCase()}}}`, unitsSource(section, suffix, phaseNames("q", "xn")));
    }
    defines.QKV_PHASE = text.replace("{{KV_STORE}}", parts.kvStore);
  }
  const kernel = gpu.kernel(
    "matvec_chain",
    {
      ...qkvConstants,
      rows_e: E,
      rows_ff: FF,
      cols_o: wo.cols,
      cols_f: gate.cols,
      cols_d: down.cols,
      row_bytes_o: wo.rowBytes,
      row_bytes_g: gate.rowBytes,
      row_bytes_u: up.rowBytes,
      row_bytes_d: down.rowBytes,
      wg_size: workgroupSize,
      rows_o: rowsO,
      rows_f: rowsF,
      rows_d: rowsD,
      ups_o: units[0],
      ups_f: units[1],
      ups_d: units[2],
      reduce_lanes: reduceLanes(workgroupSize),
      int8_o: int8[0] ? 1 : 0,
      int8_f: int8[1] ? 1 : 0,
      int8_d: int8[2] ? 1 : 0,
      norm_partials: groupsO,
      norm_width: E,
      norm_eps: options.eps,
      each_thread_waits: gpu.isFallback ? 1 : 0,
    },
    defines,
    "ffn",
  );
  const group = bindNumbered(gpu, kernel, [
    [0, wo.parts[0].buffer],
    [1, gate.parts[0].buffer],
    [2, up.parts[0].buffer],
    [3, down.parts[0].buffer],
    [4, options.att],
    [5, options.x],
    [6, options.xn],
    [7, options.sums],
    [8, options.hidden],
    [9, options.ffnNorm],
    [10, options.nextNorm],
    [11, options.counters],
    ...qkvEntries,
  ]);
  checkWorkgroups(gpu, label, workgroups + groupsQ);
  return new ChainOp(label, kernel, group, workgroups + groupsQ, groupsD);
}
