// The decode matrix-vector kernels (wgsl/matvec_fast.wgsl + wgsl/matvec_units.wgsl) against the CPU
// reference for every weight type and unit layout: odd row counts, rows and blocks that start 2 bytes into a
// word (Q8_0, Q4_0, Q5_0, Q3_K, Q6_K), unquantised rows in the interleaved layout (multiples of 256 values)
// and the plain one (with a ragged last unit when the row is not a multiple of 32), weights split into parts,
// 1..8 tokens, workgroup shapes whose reduction needs several passes, and the fused gate/up + SwiGLU and
// QKV + RoPE entry points with mixed types. Inputs are fresh random values (never zero); every output of the
// step's tokens is checked and none past them may be written.

import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { BadFlagError, UnsupportedError } from "../src/errors.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createGateUpSwiGlu } from "../src/gpu/ops/fused.ts";
import { createMatvec, longRowWorkgroup, type MatvecTuning } from "../src/gpu/ops/matmul.ts";
import {
  INT8_UNIT_SECTIONS,
  matvecBlocker,
  reduceLanes,
  suffixDeclaredNames,
  UNIT_KIND_SECTIONS,
  UNIT_SECTION_WORDS,
  unitSection,
  unitSections,
  unitsSource,
} from "../src/gpu/ops/matvec_units.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { DEQUANT_SECTIONS } from "../src/gpu/weights.ts";
import { typeInfo } from "../src/gguf/types.ts";
import {
  compareLinear,
  products,
  randomWeight as randomQuantWeight,
  typeOf,
  TYPES,
} from "./gpu_quant_data.ts";
import { gateUpCase, nanBuffer as nans, randomF32, runOps, untouchedPast } from "./gpu_ops_helpers.ts";
import { checkQkvRope, type QkvRopeCase } from "./gpu_qkv_rope_check.ts";

const TOL = 2e-5;
/** A random weight of type `name`, `rows` × `cols`, on the GPU (optionally split) and dequantised. */
const randomWeight = (gpu: Gpu, name: string, rows: number, cols: number, maxPartBytes?: number) =>
  randomQuantWeight(gpu, `w.${name}`, name, rows, cols, maxPartBytes);

const UNQUANTISED = ["F32", "F16", "BF16"];

interface MatvecCase {
  rows: number;
  cols: number;
  m: number;
  /** Split the weight into this many parts (of 10 rows). */
  parts?: number;
}

/**
 * Odd shapes for type `name`: a single row, one block per row (so that the rows of 18-, 22-, 34-, 110- and
 * 210-byte blocks start mid-word), several blocks, and a weight split into 4 parts; for unquantised types
 * both unit layouts, plain rows that are a multiple of 32 and ragged ones.
 */
function matvecCases(name: string): MatvecCase[] {
  if (UNQUANTISED.includes(name)) {
    return [
      { rows: 1, cols: 256, m: 1 }, // interleaved units
      { rows: 7, cols: 768, m: 3 },
      { rows: 33, cols: 96, m: 1 }, // plain units
      { rows: 7, cols: 172, m: 3 }, // plain, the last unit ragged (172 = 5 · 32 + 12)
      { rows: 5, cols: 4, m: 2 }, // a single ragged unit
      { rows: 37, cols: 512, m: 8, parts: 4 },
    ];
  }
  const block = typeInfo(typeOf(name), name).blockSize;
  return [
    { rows: 1, cols: block, m: 1 },
    { rows: 7, cols: block, m: 3 },
    { rows: 33, cols: 3 * block, m: 1 },
    { rows: 37, cols: Math.max(256, 2 * block), m: 8, parts: 4 },
  ];
}

