// The decode products with int8 input (x quantised per 16 values in workgroup memory, or once per step by a
// pass of its own with `sharedInt8`; integer dot products; `int8: true` in the decode tunings) against the CPU reference with the same quantised x
// (int8InputReference): every weight type with int8 units, odd row counts, rows whose blocks start 2 bytes
// into a word, weights split into parts, several tokens per workgroup, the fused gate/up + SwiGLU and QKV +
// RoPE entries with mixed types, and a folded norm's producer. Cases with several outputs also check that
// the int8 form ran: its results are not all within the f32 tolerance of the products with the exact x. Inputs are fresh random
// values; every output of the step's tokens is checked and none past them may be written.

import { equal, ok } from "node:assert/strict";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createGateUpSwiGlu, type FusedMatvecTuning } from "../src/gpu/ops/fused.ts";
import { createMatvec, type MatvecTuning } from "../src/gpu/ops/matmul.ts";
import { createChainedInt8 } from "../src/gpu/ops/int8_input.ts";
import {
  INT8_UNIT_SECTIONS,
  int8InputFits,
  int8InputReference,
  int8MatvecBlocker,
} from "../src/gpu/ops/matvec_units.ts";
import type { GpuWeight } from "../src/gpu/weights.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { compareLinear, products, randomWeight as randomQuantWeight } from "./gpu_quant_data.ts";
import {
  gateUpCase,
  nanBuffer as nans,
  randomF32,
  randomInt8Input,
  runOps,
  subgroupReduceOrEmulated,
  untouchedPast,
} from "./gpu_ops_helpers.ts";
import { checkQkvRope, type QkvRopeCase } from "./gpu_qkv_rope_check.ts";

const TOL = 2e-5;
const randomWeight = (gpu: Gpu, name: string, rows: number, cols: number, maxPartBytes?: number) =>
  randomQuantWeight(gpu, `w.${name}`, name, rows, cols, maxPartBytes);

/** The dispatches `op` records. */
function dispatchCount(op: GpuOp): number {
  let n = 0;
  const pass = { setPipeline() {}, setBindGroup() {}, dispatchWorkgroups: () => n++ };
  op.encode(pass as unknown as GPUComputePassEncoder);
  return n;
}

const CASES: Record<string, { rows: number; cols: number; m: number; parts?: number }[]> = {
  Q8_0: [{ rows: 1, cols: 32, m: 1 }, { rows: 7, cols: 96, m: 3 }, { rows: 37, cols: 256, m: 8, parts: 4 }],
  Q4_0: [{ rows: 7, cols: 32, m: 3 }, { rows: 33, cols: 96, m: 1 }],
  // (2048 values over 32 threads: each thread quantises four blocks of x.)
  Q4_K: [
    { rows: 1, cols: 256, m: 1 },
    { rows: 33, cols: 768, m: 3 },
    { rows: 37, cols: 512, m: 8, parts: 4 },
    { rows: 5, cols: 2048, m: 3 },
  ],
  Q5_K: [{ rows: 7, cols: 256, m: 3 }, { rows: 9, cols: 512, m: 1 }],
  Q6_K: [{ rows: 1, cols: 256, m: 1 }, { rows: 7, cols: 256, m: 3 }, { rows: 33, cols: 768, m: 2, parts: 4 }],
};

