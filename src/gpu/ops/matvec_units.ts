/**
 * The decode matrix-vector kernels (`wgsl/matvec_fast.wgsl` with the unit library `wgsl/matvec_units.wgsl`):
 * the unit section that reads each weight, the WGSL spliced from it, and the checks shared by
 * `createMatvec` and the fused decode ops.
 *
 * Threads own whole 32-element pieces of a weight's blocks ("units"): the widest loads the block layout
 * allows, scales decoded once per 32 weights, x as vec4 shared by the workgroup's rows, a two-step
 * reduction. Every type the GPU reads has a unit section. F32, F16 and BF16 rows of a multiple of 256 values
 * use interleaved units (neighbouring threads read neighbouring 16-byte words); other rows of a multiple
 * of 4 use plain units of 32 consecutive values (`<type>_PLAIN`), the last one ragged when the row is not a
 * multiple of 32. Rows that are not a multiple of 4 values (possible only for unquantised types) cannot be
 * read as vec4 and have no decode kernel: the ops throw an {@link UnsupportedError}, on which a model load
 * falls back to the CPU reference.
 *
 * @module
 */

import { BadFlagError, UnsupportedError } from "../../errors.ts";
import type { Gpu } from "../device.ts";
import { loadShader } from "../shader.ts";
import type { GpuWeight } from "../weights.ts";
import { NO_KV_STORE } from "./qkv_kv_store.ts";

/**
 * The unit kinds of `wgsl/matvec_units.wgsl` (see {@link unitSection}) and the word type each one reads its
 * weight binding as.
 */
export const UNIT_SECTION_WORDS: Readonly<Record<string, "vec4u" | "vec2u" | "u32">> = {
  F32: "vec4u",
  F16: "vec4u",
  BF16: "vec4u",
  F32_PLAIN: "vec4u",
  F16_PLAIN: "vec2u",
  BF16_PLAIN: "vec2u",
  Q8_0: "u32",
  Q4_0: "u32",
  Q4_1: "u32",
  Q5_0: "u32",
  Q5_1: "vec2u",
  Q2_K: "u32",
  Q3_K: "u32",
  Q4_K: "vec4u",
  Q5_K: "vec4u",
  Q6_K: "u32",
};

/**
 * The sections of `wgsl/matvec_units.wgsl` a unit kind is made of, where they are not just the section of
 * its name: F16 and BF16 share their layouts and differ in the value section defining `half_pair`.
 */
export const UNIT_KIND_SECTIONS: Readonly<Record<string, readonly string[]>> = {
  F16: ["F16_VALUES", "HALF"],
  BF16: ["BF16_VALUES", "HALF"],
  F16_PLAIN: ["F16_VALUES", "HALF_PLAIN"],
  BF16_PLAIN: ["BF16_VALUES", "HALF_PLAIN"],
};

/**
 * Unit kinds with an `<kind>_INT8` section in `wgsl/matvec_units.wgsl`: their products can take the kernels'
 * int8 input (x quantised per 16 values, integer dot products; see {@link int8MatvecBlocker}).
 */
export const INT8_UNIT_SECTIONS: ReadonlySet<string> = new Set(["Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"]);

/** The stub that stands in for `unit_dot_int8` in unit kinds without an INT8 section (never called). */
const NO_INT8_UNIT = "\nfn unit_dot_int8(w: Raw, u: u32, xb: u32) -> f32 {\n  return 0.0;\n}\n";

/** Workgroup bytes of the int8 input for `tokens` token rows of `cols` values (16 + 8 bytes per 16 values). */
export function int8InputBytes(cols: number, tokens: number): number {
  return tokens * Math.ceil(cols / 16) * 24;
}

/**
 * Why the decode products of `weights` cannot take int8 input (a one-line reason), or undefined when they
 * can: every weight's unit kind needs an INT8 section and rows of a multiple of 16 values.
 */
export function int8MatvecBlocker(weights: readonly GpuWeight[]): string | undefined {
  for (const w of weights) {
    if (!INT8_UNIT_SECTIONS.has(w.info.name)) return `${w.name} is ${w.info.name}, which has no int8 units`;
    if (w.cols % 16 !== 0) return `${w.name} has rows of ${w.cols} values, not a multiple of 16`;
  }
  return undefined;
}

/**
 * Whether a decode product asked for int8 input (`wanted`) takes it: the weights allow it
 * ({@link int8MatvecBlocker}) and the workgroup memory holds the quantised x rows of `tokens` tokens next to
 * the `otherBytes` the kernel already uses (unless `shared`: the input quantised by a pass of its own, in
 * buffers).
 */
export function int8InputFits(
  gpu: Gpu,
  wanted: boolean,
  weights: readonly GpuWeight[],
  tokens: number,
  otherBytes: number,
  shared = false,
): boolean {
  const staged = shared ? 0 : int8InputBytes(weights[0].cols, tokens);
  return wanted && int8MatvecBlocker(weights) === undefined &&
    otherBytes + staged <= gpu.limits.maxComputeWorkgroupStorageSize;
}

