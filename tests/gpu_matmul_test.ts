import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createGateUpSwiGluMatmul } from "../src/gpu/ops/fused.ts";
import {
  createMatmul,
  createMatvec,
  type MatmulTuning,
  matmulWorkgroupBytes,
} from "../src/gpu/ops/matmul.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { GpuWeight } from "../src/gpu/weights.ts";
import { typeInfo } from "../src/gguf/types.ts";
import {
  compareLinear,
  dequantized,
  products,
  randomBlocks,
  randomF32,
  typeOf,
  TYPES,
} from "./gpu_quant_data.ts";
import {
  gateUpCase,
  nanBuffer,
  productCase,
  randomF32 as nonZeroF32,
  runOps,
  untouchedPast,
} from "./gpu_ops_helpers.ts";

/** Runs `op` once with `m` tokens and returns y ([maxTokens][rows], NaN where not written). */
export async function runLinear(gpu: Gpu, op: GpuOp, step: StepParams, m: number, y: GPUBuffer) {
  step.set(m);
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  op.encode(pass);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  return await gpu.readF32(y);
}

interface Case {
  rows: number;
  cols: number;
  kernel: "matvec" | "matmul";
  m: number;
}

/**
 * Odd shapes: 1, 2 and 3 blocks per row and a realistic 2048 columns; few and many tokens. The decode
 * kernels read unquantised rows in vec4s, so for them a "block" of F32, F16 or BF16 is 4 values (rows of 4,
 * 8 and 12: one ragged unit each); prefill takes rows of any length.
 */
function cases(blockSize: number): Case[] {
  const unit = Math.max(blockSize, 4);
  return [
    { rows: 1, cols: unit, kernel: "matvec", m: 1 },
    { rows: 7, cols: 2 * unit, kernel: "matvec", m: 3 },
    { rows: 33, cols: 3 * unit, kernel: "matvec", m: 1 },
    { rows: 257, cols: 2048, kernel: "matvec", m: 3 },
    { rows: 33, cols: 2 * unit, kernel: "matvec", m: 17 },
    { rows: 1, cols: blockSize, kernel: "matmul", m: 3 },
    { rows: 7, cols: 2 * blockSize, kernel: "matmul", m: 1 },
    { rows: 7, cols: 3 * blockSize, kernel: "matmul", m: 65 },
    { rows: 33, cols: 2 * blockSize, kernel: "matmul", m: 17 },
    { rows: 257, cols: 2048, kernel: "matmul", m: 17 },
  ];
}

for (const name of TYPES) {
  Deno.test(`gpu matmul: ${name} matvec and matmul match the CPU table at odd shapes`, async () => {
    const gpu = await getGpu();
    const info = typeInfo(typeOf(name), name);
    const tol = 2e-5;
    for (const c of cases(info.blockSize)) {
      const cols = c.cols;
      const bytes = randomBlocks(name, c.rows * cols / info.blockSize);
      const weight = GpuWeight.fromBytes(gpu, `w.${name}`, typeOf(name), [cols, c.rows], bytes);
      const maxTokens = c.m + 2; // dispatch sized past m: the extra rows must stay untouched
      const x = randomF32(maxTokens * cols);
      const xBuf = gpu.buffer("x", x.byteLength, x);
      const yBuf = gpu.buffer("y", maxTokens * c.rows * 4, new Float32Array(maxTokens * c.rows).fill(NaN));
      const step = new StepParams(gpu, maxTokens);
      const options = { label: `${name}.${c.kernel}`, weight, x: xBuf, y: yBuf, maxTokens, step };
      // One matvec specialisation per type keeps the (software) shader compiles few.
      const tuning = { tokensPerWorkgroup: 4 };
      const op = c.kernel === "matvec"
        ? createMatvec(gpu, { ...options, tuning })
        : createMatmul(gpu, options);
      const got = await runLinear(gpu, op, step, c.m, yBuf);
      const w = dequantized(name, bytes, c.rows, cols);
      const what = `${name} ${c.kernel} rows=${c.rows} cols=${cols} m=${c.m}`;
      const bad = compareLinear(got, w, x, c.m, c.rows, cols, tol);
      ok(bad === undefined, `${what}: ${bad}`);
      for (let i = c.m * c.rows; i < got.length; i++) {
        ok(Number.isNaN(got[i]), `${what}: wrote past m at ${i}`);
      }
      weight.destroy();
      xBuf.destroy();
      yBuf.destroy();
    }
  });
}

