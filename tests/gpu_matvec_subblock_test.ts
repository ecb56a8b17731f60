// The sub-block decode kernels (wgsl/matvec_fast.wgsl + wgsl/matvec_units.wgsl) against the CPU reference,
// next to the dq16 kernels: every type with a unit section, odd row counts, rows that start 2 bytes into a
// word (Q8_0, Q6_K), weights split into parts, 1..8 tokens, workgroup shapes whose reduction needs several
// passes, and the fused gate/up + SwiGLU and QKV + RoPE entry points with mixed types.

import { equal, ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createGateUpSwiGlu, createQkvMatvec } from "../src/gpu/ops/fused.ts";
import { createMatvec, type MatvecTuning } from "../src/gpu/ops/matmul.ts";
import {
  chooseMatvecVariant,
  MATVEC_VARIANTS,
  type MatvecVariant,
  reduceLanes,
  subblockBlocker,
  suffixDeclaredNames,
  unitsSource,
} from "../src/gpu/ops/matvec_units.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { typeInfo } from "../src/gguf/types.ts";
import { rope, ropeInverseFrequencies } from "../src/model/ops.ts";
import {
  compareLinear,
  products,
  randomF32,
  randomWeight as randomQuantWeight,
  typeOf,
} from "./gpu_quant_data.ts";
import { nanBuffer as nans, runOps, untouchedPast } from "./gpu_ops_helpers.ts";

const TOL = 2e-5;
/** A random weight of type `name`, `rows` × `cols`, on the GPU (optionally split) and dequantised. */
const randomWeight = (gpu: Gpu, name: string, rows: number, cols: number, maxPartBytes?: number) =>
  randomQuantWeight(gpu, `w.${name}`, name, rows, cols, maxPartBytes);

const SUBBLOCK_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_K", "Q5_K", "Q6_K"];

interface MatvecCase {
  rows: number;
  /** Columns in units of 256 (every sub-block type accepts those). */
  groups: number;
  m: number;
  maxPartBytes?: number;
}

for (const name of SUBBLOCK_TYPES) {
  Deno.test(`gpu matvec subblock: ${name} matches the CPU reference in both variants, split and odd shapes`, async () => {
    const gpu = await getGpu();
    const info = typeInfo(typeOf(name), name);
    const rowBytes = (r: number) => 256 / info.blockSize * info.bytesPerBlock * r;
    const cases: MatvecCase[] = [
      { rows: 1, groups: 1, m: 1 },
      { rows: 13, groups: 1, m: 3 }, // 210- and 34·8-byte rows: Q6_K and Q8_0 rows start mid-word
      { rows: 37, groups: 3, m: 8, maxPartBytes: rowBytes(3 * 10) + 3 }, // parts of 10 rows, 4 parts
    ];
    for (const c of cases) {
      const cols = 256 * c.groups;
      const { weight, w } = randomWeight(gpu, name, c.rows, cols, c.maxPartBytes);
      if (c.maxPartBytes) equal(weight.parts.length, 4);
      equal(chooseMatvecVariant("t", [weight]), "subblock");
      const maxTokens = c.m + 2;
      const x = randomF32(maxTokens * cols);
      const xBuf = gpu.buffer("x", x.byteLength, x);
      const step = new StepParams(gpu, maxTokens);
      for (const variant of MATVEC_VARIANTS) {
        const y = nans(gpu, "y", maxTokens * c.rows);
        const tuning: MatvecTuning = { variant, tokensPerWorkgroup: 4, rowsPerWorkgroup: 3 };
        const op = createMatvec(gpu, { label: name, weight, x: xBuf, y, maxTokens, step, tuning });
        const [got] = await runOps(gpu, [op], step, c.m, 0, [y]);
        const what = `${name} ${variant} rows=${c.rows} cols=${cols} m=${c.m} parts=${weight.parts.length}`;
        const bad = compareLinear(got, w, x, c.m, c.rows, cols, TOL);
        ok(bad === undefined, `${what}: ${bad}`);
        untouchedPast(what, got, c.m, c.rows);
        y.destroy();
      }
      weight.destroy();
      xBuf.destroy();
    }
  });
}

