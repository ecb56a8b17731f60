/**
 * The check the fused QKV + RoPE decode tests share: `createQkvMatvec` on random weights of given types and
 * random x against the CPU reference (`qkvReference`), every output of the step's tokens within tolerance and
 * none past them written.
 *
 * @module
 */

import { ok } from "node:assert/strict";
import type { Gpu } from "../src/gpu/device.ts";
import { createQkvMatvec, type FusedMatvecTuning } from "../src/gpu/ops/fused.ts";
import { int8InputReference } from "../src/gpu/ops/matvec_units.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { ropeInverseFrequencies } from "../src/model/ops.ts";
import { qkvReference, randomWeight } from "./gpu_quant_data.ts";
import {
  nanBuffer,
  qkvFields,
  randomF32,
  randomInt8Input,
  runOps,
  untouchedPast,
} from "./gpu_ops_helpers.ts";

/** One case: the types of Q, K and V, row length, head shape, tokens of the step and the first position. */
export interface QkvRopeCase {
  types: string[];
  cols: number;
  headDim: number;
  ropeDim: number;
  qHeads: number;
  kvHeads: number;
  m: number;
  pos0: number;
}

/**
 * Runs case `c` with `tuning` and checks Q, K and V within 2 · `tol` of each output's Σ|w·x| (for Q and K
 * the larger of the rotated pair's). With `tuning.int8` the reference takes x as the int8 kernels see it
 * (`int8InputReference`).
 */
export async function checkQkvRope(
  gpu: Gpu,
  c: QkvRopeCase,
  tuning: FusedMatvecTuning,
  tol: number,
): Promise<void> {
  const qRows = c.qHeads * c.headDim;
  const kvRows = c.kvHeads * c.headDim;
  const ws = [qRows, kvRows, kvRows].map((rows, n) =>
    randomWeight(gpu, `w.${c.types[n]}`, c.types[n], rows, c.cols)
  );
  const maxTokens = c.m + 1;
  const x = tuning.int8 ? randomInt8Input(maxTokens * c.cols) : randomF32(maxTokens * c.cols);
  const xBuf = gpu.buffer("x", x.byteLength, x);
  const step = new StepParams(gpu, maxTokens);
  const invFreq = ropeInverseFrequencies(c.ropeDim, 10000);
  const xSeen = tuning.int8 ? int8InputReference(x, c.cols) : x;
  const wants = qkvReference(ws, xSeen, c.m, c.cols, { ...c, invFreq });
  const heads = [c.qHeads, c.kvHeads, 0];
  const outs = wants.map(({ rows }, n) => nanBuffer(gpu, "qkv"[n], maxTokens * rows));
  const op = createQkvMatvec(gpu, {
    label: "qkv",
    ...qkvFields(ws, outs),
    x: xBuf,
    maxTokens,
    step,
    rope: { headDim: c.headDim, ropeDim: c.ropeDim, invFreq, maxPosition: 4096 },
    tuning,
  });
  const got = await runOps(gpu, [op], step, c.m, c.pos0, outs);
  const what = `${c.types.join("/")} cols=${c.cols} m=${c.m}${tuning.int8 ? " int8" : ""}`;
  wants.forEach(({ want, abs, rows }, n) => {
    for (let i = 0; i < c.m * rows; i++) {
      const mag = heads[n] > 0 ? Math.max(abs[i], abs[i ^ 1]) : abs[i];
      ok(
        Math.abs(got[n][i] - want[i]) <= 2 * tol * mag + 1e-30,
        `${what}: ${"qkv"[n]}[${i}] = ${got[n][i]}, expected ${want[i]}`,
      );
    }
    untouchedPast(`${what} ${"qkv"[n]}`, got[n], c.m, rows);
  });
  for (const b of outs) b.destroy();
  for (const { weight } of ws) weight.destroy();
  xBuf.destroy();
  step.buffer.destroy();
}