Deno.test("gpu matvec int8: every type with int8 units matches the reference with quantised x", async () => {
  const gpu = await getGpu();
  equal([...INT8_UNIT_SECTIONS].sort().join(), Object.keys(CASES).sort().join());
  const tunings: MatvecTuning[] = [
    { int8: true, tokensPerWorkgroup: 4, rowsPerWorkgroup: 3 },
    { int8: true, workgroupSize: 32, tokensPerWorkgroup: 2, rowsPerWorkgroup: 2, unitsPerStep: 4 },
    // Several row groups per workgroup: x quantised once, for the first.
    { int8: true, tokensPerWorkgroup: 3, rowsPerWorkgroup: 2, maxWorkgroups: 3 },
    // The same with loads a step ahead (x still quantised once, after the first group's loads).
    {
      int8: true,
      workgroupSize: 32,
      tokensPerWorkgroup: 3,
      rowsPerWorkgroup: 2,
      maxWorkgroups: 3,
      prefetchGroups: true,
    },
    // x quantised once per step by a pass before the product (several token groups, several row groups per
    // workgroup with loads a step ahead).
    { int8: true, sharedInt8: true, tokensPerWorkgroup: 3, rowsPerWorkgroup: 3 },
    {
      int8: true,
      sharedInt8: true,
      workgroupSize: 32,
      tokensPerWorkgroup: 2,
      rowsPerWorkgroup: 2,
      maxWorkgroups: 3,
      prefetchGroups: true,
    },
    // Sums per subgroup first (the GPU's subgroups of 32, else the emulation).
    {
      int8: true,
      workgroupSize: 64,
      tokensPerWorkgroup: 2,
      rowsPerWorkgroup: 2,
      subgroupReduce: subgroupReduceOrEmulated(gpu),
    },
  ];
  for (const [name, cases] of Object.entries(CASES)) {
    for (const c of cases) {
      const bytesPerRow = randomWeight(gpu, name, 1, c.cols).weight.rowBytes;
      const { weight, w } = randomWeight(gpu, name, c.rows, c.cols, c.parts && bytesPerRow * 10 + 3);
      equal(weight.parts.length, c.parts ?? 1);
      equal(int8MatvecBlocker([weight]), undefined);
      const maxTokens = c.m + 2;
      const x = randomInt8Input(maxTokens * c.cols);
      const xq = int8InputReference(x, c.cols);
      const xBuf = gpu.buffer("x", x.byteLength, x);
      const step = new StepParams(gpu, maxTokens);
      for (const tuning of tunings) {
        const y = nans(gpu, "y", maxTokens * c.rows);
        const op = createMatvec(gpu, { label: name, weight, x: xBuf, y, maxTokens, step, tuning });
        // A dispatch per part, after the quantisation pass with shared int8 input.
        equal(dispatchCount(op), weight.parts.length + (tuning.sharedInt8 ? 1 : 0));
        const [got] = await runOps(gpu, [op], step, c.m, 0, [y]);
        const what = `${name} ${JSON.stringify(tuning)} rows=${c.rows} cols=${c.cols} m=${c.m}`;
        const bad = compareLinear(got, w, xq, c.m, c.rows, c.cols, TOL);
        ok(bad === undefined, `${what}: ${bad}`);
        // (One output may land within the f32 tolerance by chance; seven or more all doing so would not.)
        if (c.rows * c.m >= 7) {
          ok(compareLinear(got, w, x, c.m, c.rows, c.cols, TOL) !== undefined, `${what}: the f32 form ran`);
        }
        untouchedPast(what, got, c.m, c.rows);
        y.destroy();
      }
      weight.destroy();
      xBuf.destroy();
    }
  }
});

Deno.test("gpu matvec int8: types without int8 units keep the f32 products", async () => {
  const gpu = await getGpu();
  const { weight, w } = randomWeight(gpu, "Q3_K", 5, 256);
  ok(/w\.Q3_K is Q3_K, which has no int8 units/.test(int8MatvecBlocker([weight]) ?? ""));
  const x = randomInt8Input(256);
  const xBuf = gpu.buffer("x", x.byteLength, x);
  const step = new StepParams(gpu, 1);
  const y = nans(gpu, "y", 5);
  const op = createMatvec(gpu, {
    label: "q3",
    weight,
    x: xBuf,
    y,
    maxTokens: 1,
    step,
    tuning: { int8: true },
  });
  const [got] = await runOps(gpu, [op], step, 1, 0, [y]);
  equal(compareLinear(got, w, x, 1, 5, 256, TOL), undefined);
  equal(
    int8MatvecBlocker([randomWeight(gpu, "F16", 2, 256).weight]),
    "w.F16 is F16, which has no int8 units",
  );
});

Deno.test("gpu matvec int8: a folded norm's producer adds int8 products onto the residual", async () => {
  for (const sharedInt8 of [false, true]) await checkFoldedProducer(sharedInt8);
});