Deno.test("gpu matvec subblock: workgroup shapes, including reductions wider than the workgroup", async () => {
  const gpu = await getGpu();
  const [rows, cols, m] = [29, 512, 8];
  const q4 = randomWeight(gpu, "Q4_K", rows, cols);
  const q8 = randomWeight(gpu, "Q8_0", rows, cols);
  const x = randomF32(m * cols);
  const xBuf = gpu.buffer("x", x.byteLength, x);
  const step = new StepParams(gpu, m);
  const tunings: MatvecTuning[] = [
    { workgroupSize: 32, rowsPerWorkgroup: 8, tokensPerWorkgroup: 4 }, // 32 sums × 8 lanes over 32 threads
    { workgroupSize: 32, rowsPerWorkgroup: 1, tokensPerWorkgroup: 1 },
    { workgroupSize: 256, rowsPerWorkgroup: 5, tokensPerWorkgroup: 3 }, // more threads than units
    { workgroupSize: 64, rowsPerWorkgroup: 2, tokensPerWorkgroup: 8 },
    // Several units per step: 16 units of Q8_0 per row over 32 threads (a ragged last step), 2 of Q4_K.
    { workgroupSize: 32, rowsPerWorkgroup: 3, tokensPerWorkgroup: 2, unitsPerStep: 2 },
    { workgroupSize: 32, rowsPerWorkgroup: 4, tokensPerWorkgroup: 1, unitsPerStep: 4 },
  ];
  for (const [name, { weight, w }] of [["Q4_K", q4], ["Q8_0", q8]] as const) {
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
  }
});

