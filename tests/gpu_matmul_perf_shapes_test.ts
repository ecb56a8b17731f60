// The prefill kernels (wgsl/matmul.wgsl, entries `main` and `swiglu`) in every tile shape: 64- and
// 128-token tiles, 16- and 32-column K steps, ragged row, token and column tails, weights split into parts,
// and the choice of the default shape.

import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createGateUpSwiGluMatmul } from "../src/gpu/ops/fused.ts";
import { createMatmul, matmulShape, type MatmulTuning, matmulWorkgroupBytes } from "../src/gpu/ops/matmul.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { GpuWeight } from "../src/gpu/weights.ts";
import { typeInfo } from "../src/gguf/types.ts";
import { compareLinear, dequantized, randomBlocks, randomF32, typeOf } from "./gpu_quant_data.ts";
import { gateUpCase } from "./gpu_ops_helpers.ts";

const TOL = 2e-5;

async function runOnce(gpu: Gpu, op: GpuOp, step: StepParams, m: number, out: GPUBuffer) {
  step.set(m);
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  op.encode(pass);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  return await gpu.readF32(out);
}

/** The tile shapes that fit this GPU's workgroup memory. */
function shapes(gpu: Gpu): MatmulTuning[] {
  const all = [
    { tokensPerThread: 4, kStep: 16 },
    { tokensPerThread: 4, kStep: 32 },
    { tokensPerThread: 8, kStep: 16 },
    { tokensPerThread: 8, kStep: 32 },
  ];
  return all.filter((s) =>
    matmulWorkgroupBytes(s.tokensPerThread, s.kStep) <= gpu.limits.maxComputeWorkgroupStorageSize
  );
}

function nans(gpu: Gpu, n: number): GPUBuffer {
  return gpu.buffer("out", n * 4, new Float32Array(n).fill(NaN));
}

function untouchedPast(what: string, got: Float32Array, from: number): void {
  for (let i = from; i < got.length; i++) ok(Number.isNaN(got[i]), `${what}: wrote past m at ${i}`);
}

interface Case {
  type: string;
  rows: number;
  blocks: number;
  m: number;
  maxPartBytes?: number;
}

Deno.test("gpu matmul shapes: every tile shape matches the CPU reference at ragged sizes", async () => {
  const gpu = await getGpu();
  const cases: Case[] = [
    { type: "Q4_K", rows: 131, blocks: 1, m: 133 }, // two row tiles, 2–3 token tiles, all ragged
    { type: "Q6_K", rows: 45, blocks: 1, m: 70 },
    { type: "Q8_0", rows: 129, blocks: 3, m: 65, maxPartBytes: 40 * 102 }, // parts of 39 rows
    { type: "F16", rows: 7, blocks: 80, m: 129 },
    { type: "F32", rows: 130, blocks: 37, m: 5 }, // 37 columns: partial K steps and dq4 tails
  ];
  const tunings = shapes(gpu);
  ok(tunings.length >= 3, `only ${tunings.length} tile shapes fit`);
  for (const c of cases) {
    const cols = c.blocks * typeInfo(typeOf(c.type), c.type).blockSize;
    const bytes = randomBlocks(c.type, c.rows * c.blocks);
    const weight = GpuWeight.fromBytes(gpu, `w.${c.type}`, typeOf(c.type), [cols, c.rows], bytes, {
      maxPartBytes: c.maxPartBytes,
    });
    if (c.maxPartBytes) ok(weight.parts.length > 1, "the weight is split");
    const w = dequantized(c.type, bytes, c.rows, cols);
    const maxTokens = c.m + 3;
    const x = randomF32(maxTokens * cols);
    const xBuf = gpu.buffer("x", x.byteLength, x);
    const step = new StepParams(gpu, maxTokens);
    for (const tuning of tunings) {
      const yBuf = nans(gpu, maxTokens * c.rows);
      const op = createMatmul(gpu, { label: "mm", weight, x: xBuf, y: yBuf, maxTokens, step, tuning });
      const got = await runOnce(gpu, op, step, c.m, yBuf);
      const what = `${c.type} rows=${c.rows} cols=${cols} m=${c.m} ${JSON.stringify(tuning)}`;
      const bad = compareLinear(got, w, x, c.m, c.rows, cols, TOL);
      ok(bad === undefined, `${what}: ${bad}`);
      untouchedPast(what, got, c.m * c.rows);
      yBuf.destroy();
    }
    weight.destroy();
    xBuf.destroy();
  }
});