async function checkFoldedProducer(sharedInt8: boolean): Promise<void> {
  const gpu = await getGpu();
  const [rows, cols, m] = [37, 512, 3];
  const { weight, w } = randomWeight(gpu, "Q4_K", rows, cols);
  const x = randomInt8Input(m * cols);
  const residual = randomF32(m * rows);
  const gamma = randomF32(rows);
  const xBuf = gpu.buffer("x", x.byteLength, x);
  const y = gpu.buffer("y", residual.byteLength, residual);
  const out = nans(gpu, "norm out", m * rows);
  const sums = gpu.buffer("sums", m * rows * 4);
  const gammaBuf = gpu.buffer("gamma", gamma.byteLength, gamma);
  const step = new StepParams(gpu, m);
  const op = createMatvec(gpu, {
    label: "o",
    weight,
    x: xBuf,
    y,
    maxTokens: m,
    step,
    tuning: { int8: true, rowsPerWorkgroup: 4, sharedInt8 },
    fold: { weight: gammaBuf, out, sums },
  });
  const [gotY, gotOut] = await runOps(gpu, [op], step, m, 0, [y, out]);
  const { sum, abs } = products(w, int8InputReference(x, cols), m, rows, cols);
  for (let i = 0; i < m * rows; i++) {
    const want = residual[i] + sum[i];
    const bound = TOL * (abs[i] + Math.abs(residual[i])) + 1e-30;
    ok(Math.abs(gotY[i] - want) <= bound, `y[${i}] = ${gotY[i]}, expected ${want}`);
    const r = i % rows;
    ok(Math.abs(gotOut[i] - want * gamma[r]) <= bound * Math.abs(gamma[r]) + 1e-30, `norm out[${i}]`);
  }
}

Deno.test("gpu matvec int8: fused gate/up + SwiGLU and QKV + RoPE with mixed types", async () => {
  const gpu = await getGpu();
  const silu = (v: number) => v / (1 + Math.exp(-v));
  for (
    const [type, rows, cols, m] of [["Q4_K", 21, 512, 1], ["Q6_K", 7, 256, 3], ["Q8_0", 9, 96, 2]] as const
  ) {
    const maxTokens = m + 1;
    const x = randomInt8Input(maxTokens * cols);
    const xq = int8InputReference(x, cols);
    const { gate, up, step, fields } = gateUpCase(gpu, type, rows, cols, x);
    const g = products(gate.w, xq, m, rows, cols);
    const u = products(up.w, xq, m, rows, cols);
    const exact = products(gate.w, x, m, rows, cols);
    const out = nans(gpu, "out", maxTokens * rows);
    const op = createGateUpSwiGlu(gpu, {
      ...fields(out),
      // Loads a step ahead for two of the three types (both paths run).
      tuning: {
        int8: true,
        tokensPerWorkgroup: 2,
        rowsPerWorkgroup: 3,
        maxWorkgroups: 2,
        prefetchGroups: type !== "Q8_0",
        // x quantised by a pass of its own for two of the three types.
        sharedInt8: type !== "Q6_K",
      },
    });
    const [got] = await runOps(gpu, [op], step, m, 0, [out]);
    let offExact = false;
    for (let i = 0; i < m * rows; i++) {
      const want = silu(g.sum[i]) * u.sum[i];
      const bound = TOL * (1.1 * g.abs[i] * Math.abs(u.sum[i]) + Math.abs(silu(g.sum[i])) * u.abs[i]) + 1e-30;
      ok(Math.abs(got[i] - want) <= bound, `${type} gate/up: out[${i}] = ${got[i]}, expected ${want}`);
      if (Math.abs(g.sum[i] - exact.sum[i]) > 10 * TOL * g.abs[i]) offExact = true;
    }
    ok(offExact, `${type} gate/up: quantising x changed nothing`);
    untouchedPast(`${type} gate/up`, got, m, rows);
  }

  // QKV + RoPE: each workgroup quantising its input (several row groups per workgroup), then the shared pass.
  const head = { headDim: 8, ropeDim: 8, kvHeads: 1 };
  const qkvCases: [QkvRopeCase, FusedMatvecTuning][] = [
    [
      { ...head, types: ["Q4_K", "Q5_K", "Q6_K"], cols: 512, qHeads: 3, m: 2, pos0: 41 },
      { int8: true, tokensPerWorkgroup: 2, rowsPerWorkgroup: 4, maxWorkgroups: 3 },
    ],
    [
      { ...head, types: ["Q4_K", "Q8_0", "Q6_K"], cols: 256, qHeads: 2, m: 3, pos0: 7 },
      { int8: true, sharedInt8: true, tokensPerWorkgroup: 2, rowsPerWorkgroup: 2 },
    ],
  ];
  for (const [c, tuning] of qkvCases) await checkQkvRope(gpu, c, tuning, TOL);
});