Deno.test("gpu matmul: matvec tuning variants agree (workgroup size, rows and tokens per workgroup)", async () => {
  const gpu = await getGpu();
  const [rows, cols, m] = [37, 512, 5];
  const bytes = randomBlocks("Q4_K", rows * cols / 256);
  const weight = GpuWeight.fromBytes(gpu, "w", typeOf("Q4_K"), [cols, rows], bytes);
  const w = dequantized("Q4_K", bytes, rows, cols);
  const x = randomF32(m * cols);
  const xBuf = gpu.buffer("x", x.byteLength, x);
  const step = new StepParams(gpu, m);
  for (
    const tuning of [
      { workgroupSize: 32, rowsPerWorkgroup: 1, tokensPerWorkgroup: 1 },
      { workgroupSize: 256, rowsPerWorkgroup: 3, tokensPerWorkgroup: 5 },
    ]
  ) {
    const yBuf = gpu.buffer("y", m * rows * 4, new Float32Array(m * rows).fill(NaN));
    const op = createMatvec(gpu, { label: "tuned", weight, x: xBuf, y: yBuf, maxTokens: m, step, tuning });
    const got = await runLinear(gpu, op, step, m, yBuf);
    const bad = compareLinear(got, w, x, m, rows, cols, 2e-5);
    ok(bad === undefined, `${JSON.stringify(tuning)}: ${bad}`);
  }
});

Deno.test("gpu matmul: one recorded op replays correctly as the step's token count changes", async () => {
  const gpu = await getGpu();
  const [rows, cols, maxTokens] = [19, 64, 6];
  const bytes = randomBlocks("Q8_0", rows * cols / 32);
  const weight = GpuWeight.fromBytes(gpu, "w", typeOf("Q8_0"), [cols, rows], bytes);
  const w = dequantized("Q8_0", bytes, rows, cols);
  const step = new StepParams(gpu, maxTokens);
  const xBuf = gpu.buffer("x", maxTokens * cols * 4);
  const yBuf = gpu.buffer("y", maxTokens * rows * 4);
  for (const create of [createMatvec, createMatmul]) {
    const op = create(gpu, { label: "replay", weight, x: xBuf, y: yBuf, maxTokens, step });
    for (const m of [6, 1, 4]) {
      const x = randomF32(m * cols);
      gpu.device.queue.writeBuffer(xBuf, 0, x);
      gpu.device.queue.writeBuffer(yBuf, 0, new Float32Array(maxTokens * rows).fill(NaN));
      const got = await runLinear(gpu, op, step, m, yBuf);
      const bad = compareLinear(got, w, x, m, rows, cols, 2e-5);
      ok(bad === undefined, `${create.name} m=${m}: ${bad}`);
      for (let i = m * rows; i < got.length; i++) {
        ok(Number.isNaN(got[i]), `${create.name} m=${m}: wrote at ${i}`);
      }
    }
  }
});

