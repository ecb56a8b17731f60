import { equal, ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { createRope, ropeTurnTable } from "../src/gpu/ops/rope.ts";
import { rope, ropeInverseFrequencies } from "../src/model/ops.ts";
import { expectClose, randomF32 } from "./gpu_ops_helpers.ts";

/**
 * Tolerance, absolute, for inputs in (−1, 1): the reduced angle is within ~2e-6 rad of pos·θ (a few f32
 * ulps of a turn), sin/cos add ~1e-7 on lavapipe, and the rotation itself a few ulps. 1e-5 leaves a
 * margin and is still 400× tighter than the error of an angle formed in f32 at pos ≈ 130000 (≈ 4e-3).
 */
const TOL = 1e-5;

interface Case {
  headDim: number;
  ropeDim: number;
  nQ: number;
  nK: number; // 0: Q only
  maxTokens: number;
  nTokens: number;
  pos0: number;
  packed?: boolean;
  llama3?: boolean;
}

async function check(c: Case): Promise<number> {
  const gpu = await getGpu();
  const { headDim, ropeDim, nQ, nK, maxTokens, nTokens, pos0 } = c;
  const invFreq = ropeInverseFrequencies(
    ropeDim,
    c.llama3 ? 500000 : 10000,
    undefined,
    c.llama3 ? { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalContext: 8192 } : undefined,
  );
  const step = new StepParams(gpu, maxTokens);
  step.set(nTokens, pos0);
  const qW = nQ * headDim;
  const kW = nK * headDim;
  // Packed rows hold q | k | v (v must stay untouched).
  const stride = c.packed ? qW + 2 * kW : 0;
  const q = randomF32(maxTokens * (c.packed ? stride : qW));
  const k = randomF32(maxTokens * kW);
  const qBuf = gpu.buffer("q", q.byteLength, q);
  const kBuf = gpu.buffer("k", k.byteLength, k);
  const op = createRope(gpu, {
    label: "rope",
    headDim,
    ropeDim,
    invFreq,
    maxPosition: 131072,
    maxTokens,
    q: c.packed ? { buffer: qBuf, nHeads: nQ, rowStride: stride } : { buffer: qBuf, nHeads: nQ },
    k: nK === 0
      ? undefined
      : c.packed
      ? { buffer: qBuf, nHeads: nK, rowStride: stride, column: qW }
      : { buffer: kBuf, nHeads: nK },
    step,
  });
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  op.encode(pass);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  const gotQ = await gpu.readF32(qBuf);
  const gotK = await gpu.readF32(kBuf);
  const wantQ = q.slice();
  const wantK = k.slice();
  for (let t = 0; t < nTokens; t++) {
    if (c.packed) {
      rope(wantQ.subarray(t * stride, t * stride + qW), nQ, headDim, pos0 + t, invFreq);
      rope(wantQ.subarray(t * stride + qW, t * stride + qW + kW), nK, headDim, pos0 + t, invFreq);
    } else {
      rope(wantQ.subarray(t * qW, (t + 1) * qW), nQ, headDim, pos0 + t, invFreq);
      rope(wantK.subarray(t * kW, (t + 1) * kW), nK, headDim, pos0 + t, invFreq);
    }
  }
  const what = JSON.stringify(c);
  expectClose(`${what}: q`, gotQ, wantQ, 0, TOL);
  expectClose(`${what}: k`, gotK, wantK, 0, TOL);
  // Elements the kernel must not touch (past nTokens, past ropeDim, the v columns) are bit-identical.
  let worst = 0;
  for (let i = 0; i < wantQ.length; i++) {
    if (wantQ[i] === q[i]) equal(gotQ[i], q[i], `${what}: q[${i}] changed`);
    worst = Math.max(worst, Math.abs(gotQ[i] - wantQ[i]));
  }
  for (let i = 0; i < wantK.length; i++) {
    if (wantK[i] === k[i]) equal(gotK[i], k[i], `${what}: k[${i}] changed`);
    worst = Math.max(worst, Math.abs(gotK[i] - wantK[i]));
  }
  return worst;
}

const cases: Case[] = [
  { headDim: 8, ropeDim: 8, nQ: 1, nK: 1, maxTokens: 1, nTokens: 1, pos0: 0 },
  { headDim: 64, ropeDim: 64, nQ: 3, nK: 1, maxTokens: 3, nTokens: 3, pos0: 7 },
  { headDim: 64, ropeDim: 64, nQ: 5, nK: 3, maxTokens: 17, nTokens: 17, pos0: 129983 },
  { headDim: 64, ropeDim: 64, nQ: 2, nK: 2, maxTokens: 17, nTokens: 5, pos0: 65531 },
  { headDim: 72, ropeDim: 40, nQ: 3, nK: 1, maxTokens: 3, nTokens: 2, pos0: 1000 },
  { headDim: 128, ropeDim: 128, nQ: 4, nK: 1, maxTokens: 3, nTokens: 3, pos0: 130000, llama3: true },
  { headDim: 64, ropeDim: 64, nQ: 3, nK: 1, maxTokens: 17, nTokens: 17, pos0: 99999, packed: true },
  { headDim: 16, ropeDim: 16, nQ: 3, nK: 0, maxTokens: 3, nTokens: 3, pos0: 12345 },
];
for (const c of cases) {
  Deno.test(`rope: ${JSON.stringify(c)}`, async () => {
    await check(c);
  });
}

Deno.test("rope: positions up to 131071 stay within 1e-5 of the f64 reference; an f32 angle would not", async () => {
  let worst = 0;
  for (const pos0 of [131071 - 16, 120000, 2 ** 16 - 3]) {
    worst = Math.max(
      worst,
      await check({ headDim: 128, ropeDim: 128, nQ: 2, nK: 1, maxTokens: 17, nTokens: 17, pos0 }),
    );
  }
  // The error an f32 angle (pos·θ rounded to f32) would make at the same positions, for comparison.
  const invFreq = ropeInverseFrequencies(128, 10000);
  let naive = 0;
  for (let pos = 131071 - 16; pos < 131071; pos++) {
    for (const f of invFreq) naive = Math.max(naive, Math.abs(Math.fround(pos * f) - pos * f));
  }
  console.log(
    `rope: largest GPU error ${worst.toExponential(2)}, f32-angle error ${naive.toExponential(2)} rad`,
  );
  ok(worst < TOL && naive > 100 * TOL);
});

Deno.test("rope: the turn table's parts multiply exactly by every position below maxPosition", () => {
  const invFreq = ropeInverseFrequencies(128, 500000);
  for (const maxPosition of [1, 4096, 131072, 2 ** 22]) {
    const { data, chunks } = ropeTurnTable(invFreq, maxPosition);
    for (let i = 0; i < invFreq.length; i++) {
      let sum = 0;
      for (let c = 0; c < chunks; c++) {
        const part = data[i * chunks + c];
        sum += part;
        const pos = maxPosition - 1;
        equal(Math.fround(pos * part), pos * part, `part ${c} of pair ${i} is not exact at ${pos}`);
      }
      const turn = invFreq[i] / (2 * Math.PI);
      ok(Math.abs(sum - turn) * maxPosition <= 2 ** -24, `pair ${i}: remainder too large`);
    }
  }
  throws(() => ropeTurnTable(invFreq, 2 ** 22 + 1), BadFlagError);
});

Deno.test("rope: bad shapes are one-line BadFlagErrors", async () => {
  const gpu = await getGpu();
  const step = new StepParams(gpu, 2);
  const buf = gpu.buffer("b", 2 * 64 * 4);
  const invFreq = ropeInverseFrequencies(64, 10000);
  const base = { label: "blk.0.rope", headDim: 64, invFreq, maxPosition: 4096, maxTokens: 2, step };
  createRope(gpu, { ...base, q: { buffer: buf, nHeads: 1 } });
  throws(() => createRope(gpu, { ...base, q: { buffer: buf, nHeads: 2 } }), /buffer 'q' holds 512 bytes/);
  throws(
    () => createRope(gpu, { ...base, ropeDim: 32, q: { buffer: buf, nHeads: 1 } }),
    /inverse frequencies/,
  );
  throws(
    () => {
      const big = gpu.buffer("big", 4 * 64 * 4);
      createRope(gpu, {
        ...base,
        q: { buffer: big, nHeads: 1 },
        k: { buffer: { buffer: big, offset: 512 }, nHeads: 1 },
      });
    },
    /share a buffer/,
  );
});