for (const name of TYPES) {
  Deno.test(`gpu matvec subblock: ${name} matches the CPU reference at odd shapes, split into parts`, async () => {
    const gpu = await getGpu();
    const info = typeInfo(typeOf(name), name);
    for (const c of matvecCases(name)) {
      const rowBytes = c.cols / info.blockSize * info.bytesPerBlock;
      const { weight, w } = randomWeight(gpu, name, c.rows, c.cols, c.parts && rowBytes * 10 + 3);
      equal(weight.parts.length, c.parts ?? 1);
      const maxTokens = c.m + 2; // dispatch sized past m: the extra rows must stay untouched
      const x = randomF32(maxTokens * c.cols);
      const xBuf = gpu.buffer("x", x.byteLength, x);
      const step = new StepParams(gpu, maxTokens);
      const y = nans(gpu, "y", maxTokens * c.rows);
      const tuning: MatvecTuning = { tokensPerWorkgroup: 4, rowsPerWorkgroup: 3 };
      const op = createMatvec(gpu, { label: name, weight, x: xBuf, y, maxTokens, step, tuning });
      const [got] = await runOps(gpu, [op], step, c.m, 0, [y]);
      const what = `${name} (${
        unitSection(weight)
      }) rows=${c.rows} cols=${c.cols} m=${c.m} parts=${weight.parts.length}`;
      const bad = compareLinear(got, w, x, c.m, c.rows, c.cols, TOL);
      ok(bad === undefined, `${what}: ${bad}`);
      untouchedPast(what, got, c.m, c.rows);
      y.destroy();
      weight.destroy();
      xBuf.destroy();
    }
  });
}

Deno.test("gpu matvec subblock: workgroup shapes, including reductions wider than the workgroup", async () => {
  const gpu = await getGpu();
  const [rows, m] = [29, 8];
  // 16 units per row (Q4_K, Q8_0, Q3_K); 7 units with a ragged last one (BF16, plain layout).
  const weights = [["Q4_K", 512], ["Q8_0", 512], ["Q3_K", 512], ["BF16", 200]] as const;
  const tunings: MatvecTuning[] = [
    { workgroupSize: 32, rowsPerWorkgroup: 8, tokensPerWorkgroup: 4 }, // 32 sums × 8 lanes over 32 threads
    { workgroupSize: 32, rowsPerWorkgroup: 1, tokensPerWorkgroup: 1 },
    { workgroupSize: 256, rowsPerWorkgroup: 5, tokensPerWorkgroup: 3 }, // more threads than units
    { workgroupSize: 64, rowsPerWorkgroup: 2, tokensPerWorkgroup: 8 },
    // Several units per step: 16 units per row over 32 threads (a ragged last step).
    { workgroupSize: 32, rowsPerWorkgroup: 3, tokensPerWorkgroup: 2, unitsPerStep: 2 },
    { workgroupSize: 32, rowsPerWorkgroup: 4, tokensPerWorkgroup: 1, unitsPerStep: 4 },
    // Fewer workgroups than row groups: each takes several in turn (15 groups over 4, 29 over 1).
    { workgroupSize: 32, rowsPerWorkgroup: 2, tokensPerWorkgroup: 3, maxWorkgroups: 4 },
    { workgroupSize: 64, rowsPerWorkgroup: 1, tokensPerWorkgroup: 8, maxWorkgroups: 1 },
    // Loads a step ahead: within a row group (16 units over 32 threads: two steps), across the groups a
    // workgroup takes in turn, and with more threads than units.
    { workgroupSize: 32, rowsPerWorkgroup: 2, tokensPerWorkgroup: 3, prefetchGroups: true },
    { workgroupSize: 32, rowsPerWorkgroup: 3, tokensPerWorkgroup: 2, maxWorkgroups: 4, prefetchGroups: true },
    {
      workgroupSize: 32,
      rowsPerWorkgroup: 1,
      tokensPerWorkgroup: 1,
      unitsPerStep: 2,
      maxWorkgroups: 5,
      prefetchGroups: true,
    },
    {
      workgroupSize: 256,
      rowsPerWorkgroup: 4,
      tokensPerWorkgroup: 2,
      maxWorkgroups: 2,
      prefetchGroups: true,
    },
  ];
  for (const [name, cols] of weights) {
    const { weight, w } = randomWeight(gpu, name, rows, cols);
    const x = randomF32(m * cols);
    const xBuf = gpu.buffer("x", x.byteLength, x);
    const step = new StepParams(gpu, m);
    for (const tuning of tunings) {
      const y = nans(gpu, "y", m * rows);
      const op = createMatvec(gpu, { label: "t", weight, x: xBuf, y, maxTokens: m, step, tuning });
      for (const n of [m, 5]) {
        const [got] = await runOps(gpu, [op], step, n, 0, [y]);
        const bad = compareLinear(got, w, x, n, rows, cols, TOL);
        ok(bad === undefined, `${name} ${JSON.stringify(tuning)} m=${n}: ${bad}`);
      }
      y.destroy();
    }
    weight.destroy();
    xBuf.destroy();
  }
});

