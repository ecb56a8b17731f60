// The WGSL that only a GPU with cooperative matrices or subgroups compiles (wgsl/matmul_coop.wgsl with the
// hardware's fragments, wgsl/coop_probe.wgsl, the attention kernels with wgsl/shuffle_xor.wgsl, the decode
// products with wgsl/matvec_partials.wgsl) cannot be
// compiled by lavapipe, so CI checks it with naga (wgpu's shader compiler, the one inside Deno's WebGPU,
// here a WebAssembly build of version 30): it must parse, validate and translate to SPIR-V. On the device
// the probe (src/gpu/coop_probe.ts) then decides whether the matrix kernels run.
import { ok } from "node:assert/strict";
import { nagaVersion, parseWgsl, validate, writeSpirv } from "naga-wasm";
import { includeShaders, loadShader } from "../src/gpu/shader.ts";
import { poolQuadLoadSource, poolQuadShaderSource } from "../src/gpu/ops/attention.ts";
import { subblockDefines } from "../src/gpu/ops/matvec_units.ts";
import type { GpuWeight } from "../src/gpu/weights.ts";
import { matmulConstants, matmulDefines, type MatmulShape } from "../src/gpu/ops/matmul.ts";
import type { Gpu } from "../src/gpu/device.ts";
import { specialiseOverrides, unrollLoops } from "../src/gpu/unroll.ts";

/** `code` as Gpu.kernel makes it: defines spliced in, overrides given a value made constants, loops unrolled. */
function prepared(code: string, defines: Record<string, string>, constants: Record<string, number>): string {
  for (const [k, v] of Object.entries(defines)) code = code.replaceAll(`{{${k}}}`, v);
  return unrollLoops(specialiseOverrides(code, constants).code);
}

/** A device with cooperative matrices, as far as the kernels' defines ask (naga 30: coopLoadT is row-major). */
const HARDWARE = {
  coopMatrix: {
    emulated: false,
    loadRowMajor: "coopLoadT",
    storeRowMajor: "coopStoreT",
  },
} as unknown as Gpu;

/** Parses, validates and translates `code` to SPIR-V; the compiler's message when it fails. */
function compileError(code: string): string | undefined {
  try {
    const module = parseWgsl(code);
    const info = validate(module);
    ok(writeSpirv(module, info).length > 0);
    return undefined;
  } catch (e) {
    return (e as { formatted?: string }).formatted ?? String(e);
  }
}

Deno.test(`wgsl (naga ${nagaVersion}): the cooperative-matrix prefill kernel compiles for every weight type`, () => {
  // Every type the dequantisation library decodes (its sections, after the common part).
  const types = [...loadShader("dequant").matchAll(/^\/\/ ==== (\w+) ====$/gm)].map((m) => m[1])
    .filter((name) => name !== "COMMON");
  ok(types.includes("Q4_K") && types.includes("F16"), types.join(", "));
  for (const type of types) {
    for (const tileTokens of [64, 128]) {
      const shape = { coop: true, tileTokens } as MatmulShape;
      const weight = { info: { name: type } } as unknown as GpuWeight;
      const code = prepared(
        includeShaders(loadShader("matmul_coop")),
        matmulDefines(HARDWARE, shape, weight, weight, weight),
        matmulConstants(shape),
      );
      const error = compileError(code);
      ok(error === undefined, `matmul_coop ${type}, ${tileTokens}-token tiles:\n${error}`);
    }
  }
});

Deno.test(`wgsl (naga ${nagaVersion}): the cooperative-matrix probe compiles in both spellings`, () => {
  for (const [load, store] of [["coopLoadT", "coopStoreT"], ["coopLoad", "coopStore"]]) {
    const code = loadShader("coop_probe").replaceAll("{{LOAD}}", load).replaceAll("{{STORE}}", store);
    const error = compileError(code);
    ok(error === undefined, `coop_probe with ${load}:\n${error}`);
  }
});

Deno.test(`wgsl (naga ${nagaVersion}): decode attention with subgroup shuffles compiles`, () => {
  for (const [headDim, shards] of [[64, 1], [128, 3]]) {
    const code = prepared(includeShaders(loadShader("flash_decode")), {
      SHUFFLE: loadShader("shuffle_xor"),
      POOL: poolQuadShaderSource(shards),
      LOAD_QUADS: poolQuadLoadSource(shards),
      // The int8 output with head_dim 128, without it at 64.
      ATT_INT8: loadShader(headDim === 128 ? "attention_int8_out" : "attention_int8_out_none"),
    }, {
      head_dim: headDim,
      k_quads: headDim / 8,
      key_lanes: 256 / (headDim / 8),
      tile_steps: 4,
      splits: 32,
      kv_heads: 8,
      q_heads: 32,
      max_pages: 256,
      fused_reduce: 1,
      subgroup_dots: 1,
      subgroup_lanes: 32 / (headDim / 8),
      uniform_rows: 1,
    });
    const error = compileError(code);
    ok(error === undefined, `flash_decode head_dim ${headDim}, ${shards} shards:\n${error}`);
  }
});

Deno.test(`wgsl (naga ${nagaVersion}): the decode products with subgroup sums compile`, () => {
  for (
    const [type, int8, x8] of [
      ["Q4_K", 1, "matvec_x_int8_staged"],
      ["F16", 0, "matvec_x_int8_staged"],
      ["Q6_K", 1, "matvec_x_int8_shared"],
    ] as const
  ) {
    const weight = { info: { name: type }, cols: 2048, rowBytes: 1152 } as unknown as GpuWeight;
    const code = prepared(includeShaders(loadShader("matvec_fast")), {
      ...subblockDefines(weight),
      PARTIALS: loadShader("matvec_partials"),
      X_INT8: loadShader(x8),
    }, {
      cols: 2048,
      wg_size: 64,
      rows_per_wg: 2,
      tokens_per_wg: 1,
      subgroup_reduce: 1,
      subgroup_size: 32,
      x_int8: int8,
      slots: 2,
      norm_mode: 2,
    });
    const error = compileError(code);
    ok(error === undefined, `matvec_fast ${type} (${x8}):\n${error}`);
  }
});

Deno.test(`wgsl (naga ${nagaVersion}): prefill attention with subgroup row maxima compiles (f32 and f16 staging)`, () => {
  const tiling = [
    "const TILE_ROWS: u32 = 64u;",
    "const TILE_TOKENS: u32 = 16u;",
    "const TILE_KEYS: u32 = 32u;",
    "const KEYS_PER_LANE: u32 = 4u;",
    "const PAIRS_PER_LANE: u32 = 8u;",
    "const THREADS: u32 = 128u;",
  ].join("\n");
  for (const staging of ["prefill_staging_f32", "prefill_staging_f16"]) {
    const code = prepared(includeShaders(loadShader("flash_prefill")), {
      POOL: poolQuadShaderSource(2),
      TILING: tiling,
      SHUFFLE: loadShader("shuffle_xor"),
      STAGING: loadShader(staging),
    }, { head_dim: 128, q_heads: 32, kv_heads: 8, group: 4, max_pages: 256, subgroup_max: 1 });
    const error = compileError(code);
    ok(error === undefined, `flash_prefill (${staging}):\n${error}`);
  }
});