/**
 * CPU reference of the kernels' int8 input: `x` (rows of `cols` values, a multiple of 16) as the products
 * see it, each block of 16 values replaced by d · q with d = max |x| / 127 and q = round(x / d) in f32
 * (ties to even, as WGSL's round). A product with int8 input equals the f32 product with this x.
 */
export function int8InputReference(x: Float32Array, cols: number): Float32Array {
  if (cols % 16 !== 0) throw new RangeError(`int8 input needs rows of a multiple of 16 values, got ${cols}`);
  const out = new Float32Array(x.length);
  for (let b = 0; b + 16 <= x.length; b += 16) {
    let amax = 0;
    for (let i = 0; i < 16; i++) amax = Math.max(amax, Math.abs(x[b + i]));
    const inv = amax > 0 ? Math.fround(127 / amax) : 0;
    const d = Math.fround(amax / 127);
    for (let i = 0; i < 16; i++) {
      const v = Math.fround(x[b + i] * inv);
      let q = Math.round(v);
      if (q - v === 0.5 && q % 2 !== 0) q -= 1; // ties to even
      out[b + i] = d * Math.max(-127, Math.min(127, q));
    }
  }
  return out;
}

/** Unquantised types: interleaved units for rows of a multiple of 256 values, plain units otherwise. */
const UNQUANTISED = new Set(["F32", "F16", "BF16"]);

/**
 * Why `weight` cannot go through the decode kernels (a one-line reason naming it), or undefined when it
 * can: unquantised rows must be a multiple of 4 values (x is read as vec4).
 */
export function matvecBlocker(weight: GpuWeight): string | undefined {
  const type = weight.info.name;
  if (!(type in UNIT_SECTION_WORDS)) return `${weight.name} is ${type}, which has no decode kernel`;
  if (weight.cols % 4 !== 0) {
    return `${weight.name} has rows of ${weight.cols} ${type} values, not a multiple of 4`;
  }
  return undefined;
}

/**
 * The section of `wgsl/matvec_units.wgsl` that reads `weight`: its type, or `<type>_PLAIN` for unquantised
 * rows that are not a multiple of 256 values. Throws an {@link UnsupportedError} where
 * {@link matvecBlocker} gives a reason.
 */
export function unitSection(weight: GpuWeight): string {
  const blocker = matvecBlocker(weight);
  if (blocker) throw new UnsupportedError(blocker);
  const type = weight.info.name;
  return UNQUANTISED.has(type) && weight.cols % 256 !== 0 ? `${type}_PLAIN` : type;
}

/**
 * Checks that the decode kernels can read every one of `weights`: an {@link UnsupportedError} naming `op`
 * and the first weight that cannot be read otherwise.
 */
export function checkMatvecWeights(op: string, weights: readonly GpuWeight[]): void {
  const blocker = weights.map(matvecBlocker).find((b) => b !== undefined);
  if (blocker) throw new UnsupportedError(`${op}: no decode kernel: ${blocker}`);
}

/** The fields of the decode kernels' tunings (`MatvecTuning`, `FusedMatvecTuning`). */
export const MATVEC_TUNING_KEYS: readonly string[] = [
  "workgroupSize",
  "rowsPerWorkgroup",
  "tokensPerWorkgroup",
  "unitsPerStep",
  "int8",
  "sharedInt8",
  "maxWorkgroups",
  "subgroupReduce",
  "prefetchGroups",
];

/**
 * Checks a tuning's `maxWorkgroups` (workgroups launched per token group, each taking every such-th row
 * group: an integer ≥ 1) and returns the workgroups to launch for `groups` row groups.
 */
export function launchedGroups(op: string, groups: number, maxWorkgroups: number | undefined): number {
  if (maxWorkgroups === undefined) return groups;
  if (!Number.isInteger(maxWorkgroups) || maxWorkgroups < 1) {
    throw new BadFlagError(`${op}: maxWorkgroups must be an integer ≥ 1, got ${maxWorkgroups}`);
  }
  return Math.min(groups, maxWorkgroups);
}

/** Rejects a decode tuning naming a field other than {@link MATVEC_TUNING_KEYS}: a {@link BadFlagError} naming `op`. */
export function checkMatvecTuningKeys(op: string, tuning: object): void {
  for (const key of Object.keys(tuning)) {
    if (!MATVEC_TUNING_KEYS.includes(key)) {
      throw new BadFlagError(
        `${op}: unknown decode tuning field ${JSON.stringify(key)} (known: ${MATVEC_TUNING_KEYS.join(", ")})`,
      );
    }
  }
}

