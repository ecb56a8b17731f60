/**
 * The sub-block decode kernels (`wgsl/matvec_fast.wgsl` with the unit library `wgsl/matvec_units.wgsl`):
 * which weights they serve, the WGSL they are spliced from, and the variant choice shared by
 * `createMatvec` and the fused decode ops.
 *
 * Variants of the decode matrix-vector kernels:
 * - `"subblock"`: threads own whole 32-element pieces of the blocks (16-byte loads where the layout allows,
 *   scales decoded once per 32 weights, x as vec4 shared by the workgroup's rows, a two-step reduction).
 *   For F32, F16, BF16 (rows of a multiple of 256 values), Q8_0, Q4_K, Q5_K and Q6_K. The default where
 *   it applies.
 * - `"dq16"`: the general kernels (`wgsl/matvec.wgsl`, `wgsl/matvec_fused.wgsl`): sixteen columns per thread
 *   and step through `wgsl/dequant.wgsl`, every type and row length.
 *
 * @module
 */

import { BadFlagError } from "../../errors.ts";
import type { Gpu, Kernel } from "../device.ts";
import { loadShader } from "../shader.ts";
import type { GpuWeight } from "../weights.ts";
import type { BufferSlice } from "./op.ts";

/** Which decode matrix-vector kernel to use (see the module documentation). */
export type MatvecVariant = "subblock" | "dq16";

/** Every {@link MatvecVariant}. */
export const MATVEC_VARIANTS: readonly MatvecVariant[] = ["subblock", "dq16"];

/** Types with a section in `wgsl/matvec_units.wgsl`, and the word type their weight binding is read as. */
const UNIT_WORDS: Readonly<Record<string, "vec4u" | "u32">> = {
  F32: "vec4u",
  F16: "vec4u",
  BF16: "vec4u",
  Q8_0: "u32",
  Q4_K: "vec4u",
  Q5_K: "vec4u",
  Q6_K: "u32",
};

/** Unquantised types, whose units interleave 8 units over 256 values (rows must be whole groups). */
const GROUPED = new Set(["F32", "F16", "BF16"]);

/**
 * Why `weight` cannot go through the sub-block kernels (a one-line reason naming it), or undefined when
 * it can.
 */
export function subblockBlocker(weight: GpuWeight): string | undefined {
  const type = weight.info.name;
  if (!(type in UNIT_WORDS)) return `${weight.name} is ${type}, which has no sub-block kernel`;
  if (GROUPED.has(type) && weight.cols % 256 !== 0) {
    return `${weight.name} has rows of ${weight.cols} ${type} values, not a multiple of 256`;
  }
  return undefined;
}

/**
 * The variant to run `weights` with: `requested`, checked (a {@link BadFlagError} naming `op` when the
 * sub-block kernel cannot take one of them), or by default `"subblock"` when every weight qualifies,
 * else `"dq16"`.
 */
export function chooseMatvecVariant(
  op: string,
  weights: readonly GpuWeight[],
  requested?: MatvecVariant,
): MatvecVariant {
  if (requested !== undefined && !MATVEC_VARIANTS.includes(requested)) {
    throw new BadFlagError(`${op}: variant must be ${MATVEC_VARIANTS.join(" or ")}, got ${requested}`);
  }
  const blocker = weights.map(subblockBlocker).find((b) => b !== undefined);
  if (requested === "subblock" && blocker) {
    throw new BadFlagError(`${op}: variant subblock: ${blocker}`);
  }
  return requested ?? (blocker ? "dq16" : "subblock");
}

/** The sub-block kernels' units per step (1, 2 or 4; default 1), checked: a {@link BadFlagError} naming `op`. */
export function checkUnitsPerStep(op: string, unitsPerStep: number | undefined): number {
  const value = unitsPerStep ?? 1;
  if (![1, 2, 4].includes(value)) {
    throw new BadFlagError(`${op}: unitsPerStep must be 1, 2 or 4, got ${value}`);
  }
  return value;
}

/** Lanes of the first reduction step for `workgroupSize` threads: about its square root, a power of two. */
export function reduceLanes(workgroupSize: number): number {
  return 2 ** Math.ceil(Math.log2(workgroupSize) / 2);
}

/**
 * WGSL text renaming every name `source` declares (functions, constants, structs) and the weight binding
 * `W` to `<name>_<suffix>`, so that several copies can live in one shader.
 */
export function suffixDeclaredNames(source: string, suffix: string): string {
  const names = new Set<string>(["W"]);
  for (const match of source.matchAll(/\b(?:fn|const|struct)\s+(\w+)/g)) names.add(match[1]);
  const pattern = new RegExp(`\\b(?:${[...names].join("|")})\\b`, "g");
  return source.replace(pattern, (name) => `${name}_${suffix}`);
}

/**
 * WGSL of the unit library for type `typeName` (COMMON plus that type's section of
 * `wgsl/matvec_units.wgsl`), names suffixed by `_<suffix>`.
 */
export function unitsSource(typeName: string, suffix: string): string {
  const text = loadShader("matvec_units");
  const sections = new Map<string, string>();
  const parts = text.split(/^\/\/ ==== (\w+) ====$/m);
  for (let i = 1; i + 1 < parts.length; i += 2) sections.set(parts[i], parts[i + 1]);
  const body = sections.get(typeName);
  if (body === undefined) throw new BadFlagError(`type ${typeName} has no sub-block kernel`);
  return suffixDeclaredNames(sections.get("COMMON")! + body, suffix);
}

/**
 * The text defines of `wgsl/matvec_fast.wgsl` for weights a, b, c (b and c default to a: the `main`
 * entry reads only a, but the module declares all three).
 */
export function subblockDefines(a: GpuWeight, b: GpuWeight = a, c: GpuWeight = a): Record<string, string> {
  const defines: Record<string, string> = {};
  for (const [suffix, weight] of [["a", a], ["b", b], ["c", c]] as const) {
    const type = weight.info.name;
    defines[`WORD_${suffix.toUpperCase()}`] = UNIT_WORDS[type];
    defines[`UNITS_${suffix.toUpperCase()}`] = unitsSource(type, suffix);
  }
  return defines;
}

/** A bind group for `kernel` from explicitly numbered bindings (entry points use different subsets). */
export function bindNumbered(gpu: Gpu, kernel: Kernel, entries: [number, BufferSlice][]): GPUBindGroup {
  return gpu.device.createBindGroup({
    layout: kernel.pipeline.getBindGroupLayout(0),
    entries: entries.map(([binding, slice]) => ({
      binding,
      resource: slice instanceof GPUBuffer ? { buffer: slice } : slice,
    })),
  });
}