Deno.test("gpu matmul: bad options are one-line BadFlagErrors", async () => {
  const gpu = await getGpu();
  const weight = GpuWeight.fromBytes(gpu, "w", typeOf("Q8_0"), [64, 3], randomBlocks("Q8_0", 6));
  const step = new StepParams(gpu, 4);
  const x = gpu.buffer("x", 4 * 64 * 4);
  const y = gpu.buffer("y", 4 * 3 * 4);
  const small = gpu.buffer("small", 16);
  throws(() => createMatvec(gpu, { label: "q", weight, x: small, y, maxTokens: 4, step }), BadFlagError);
  throws(() => createMatmul(gpu, { label: "q", weight, x, y: small, maxTokens: 4, step }), BadFlagError);
  throws(() => createMatvec(gpu, { label: "q", weight, x, y, maxTokens: 5, step }), BadFlagError);
  throws(
    () => createMatvec(gpu, { label: "q", weight, x, y, maxTokens: 4, step, tuning: { workgroupSize: 96 } }),
    /q: workgroupSize must be a power of two, got 96/,
  );
  throws(
    () =>
      createMatvec(gpu, {
        label: "q",
        weight,
        x,
        y,
        maxTokens: 4,
        step,
        tuning: { workgroupSize: 1024, rowsPerWorkgroup: 8, tokensPerWorkgroup: 4 },
      }),
    /q: workgroupSize × \(rowsPerWorkgroup \+ 1\) × tokensPerWorkgroup × 4 = 147456 bytes of workgroup memory/,
  );
  equal(weight.parts.length, 1);
  deepEqual([weight.cols, weight.rows, weight.rowBytes], [64, 3, 68]);
});

/**
 * The prefill code variants of MatmulTuning beyond the tile shapes (tests/gpu_matmul_perf_shapes_test.ts
 * covers those): the K loop not unrolled (unrolled is the default), fetching after the FMAs, 32-token tiles
 * (with 16-column steps only half the threads stage X), and combinations, on both prefill ops (entries
 * `main` and `swiglu` of wgsl/matmul.wgsl).
 */
function prefillVariants(gpu: Gpu): MatmulTuning[] {
  const all: MatmulTuning[] = [
    { unrollK: false },
    { prefetch: false },
    { tokensPerThread: 2 },
    { tokensPerThread: 2, kStep: 16, unrollK: true },
    { tokensPerThread: 2, kStep: 16, prefetch: false },
    { tokensPerThread: 4, kStep: 16, unrollK: true, prefetch: false },
    { tokensPerThread: 8, kStep: 32, unrollK: true, prefetch: false },
  ];
  return all.filter((t) =>
    matmulWorkgroupBytes(t.tokensPerThread ?? 4, t.kStep ?? 32) <= gpu.limits.maxComputeWorkgroupStorageSize
  );
}

interface VariantCase {
  type: string;
  rows: number;
  cols: number;
  m: number;
}

/** Odd shapes: one and several K steps, a partial K step with four-column tails, one and two token tiles. */
const VARIANT_CASES: VariantCase[] = [
  { type: "Q4_K", rows: 33, cols: 256, m: 7 },
  { type: "Q6_K", rows: 45, cols: 512, m: 37 }, // two 32-token tiles
  { type: "Q8_0", rows: 130, cols: 96, m: 5 }, // two row tiles
  { type: "F16", rows: 7, cols: 80, m: 33 }, // a partial K step
  { type: "F32", rows: 9, cols: 37, m: 66 }, // 37 columns: partial K steps and dq4 tails
];

Deno.test("gpu matmul: prefill variants (unrolled K, late fetch, 32-token tiles) match the CPU reference", async () => {
  const gpu = await getGpu();
  const tunings = prefillVariants(gpu);
  ok(tunings.length >= 5, `only ${tunings.length} variants fit`);
  for (const c of VARIANT_CASES) {
    const maxTokens = c.m + 3; // dispatch sized past m: the extra rows must stay untouched
    const { weight, w, x, xBuf, step } = productCase(gpu, c, maxTokens);
    for (const tuning of tunings) {
      const yBuf = nanBuffer(gpu, "y", maxTokens * c.rows);
      const op = createMatmul(gpu, { label: "mm", weight, x: xBuf, y: yBuf, maxTokens, step, tuning });
      const [got] = await runOps(gpu, [op], step, c.m, 0, [yBuf]);
      const what = `${c.type} rows=${c.rows} cols=${c.cols} m=${c.m} ${JSON.stringify(tuning)}`;
      // Every output element is compared (a NaN, i.e. one never written, fails).
      const bad = compareLinear(got, w, x, c.m, c.rows, c.cols, 2e-5);
      ok(bad === undefined, `${what}: ${bad}`);
      untouchedPast(what, got, c.m, c.rows);
      yBuf.destroy();
    }
    weight.destroy();
    xBuf.destroy();
  }
});

