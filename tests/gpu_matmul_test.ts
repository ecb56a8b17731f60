import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createMatmul, createMatvec } from "../src/gpu/ops/matmul.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { GpuWeight } from "../src/gpu/weights.ts";
import { typeInfo } from "../src/gguf/types.ts";
import { compareLinear, dequantized, randomBlocks, randomF32, typeOf, TYPES } from "./gpu_quant_data.ts";

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
  blocks: number;
  kernel: "matvec" | "matmul";
  m: number;
}

/** Odd shapes: 1, 2 and 3 blocks per row and a realistic 2048 columns; few and many tokens. */
function cases(blockSize: number): Case[] {
  return [
    { rows: 1, blocks: 1, kernel: "matvec", m: 1 },
    { rows: 7, blocks: 2, kernel: "matvec", m: 3 },
    { rows: 33, blocks: 3, kernel: "matvec", m: 1 },
    { rows: 257, blocks: 2048 / blockSize, kernel: "matvec", m: 3 },
    { rows: 33, blocks: 2, kernel: "matvec", m: 17 },
    { rows: 1, blocks: 1, kernel: "matmul", m: 3 },
    { rows: 7, blocks: 2, kernel: "matmul", m: 1 },
    { rows: 7, blocks: 3, kernel: "matmul", m: 65 },
    { rows: 33, blocks: 2, kernel: "matmul", m: 17 },
    { rows: 257, blocks: 2048 / blockSize, kernel: "matmul", m: 17 },
  ];
}

for (const name of TYPES) {
  Deno.test(`gpu matmul: ${name} matvec and matmul match the CPU table at odd shapes`, async () => {
    const gpu = await getGpu();
    const info = typeInfo(typeOf(name), name);
    const tol = 2e-5;
    for (const c of cases(info.blockSize)) {
      const cols = c.blocks * info.blockSize;
      const bytes = randomBlocks(name, c.rows * c.blocks);
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
