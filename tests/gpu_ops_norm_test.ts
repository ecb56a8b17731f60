import { getGpu } from "../src/gpu/device.ts";
import { createRmsNorm } from "../src/gpu/ops/norm.ts";
import { SPLIT_K_SKEW, splitKOutputFloats } from "../src/gpu/ops/matmul.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { rmsnorm } from "../src/model/ops.ts";
import { expectClose, nanBuffer, randomF32 } from "./gpu_ops_helpers.ts";
import { throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";

const eps = 1e-5;

/**
 * Runs the plain or fused norm for `nTokens` of a `maxTokens` op and checks y (and x) against the CPU; with
 * `parts` > 1 the residual comes in that many parts, as a split-K product writes them.
 */
async function check(
  width: number,
  maxTokens: number,
  nTokens: number,
  fused: boolean,
  workgroupSize?: number,
  parts = 1,
) {
  const gpu = await getGpu();
  const n = maxTokens * width;
  const x = randomF32(n, 3);
  const r = randomF32(parts > 1 ? splitKOutputFloats(parts, maxTokens, width) : n, 2);
  const w = randomF32(width, 1.5);
  const xBuf = gpu.buffer("x", n * 4, x);
  const rBuf = gpu.buffer("r", r.byteLength, r);
  const wBuf = gpu.buffer("w", width * 4, w);
  const yBuf = nanBuffer(gpu, "y", n);
  const step = new StepParams(gpu, maxTokens);
  step.set(nTokens);
  const op = createRmsNorm(gpu, {
    label: "norm",
    width,
    maxTokens,
    eps,
    x: xBuf,
    residual: fused ? rBuf : undefined,
    weight: wBuf,
    y: yBuf,
    step,
    workgroupSize,
    residualSplits: parts > 1 ? { maxSplits: parts, splitsFor: () => parts } : undefined,
  });
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  op.encode(pass);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  const y = await gpu.readF32(yBuf);
  const xAfter = await gpu.readF32(xBuf);
  const what = `${fused ? "add+norm" : "norm"} width ${width} M ${nTokens}/${maxTokens} parts ${parts}`;
  const wantY = new Float32Array(n).fill(NaN);
  const wantX = x.slice();
  for (let t = 0; t < nTokens; t++) {
    const row = x.subarray(t * width, (t + 1) * width).slice();
    if (fused) {
      for (let i = 0; i < width; i++) {
        // Part p of the residual at p · (nTokens · width + skew), added up in order, then onto x.
        let sum = r[t * width + i];
        for (let p = 1; p < parts; p++) {
          sum = Math.fround(sum + r[p * (nTokens * width + SPLIT_K_SKEW) + t * width + i]);
        }
        row[i] = Math.fround(row[i] + sum);
      }
      wantX.set(row, t * width);
    }
    rmsnorm(wantY.subarray(t * width, (t + 1) * width), row, w, eps);
  }
  expectClose(`${what}: y`, y, wantY.subarray(0, nTokens * width), 1e-5, 1e-6);
  // Rows past nTokens stay untouched: y still NaN, x unchanged.
  for (let i = nTokens * width; i < n; i++) {
    if (!Number.isNaN(y[i])) throw new Error(`${what}: y[${i}] written past nTokens`);
  }
  expectClose(`${what}: x`, xAfter, wantX, 0, 0);
}

for (const width of [8, 37, 64, 72, 2056]) {
  for (const [maxTokens, nTokens] of [[1, 1], [3, 3], [17, 17], [17, 5]]) {
    for (const fused of [false, true]) {
      Deno.test(`rmsnorm: ${fused ? "fused add, " : ""}width ${width}, M ${nTokens} of ${maxTokens}`, async () => {
        await check(width, maxTokens, nTokens, fused);
      });
    }
  }
}

Deno.test("rmsnorm: a residual in 2 or 4 parts (a split-K product's) adds them up before the norm", async () => {
  await check(96, 12, 3, true, undefined, 2);
  await check(2056, 5, 5, true, undefined, 4);
});

Deno.test("rmsnorm: small workgroups (64, 1) give the same result", async () => {
  await check(300, 3, 2, true, 64);
  await check(72, 2, 2, false, 1);
});

Deno.test("rmsnorm: a short buffer or bad option is a one-line BadFlagError", async () => {
  const gpu = await getGpu();
  const step = new StepParams(gpu, 4);
  const small = gpu.buffer("small", 16);
  const ok = gpu.buffer("ok", 4 * 8 * 4);
  const base = { label: "blk.0.attn_norm", width: 8, maxTokens: 4, eps, x: ok, weight: ok, y: ok, step };
  throws(() => createRmsNorm(gpu, { ...base, y: small }), BadFlagError);
  throws(() => createRmsNorm(gpu, { ...base, maxTokens: 5 }), BadFlagError);
  throws(() => createRmsNorm(gpu, { ...base, workgroupSize: 48 }), /power of two/);
  throws(() => step.set(5), BadFlagError);
});