Deno.test("gpu matmul: fused gate/up + SwiGLU prefill variants match the CPU reference", async () => {
  const gpu = await getGpu();
  const silu = (v: number) => v / (1 + Math.exp(-v));
  // Q8_0: three paired tiles of 64 rows, the last one partial.
  const cases = VARIANT_CASES.filter((c) => ["Q4_K", "Q8_0", "F32"].includes(c.type));
  for (const c of cases) {
    const maxTokens = c.m + 2;
    const x = nonZeroF32(maxTokens * c.cols);
    const { gate, up, xBuf, step, fields } = gateUpCase(gpu, c.type, c.rows, c.cols, x);
    const g = products(gate.w, x, c.m, c.rows, c.cols);
    const u = products(up.w, x, c.m, c.rows, c.cols);
    for (const tuning of prefillVariants(gpu)) {
      const out = nanBuffer(gpu, "out", maxTokens * c.rows);
      const op = createGateUpSwiGluMatmul(gpu, { ...fields(out), tuning });
      const [got] = await runOps(gpu, [op], step, c.m, 0, [out]);
      const what = `${c.type} rows=${c.rows} cols=${c.cols} m=${c.m} ${JSON.stringify(tuning)}`;
      for (let i = 0; i < c.m * c.rows; i++) {
        const want = silu(g.sum[i]) * u.sum[i];
        // silu' is at most 1.1: the dot products' rounding bounds carried through silu(g) · u.
        const bound = 2e-5 * (1.1 * g.abs[i] * Math.abs(u.sum[i]) + Math.abs(silu(g.sum[i])) * u.abs[i]) +
          1e-30;
        ok(Math.abs(got[i] - want) <= bound, `${what}: out[${i}] = ${got[i]}, expected ${want}`);
      }
      untouchedPast(what, got, c.m, c.rows);
      out.destroy();
    }
    xBuf.destroy();
    gate.weight.destroy();
    up.weight.destroy();
  }
});

Deno.test("gpu matmul: bad prefill variant options are one-line BadFlagErrors naming the op", async () => {
  const gpu = await getGpu();
  const weight = GpuWeight.fromBytes(gpu, "w", typeOf("Q8_0"), [64, 3], randomBlocks("Q8_0", 6));
  const step = new StepParams(gpu, 4);
  const x = gpu.buffer("x", 4 * 64 * 4);
  const y = gpu.buffer("y", 4 * 3 * 4);
  const base = { label: "blk.3.attn_q", weight, x, y, maxTokens: 4, step };
  const gateUp = { label: "blk.3.ffn_gate_up", gate: weight, up: weight, x, out: y, maxTokens: 4, step };
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ unrollK: "yes" }, /unrollK must be true or false, got "yes"$/],
    [{ prefetch: 0 }, /prefetch must be true or false, got 0$/],
    [{ tokensPerThread: 1 }, /tokensPerThread must be 2, 4 or 8, got 1$/],
    [
      { unroll: true },
      /unknown prefill tuning field "unroll" \(known: tokensPerThread, kStep, unrollK, prefetch, half, coop, coopTileTokens\)$/,
    ],
  ];
  for (const [tuning, message] of bad) {
    const t = tuning as MatmulTuning;
    for (
      const [op, create] of [
        ["blk.3.attn_q", () => createMatmul(gpu, { ...base, tuning: t })],
        ["blk.3.ffn_gate_up", () => createGateUpSwiGluMatmul(gpu, { ...gateUp, tuning: t })],
      ] as const
    ) {
      throws(create, (e: Error) => {
        ok(e instanceof BadFlagError, `${JSON.stringify(tuning)}: ${e}`);
        ok(e.message.startsWith(`${op}: `) && !e.message.includes("\n"), e.message);
        ok(message.test(e.message), e.message);
        return true;
      });
    }
  }
  for (const b of [x, y]) b.destroy();
  weight.destroy();
});