Deno.test("gpu matvec int8: a product writes the next one's shared int8 input (int8Out → int8In)", async () => {
  const gpu = await getGpu();
  const [cols, hidden, ff, maxTokens] = [256, 256, 512, 4];
  const identical = (what: string, got: Float32Array, want: Float32Array) =>
    ok(
      got.every((v, i) => Object.is(v, want[i])),
      `${what}: differs from the product's own quantisation pass`,
    );
  for (const rowsPerWorkgroup of [4, 2]) {
    // A folded norm's producer (rows of `hidden`) writing the fused gate/up's input, which writes ffn_down's.
    const wo = randomWeight(gpu, "Q4_K", hidden, cols);
    const x = randomInt8Input(maxTokens * cols);
    const xBuf = gpu.buffer("x", x.byteLength, x);
    const residual = randomF32(maxTokens * hidden);
    const gamma = gpu.buffer("gamma", hidden * 4, randomF32(hidden));
    const step = new StepParams(gpu, maxTokens);
    const gateUp = gateUpCase(gpu, "Q4_K", ff, hidden, new Float32Array(maxTokens * hidden));
    const down = randomWeight(gpu, "Q6_K", 9, ff);
    const xnInt8 = createChainedInt8(gpu, "xn int8", hidden, maxTokens);
    const hInt8 = createChainedInt8(gpu, "h int8", ff, maxTokens);
    const run = async (chained: boolean, m: number) => {
      const y = gpu.buffer("y", residual.byteLength, residual);
      const xn = nans(gpu, "xn", maxTokens * hidden), sums = gpu.buffer("sums", maxTokens * hidden * 4);
      const h = nans(gpu, "h", maxTokens * ff), out = nans(gpu, "out", maxTokens * 9);
      const shared = { int8: true, sharedInt8: true } as const;
      const producer = createMatvec(gpu, {
        label: "attn_output",
        weight: wo.weight,
        x: xBuf,
        y,
        maxTokens,
        step,
        tuning: { int8: true, rowsPerWorkgroup },
        fold: { weight: gamma, out: xn, sums },
        int8Out: chained ? xnInt8 : undefined,
      });
      const norm = { sums, partials: producer.normPartials, width: hidden, eps: 1e-5 };
      const ffn = createGateUpSwiGlu(gpu, {
        ...gateUp.fields(h),
        x: xn,
        step,
        norm,
        tuning: { ...shared, rowsPerWorkgroup: rowsPerWorkgroup / 2 },
        int8In: chained ? xnInt8 : undefined,
        int8Out: chained ? hInt8 : undefined,
      });
      const last = createMatvec(gpu, {
        label: "ffn_down",
        weight: down.weight,
        x: h,
        y: out,
        maxTokens,
        step,
        tuning: shared,
        int8In: chained ? hInt8 : undefined,
      });
      // One dispatch each when chained; the gate/up and ffn_down passes otherwise.
      equal([producer, ffn, last].map(dispatchCount).join(), chained ? "1,1,1" : "1,2,2");
      return await runOps(gpu, [producer, ffn, last], step, m, 0, [h, out]);
    };
    // Twice, with fewer tokens the second time: the arrivals must be back to zero after each dispatch.
    for (const m of [3, 2]) {
      const [hOwn, outOwn] = await run(false, m);
      const [hChained, outChained] = await run(true, m);
      identical(`rows per workgroup ${rowsPerWorkgroup}, ${m} tokens: SwiGLU`, hChained, hOwn);
      identical(`rows per workgroup ${rowsPerWorkgroup}, ${m} tokens: ffn_down`, outChained, outOwn);
      untouchedPast(`chained ffn_down, ${m} tokens`, outChained, m, 9);
    }
  }
});

Deno.test("gpu matvec int8: the shared input needs no workgroup memory for x (int8InputFits)", () => {
  // Rows of 1024 values: 1536 bytes of int8 input per token in workgroup memory.
  const gpu = { limits: { maxComputeWorkgroupStorageSize: 2048 } } as unknown as Gpu;
  const weight = { info: { name: "Q4_K" }, cols: 1024, name: "w" } as unknown as GpuWeight;
  equal(int8InputFits(gpu, true, [weight], 1, 600), false);
  equal(int8InputFits(gpu, true, [weight], 1, 600, true), true);
  equal(int8InputFits(gpu, true, [weight], 1, 2100, true), false);
  equal(int8InputFits(gpu, false, [weight], 1, 600, true), false);
});