Deno.test("gpu matvec subblock: unit sections per type and row length, one-line errors", async () => {
  const gpu = await getGpu();
  // Every type the GPU reads has a unit kind, and the host's tables name exactly the sections of the file.
  const sections = unitSections();
  deepEqual(
    [...sections.keys()].filter((s) => s !== "COMMON" && !s.endsWith("_INT8")).sort(),
    [...new Set(Object.keys(UNIT_SECTION_WORDS).flatMap((k) => UNIT_KIND_SECTIONS[k] ?? [k]))].sort(),
  );
  for (const type of DEQUANT_SECTIONS) ok(type in UNIT_SECTION_WORDS, `${type} has no unit kind`);
  // The int8 sections are exactly those of the unit kinds that list them.
  deepEqual(
    [...sections.keys()].filter((s) => s.endsWith("_INT8")).sort(),
    [...INT8_UNIT_SECTIONS].map((s) => `${s}_INT8`).sort(),
  );
  const section = (type: string, cols: number) => unitSection(randomWeight(gpu, type, 1, cols).weight);
  equal(section("F16", 512), "F16");
  equal(section("F16", 96), "F16_PLAIN");
  equal(section("F32", 36), "F32_PLAIN");
  equal(section("BF16", 4), "BF16_PLAIN");
  equal(section("Q5_1", 96), "Q5_1");
  equal(section("Q3_K", 256), "Q3_K");

  // Unquantised rows that are not a multiple of 4 values: no decode kernel (the model falls back to the CPU).
  const odd = randomWeight(gpu, "F32", 2, 37).weight;
  const reason = "w.F32 has rows of 37 F32 values, not a multiple of 4";
  equal(matvecBlocker(odd), reason);
  equal(matvecBlocker(randomWeight(gpu, "F16", 2, 36).weight), undefined);
  const step = new StepParams(gpu, 1);
  const x = gpu.buffer("x", 256 * 4);
  const y = gpu.buffer("y", 2 * 4);
  throws(
    () => createMatvec(gpu, { label: "q", weight: odd, x, y, maxTokens: 1, step }),
    (e: Error) => e instanceof UnsupportedError && e.message === `q: no decode kernel: ${reason}`,
  );
  throws(() => unitSection(odd), UnsupportedError);

  const q6 = randomWeight(gpu, "Q6_K", 2, 256).weight;
  throws(
    () =>
      createMatvec(gpu, { label: "q", weight: q6, x, y, maxTokens: 1, step, tuning: { unitsPerStep: 3 } }),
    /q: unitsPerStep must be 1, 2 or 4, got 3/,
  );
  for (const maxWorkgroups of [0, 1.5]) {
    throws(
      () =>
        createMatvec(gpu, { label: "q", weight: q6, x, y, maxTokens: 1, step, tuning: { maxWorkgroups } }),
      (e: Error) =>
        e instanceof BadFlagError &&
        e.message === `q: maxWorkgroups must be an integer ≥ 1, got ${maxWorkgroups}`,
    );
  }
  // The kernel choice is gone: a tuning that still names it is rejected rather than silently ignored.
  throws(
    () =>
      createMatvec(gpu, {
        label: "q",
        weight: q6,
        x,
        y,
        maxTokens: 1,
        step,
        tuning: { variant: "dq16" } as MatvecTuning,
      }),
    (e: Error) => e instanceof BadFlagError && /^q: unknown decode tuning field "variant"/.test(e.message),
  );
  equal(reduceLanes(32), 8);
  equal(reduceLanes(64), 8);
  equal(reduceLanes(128), 16);
  equal(reduceLanes(1024), 32);
  const source = unitsSource("Q3_K", "c");
  ok(source.includes("fn unit_load_c(") && source.includes("struct Raw_c") && source.includes("W_c["));
  ok(source.includes("fn load8_c(") && source.includes("fn x_runs8_c("));
  ok(!/\bW\[/.test(source) && !/\bunit_dot\(/.test(source) && !/\bskip_half2\(/.test(source));
  throws(() => unitsSource("Q4_2", "a"), UnsupportedError);
  equal(
    suffixDeclaredNames("const K = 1u; fn f() -> u32 { return K + W[0]; }", "b"),
    "const K_b = 1u; fn f_b() -> u32 { return K_b + W_b[0]; }",
  );
});

interface GateUpCase {
  type: string;
  rows: number;
  cols: number;
  m: number;
  /** Also run a 32-thread workgroup with 4 units per step. */
  wide?: boolean;
}

Deno.test("gpu matvec subblock: fused gate/up + SwiGLU matches the CPU reference for every type", async () => {
  const gpu = await getGpu();
  const cases: GateUpCase[] = [
    { type: "F32", rows: 5, cols: 100, m: 2, wide: true }, // plain units, the last one ragged
    { type: "F16", rows: 5, cols: 256, m: 2 }, // interleaved units
    { type: "BF16", rows: 3, cols: 64, m: 1 }, // plain units
    { type: "Q8_0", rows: 9, cols: 256, m: 6 },
    { type: "Q4_0", rows: 7, cols: 96, m: 3 },
    { type: "Q4_1", rows: 1, cols: 32, m: 1 },
    { type: "Q5_0", rows: 7, cols: 32, m: 3, wide: true },
    { type: "Q5_1", rows: 33, cols: 64, m: 1 },
    { type: "Q2_K", rows: 7, cols: 256, m: 3 },
    { type: "Q3_K", rows: 9, cols: 256, m: 2, wide: true },
    { type: "Q4_K", rows: 21, cols: 512, m: 1, wide: true },
    { type: "Q5_K", rows: 5, cols: 256, m: 3 },
    { type: "Q6_K", rows: 7, cols: 256, m: 3 },
  ];
  ok(TYPES.every((t) => cases.some((c) => c.type === t)), "a type without a gate/up case");
  const silu = (v: number) => v / (1 + Math.exp(-v));
  for (const c of cases) {
    const maxTokens = c.m + 1;
    const x = randomF32(maxTokens * c.cols);
    const { gate, up, xBuf, step, fields } = gateUpCase(gpu, c.type, c.rows, c.cols, x);
    const g = products(gate.w, x, c.m, c.rows, c.cols);
    const u = products(up.w, x, c.m, c.rows, c.cols);
    const tunings = [
      { tokensPerWorkgroup: 4, rowsPerWorkgroup: 3 },
      { tokensPerWorkgroup: 2, rowsPerWorkgroup: 2, maxWorkgroups: 3 },
      {
        workgroupSize: 32,
        tokensPerWorkgroup: 2,
        rowsPerWorkgroup: 2,
        maxWorkgroups: 3,
        prefetchGroups: true,
      },
      ...(c.wide ? [{ workgroupSize: 32, tokensPerWorkgroup: 2, rowsPerWorkgroup: 2, unitsPerStep: 4 }] : []),
    ];
    for (const tuning of tunings) {
      const out = nans(gpu, "out", maxTokens * c.rows);
      const op = createGateUpSwiGlu(gpu, { ...fields(out), tuning });
      const [got] = await runOps(gpu, [op], step, c.m, 0, [out]);
      const what = `${c.type} ${JSON.stringify(tuning)} rows=${c.rows} cols=${c.cols} m=${c.m}`;
      for (let i = 0; i < c.m * c.rows; i++) {
        const want = silu(g.sum[i]) * u.sum[i];
        const bound = TOL * (1.1 * g.abs[i] * Math.abs(u.sum[i]) + Math.abs(silu(g.sum[i])) * u.abs[i]) +
          1e-30;
        ok(Math.abs(got[i] - want) <= bound, `${what}: out[${i}] = ${got[i]}, expected ${want}`);
      }
      untouchedPast(what, got, c.m, c.rows);
      out.destroy();
    }
    gate.weight.destroy();
    up.weight.destroy();
    xBuf.destroy();
  }
});

Deno.test("gpu matvec subblock: fused QKV + RoPE with mixed types matches the CPU reference", async () => {
  const gpu = await getGpu();
  const cases: QkvRopeCase[] = [
    {
      types: ["Q4_K", "Q4_K", "Q6_K"],
      cols: 512,
      headDim: 6,
      ropeDim: 4,
      qHeads: 3,
      kvHeads: 1,
      m: 2,
      pos0: 77,
    },
    {
      types: ["Q8_0", "Q5_K", "F16"],
      cols: 256,
      headDim: 4,
      ropeDim: 4,
      qHeads: 5,
      kvHeads: 3,
      m: 1,
      pos0: 3,
    },
    {
      types: ["BF16", "F32", "Q6_K"],
      cols: 256,
      headDim: 2,
      ropeDim: 2,
      qHeads: 3,
      kvHeads: 1,
      m: 5,
      pos0: 0,
    },
    {
      types: ["Q4_0", "Q5_1", "Q3_K"],
      cols: 256,
      headDim: 4,
      ropeDim: 2,
      qHeads: 3,
      kvHeads: 1,
      m: 3,
      pos0: 9,
    },
    {
      types: ["Q2_K", "Q4_1", "Q5_0"],
      cols: 256,
      headDim: 6,
      ropeDim: 6,
      qHeads: 1,
      kvHeads: 1,
      m: 1,
      pos0: 40,
    },
    // Plain units with a ragged last one (100 = 3 · 32 + 4).
    {
      types: ["F16", "BF16", "F32"],
      cols: 100,
      headDim: 4,
      ropeDim: 4,
      qHeads: 7,
      kvHeads: 1,
      m: 3,
      pos0: 5,
    },
  ];
  for (const c of cases) {
    await checkQkvRope(gpu, c, { tokensPerWorkgroup: 2, rowsPerWorkgroup: 4 }, TOL);
  }
});

Deno.test("gpu matvec subblock: rows of 8192 values and more take 256 threads where the reduction fits", async () => {
  const limits = (storage: number, invocations = 256) =>
    ({
      limits: { maxComputeWorkgroupStorageSize: storage, maxComputeInvocationsPerWorkgroup: invocations },
    }) as unknown as Gpu;
  equal(longRowWorkgroup(limits(16384), 14336, 5 * 4), 256);
  equal(longRowWorkgroup(limits(16384), 8192, 5 * 4 * 4), 128); // 4 tokens: 20 KiB would not fit
  equal(longRowWorkgroup(limits(16384, 128), 8192, 5 * 4), 128);
  equal(longRowWorkgroup(limits(16384), 4096, 5 * 4), 64);
  // The default at such rows against the CPU reference, one token and several.
  const gpu = await getGpu();
  const [rows, cols, m] = [9, 8192, 3];
  for (const name of ["Q4_K", "Q6_K"]) {
    const { weight, w } = randomWeight(gpu, name, rows, cols);
    const x = randomF32(m * cols);
    const xBuf = gpu.buffer("x", x.byteLength, x);
    const step = new StepParams(gpu, m);
    const y = nans(gpu, "y", m * rows);
    const op = createMatvec(gpu, { label: "t", weight, x: xBuf, y, maxTokens: m, step });
    for (const n of [m, 1]) {
      const [got] = await runOps(gpu, [op], step, n, 0, [y]);
      const bad = compareLinear(got, w, x, n, rows, cols, TOL);
      ok(bad === undefined, `${name} m=${n}: ${bad}`);
    }
    y.destroy();
    weight.destroy();
    xBuf.destroy();
  }
});