Deno.test("gpu matmul shapes: fused gate/up + SwiGLU in every tile shape matches the CPU reference", async () => {
  const gpu = await getGpu();
  const cases: Case[] = [
    { type: "Q4_K", rows: 67, blocks: 1, m: 131 }, // two 64-row tiles, ragged tokens
    { type: "F32", rows: 5, blocks: 45, m: 66 }, // 45 columns: partial K steps
  ];
  for (const c of cases) {
    const cols = c.blocks * typeInfo(typeOf(c.type), c.type).blockSize;
    const maxTokens = c.m + 2;
    const x = randomF32(maxTokens * cols);
    const { gate, up, xBuf, step, fields } = gateUpCase(gpu, c.type, c.rows, cols, x);
    for (const tuning of shapes(gpu)) {
      const out = nans(gpu, maxTokens * c.rows);
      const op = createGateUpSwiGluMatmul(gpu, { ...fields(out), tuning });
      const got = await runOnce(gpu, op, step, c.m, out);
      const what = `${c.type} rows=${c.rows} cols=${cols} m=${c.m} ${JSON.stringify(tuning)}`;
      for (let t = 0; t < c.m; t++) {
        for (let r = 0; r < c.rows; r++) {
          let [g, u, gAbs, uAbs] = [0, 0, 0, 0];
          for (let k = 0; k < cols; k++) {
            const xv = x[t * cols + k];
            g += gate.w[r * cols + k] * xv;
            u += up.w[r * cols + k] * xv;
            gAbs += Math.abs(gate.w[r * cols + k] * xv);
            uAbs += Math.abs(up.w[r * cols + k] * xv);
          }
          const s = g / (1 + Math.exp(-g));
          const want = s * u;
          const bound = TOL * (1.1 * gAbs * Math.abs(u) + Math.abs(s) * uAbs) + 1e-30;
          const have = got[t * c.rows + r];
          ok(Math.abs(have - want) <= bound, `${what}: out[${t}][${r}] = ${have}, expected ${want}`);
        }
      }
      untouchedPast(what, got, c.m * c.rows);
      out.destroy();
    }
    xBuf.destroy();
    gate.weight.destroy();
    up.weight.destroy();
  }
});

Deno.test("gpu matmul shapes: default tile shape and one-line errors for bad tunings", async () => {
  const gpu = await getGpu();
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  // Few big tiles: 64-token tiles; many: 128-token tiles (when they fit).
  const flags = { unrollK: true, prefetch: true, half: false, coop: false };
  deepEqual(matmulShape(gpu, "q", 512, 16), { tokensPerThread: 4, kStep: 32, tileTokens: 64, ...flags });
  deepEqual(matmulShape(gpu, "q", 512, 32), { tokensPerThread: 4, kStep: 32, tileTokens: 64, ...flags });
  const big = matmulShape(gpu, "q", 512, 64);
  equal(big.tokensPerThread, matmulWorkgroupBytes(8, 16) <= limit ? 8 : 4);
  ok(matmulWorkgroupBytes(big.tokensPerThread, big.kStep) <= limit);
  throws(
    () => matmulShape(gpu, "q", 64, 1, { tokensPerThread: 6 }),
    /q: tokensPerThread must be 2, 4 or 8, got 6/,
  );
  throws(() => matmulShape(gpu, "q", 64, 1, { kStep: 64 }), /q: kStep must be 16 or 32, got 64/);
  const tiny = { ...gpu, limits: { ...gpu.limits, maxComputeWorkgroupStorageSize: 12288 } } as unknown as Gpu;
  throws(() => matmulShape(tiny, "q", 64, 1, { tokensPerThread: 8, kStep: 32 }), BadFlagError);
  deepEqual(matmulShape(tiny, "q", 64, 1), { tokensPerThread: 4, kStep: 16, tileTokens: 64, ...flags });
});