/** The decode kernels' units per step (1, 2 or 4; default 1), checked: a {@link BadFlagError} naming `op`. */
export function checkUnitsPerStep(op: string, unitsPerStep: number | undefined): number {
  const value = unitsPerStep ?? 1;
  if (![1, 2, 4].includes(value)) {
    throw new BadFlagError(`${op}: unitsPerStep must be 1, 2 or 4, got ${value}`);
  }
  return value;
}

/** Subgroup size the emulations of subgroup operations stand in for (the `"emulated"` options). */
export const EMULATED_SUBGROUP_SIZE = 32;

/**
 * What `wgsl/matvec_fast.wgsl` takes for a tuning's `subgroupReduce` (true: the GPU's subgroups, which must
 * be of one size dividing `workgroupSize`; "emulated": the same sums through workgroup memory, for tests;
 * false or absent: none): the override constants subgroup_reduce and subgroup_size and the text define
 * PARTIALS. A {@link BadFlagError} naming `op` where the GPU cannot take it.
 */
export function subgroupReduceParts(
  gpu: Gpu,
  op: string,
  subgroupReduce: boolean | "emulated" | undefined,
  workgroupSize: number,
): { constants: Record<string, number>; defines: Record<string, string> } {
  if (subgroupReduce === undefined || subgroupReduce === false) {
    return { constants: { subgroup_reduce: 0 }, defines: { PARTIALS: loadShader("matvec_partials_plain") } };
  }
  if (subgroupReduce !== true && subgroupReduce !== "emulated") {
    throw new BadFlagError(
      `${op}: subgroupReduce must be true, false or "emulated", got ${JSON.stringify(subgroupReduce)}`,
    );
  }
  let size = EMULATED_SUBGROUP_SIZE;
  if (subgroupReduce === true) {
    const sizes = gpu.subgroups;
    if (!sizes) {
      throw new BadFlagError(`${op}: subgroupReduce needs WGSL subgroups, which this GPU does not offer`);
    }
    if (sizes.minSize !== sizes.maxSize) {
      throw new BadFlagError(
        `${op}: subgroupReduce needs subgroups of one size, this GPU's are ${sizes.minSize}-${sizes.maxSize}`,
      );
    }
    size = sizes.minSize;
  }
  if (workgroupSize % size !== 0) {
    throw new BadFlagError(
      `${op}: subgroupReduce needs workgroups of whole subgroups of ${size}, got ${workgroupSize}`,
    );
  }
  return {
    constants: { subgroup_reduce: 1, subgroup_size: size },
    defines: {
      PARTIALS: loadShader(subgroupReduce === true ? "matvec_partials" : "matvec_partials_emulated"),
    },
  };
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

/** The sections of `wgsl/matvec_units.wgsl` by name (COMMON and those of the unit kinds). */
export function unitSections(): Map<string, string> {
  const sections = new Map<string, string>();
  const parts = loadShader("matvec_units").split(/^\/\/ ==== (\w+) ====$/m);
  for (let i = 1; i + 1 < parts.length; i += 2) sections.set(parts[i], parts[i + 1]);
  return sections;
}

/**
 * WGSL of the unit library for unit kind `section` (see {@link unitSection}): COMMON plus the kind's
 * sections of `wgsl/matvec_units.wgsl`, names suffixed by `_<suffix>`.
 */
export function unitsSource(section: string, suffix: string): string {
  const sections = unitSections();
  if (!(section in UNIT_SECTION_WORDS)) {
    throw new UnsupportedError(`${section} has no section in wgsl/matvec_units.wgsl`);
  }
  const parts = (UNIT_KIND_SECTIONS[section] ?? [section]).map((name) => sections.get(name)!);
  const int8 = sections.get(`${section}_INT8`) ?? NO_INT8_UNIT;
  return suffixDeclaredNames(sections.get("COMMON")! + parts.join("") + int8, suffix);
}

/**
 * The text defines of `wgsl/matvec_fast.wgsl` for weights a, b, c (b and c default to a: the `main`
 * entry reads only a, but the module declares all three), with the `qkv` entry's KV store left out (the
 * stub `KV_STORE`; `createQkvMatvec` replaces it when it appends to the cache) and no int8 output (the stub
 * `INT8_OUT`). The caller adds `X_INT8` (`./int8_input.ts`, `int8InputParts`). Throws an
 * {@link UnsupportedError} for a weight the kernels cannot read ({@link matvecBlocker}).
 */
export function subblockDefines(a: GpuWeight, b: GpuWeight = a, c: GpuWeight = a): Record<string, string> {
  const defines: Record<string, string> = {
    KV_STORE: NO_KV_STORE,
    INT8_OUT: loadShader("matvec_int8_out_none"),
  };
  for (const [suffix, weight] of [["a", a], ["b", b], ["c", c]] as const) {
    const section = unitSection(weight);
    defines[`WORD_${suffix.toUpperCase()}`] = UNIT_SECTION_WORDS[section];
    defines[`UNITS_${suffix.toUpperCase()}`] = unitsSource(section, suffix);
  }
  return defines;
}