Deno.test("gpu matvec subblock: variant choice and one-line errors", async () => {
  const gpu = await getGpu();
  const q40 = randomWeight(gpu, "Q4_0", 2, 256).weight;
  const f16 = randomWeight(gpu, "F16", 2, 96).weight;
  const q6 = randomWeight(gpu, "Q6_K", 2, 256).weight;
  equal(chooseMatvecVariant("t", [q6]), "subblock");
  equal(chooseMatvecVariant("t", [q6, q40]), "dq16");
  equal(chooseMatvecVariant("t", [f16]), "dq16");
  equal(chooseMatvecVariant("t", [q6], "dq16"), "dq16");
  ok(subblockBlocker(f16)?.includes("not a multiple of 256"));
  const step = new StepParams(gpu, 1);
  const x = gpu.buffer("x", 256 * 4);
  const y = gpu.buffer("y", 2 * 4);
  throws(
    () =>
      createMatvec(gpu, { label: "q", weight: q6, x, y, maxTokens: 1, step, tuning: { unitsPerStep: 3 } }),
    /q: unitsPerStep must be 1, 2 or 4, got 3/,
  );
  throws(
    () =>
      createMatvec(gpu, {
        label: "q",
        weight: q40,
        x,
        y,
        maxTokens: 1,
        step,
        tuning: { variant: "subblock" },
      }),
    (e: Error) =>
      e instanceof BadFlagError &&
      e.message === "q: variant subblock: w.Q4_0 is Q4_0, which has no sub-block kernel",
  );
  throws(
    () =>
      createMatvec(gpu, {
        label: "q",
        weight: q6,
        x,
        y,
        maxTokens: 1,
        step,
        tuning: { variant: "fast" as unknown as MatvecVariant },
      }),
    /q: variant must be subblock or dq16, got fast/,
  );
  equal(reduceLanes(32), 8);
  equal(reduceLanes(64), 8);
  equal(reduceLanes(128), 16);
  equal(reduceLanes(1024), 32);
  const source = unitsSource("Q6_K", "c");
  ok(source.includes("fn unit_load_c(") && source.includes("struct Raw_c") && source.includes("W_c["));
  ok(!/\bW\[/.test(source) && !/\bunit_dot\(/.test(source));
  equal(
    suffixDeclaredNames("const K = 1u; fn f() -> u32 { return K + W[0]; }", "b"),
    "const K_b = 1u; fn f_b() -> u32 { return K_b + W_b[0]; }",
  );
});

Deno.test("gpu matvec subblock: fused gate/up + SwiGLU in both variants matches the CPU reference", async () => {
  const gpu = await getGpu();
  const cases = [
    { type: "Q4_K", rows: 21, cols: 512, m: 1 },
    { type: "Q6_K", rows: 7, cols: 256, m: 3 },
    { type: "Q8_0", rows: 9, cols: 256, m: 6 },
    { type: "F16", rows: 5, cols: 256, m: 2 },
  ];
  const silu = (v: number) => v / (1 + Math.exp(-v));
  for (const c of cases) {
    const gate = randomWeight(gpu, c.type, c.rows, c.cols);
    const up = randomWeight(gpu, c.type, c.rows, c.cols);
    const maxTokens = c.m + 1;
    const x = randomF32(maxTokens * c.cols);
    const xBuf = gpu.buffer("x", x.byteLength, x);
    const step = new StepParams(gpu, maxTokens);
    const g = products(gate.w, x, c.m, c.rows, c.cols);
    const u = products(up.w, x, c.m, c.rows, c.cols);
    const tunings = [
      ...MATVEC_VARIANTS.map((variant) => ({ variant, tokensPerWorkgroup: 4, rowsPerWorkgroup: 3 })),
      { workgroupSize: 32, tokensPerWorkgroup: 2, rowsPerWorkgroup: 2, unitsPerStep: 4 },
    ];
    for (const tuning of tunings) {
      const out = nans(gpu, "out", maxTokens * c.rows);
      const op = createGateUpSwiGlu(gpu, {
        label: "gate_up",
        gate: gate.weight,
        up: up.weight,
        x: xBuf,
        out,
        maxTokens,
        step,
        tuning,
      });
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

Deno.test("gpu matvec subblock: fused QKV + RoPE with mixed types in both variants matches the CPU reference", async () => {
  const gpu = await getGpu();
  const cases = [
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
  ];
  for (const c of cases) {
    const qRows = c.qHeads * c.headDim;
    const kvRows = c.kvHeads * c.headDim;
    const ws = [
      randomWeight(gpu, c.types[0], qRows, c.cols),
      randomWeight(gpu, c.types[1], kvRows, c.cols),
      randomWeight(gpu, c.types[2], kvRows, c.cols),
    ];
    const maxTokens = c.m + 1;
    const x = randomF32(maxTokens * c.cols);
    const xBuf = gpu.buffer("x", x.byteLength, x);
    const step = new StepParams(gpu, maxTokens);
    const invFreq = ropeInverseFrequencies(c.ropeDim, 10000);
    const heads = [c.qHeads, c.kvHeads, 0];
    const wants = ws.map(({ w }, n) => {
      const rows = n === 0 ? qRows : kvRows;
      const { sum, abs } = products(w, x, c.m, rows, c.cols);
      const want = Float32Array.from(sum);
      if (heads[n] > 0) {
        for (let t = 0; t < c.m; t++) {
          rope(want.subarray(t * rows, (t + 1) * rows), heads[n], c.headDim, c.pos0 + t, invFreq);
        }
      }
      return { want, abs, rows };
    });
    for (const variant of MATVEC_VARIANTS) {
      const outs = wants.map(({ rows }, n) => nans(gpu, "qkv"[n], maxTokens * rows));
      const op = createQkvMatvec(gpu, {
        label: "qkv",
        wq: ws[0].weight,
        wk: ws[1].weight,
        wv: ws[2].weight,
        x: xBuf,
        q: outs[0],
        k: outs[1],
        v: outs[2],
        maxTokens,
        step,
        rope: { headDim: c.headDim, ropeDim: c.ropeDim, invFreq, maxPosition: 4096 },
        tuning: { variant, tokensPerWorkgroup: 2, rowsPerWorkgroup: 4 },
      });
      const got = await runOps(gpu, [op], step, c.m, c.pos0, outs);
      const what = `${c.types.join("/")} ${variant} m=${c.m}`;
      wants.forEach(({ want, abs, rows }, n) => {
        for (let i = 0; i < c.m * rows; i++) {
          const mag = heads[n] > 0 ? Math.max(abs[i], abs[i ^ 1]) : abs[i];
          const bound = 2 * TOL * mag + 1e-30;
          ok(
            Math.abs(got[n][i] - want[i]) <= bound,
            `${what}: ${"qkv"[n]}[${i}] = ${got[n][i]}, expected ${want[i]}`,
          );
        }
        untouchedPast(`${what} ${"qkv"[n]}`, got[n], c.m, rows);
      });
      for (const b of outs) b.destroy();
    }
    for (const { weight } of ws) weight.destroy();
    xBuf.destroy();
  }
});
