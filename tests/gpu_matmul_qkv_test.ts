// The prefill product of Q, K and V in one dispatch (createQkvMatmul, wgsl/matmul.wgsl entry `qkv`)
// against the CPU table, with weights of different types and row counts that do not fill their last tile.
import { ok, throws } from "node:assert/strict";
import { UnsupportedError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { createQkvMatmul, type MatmulTuning, qkvMatmulBlocker } from "../src/gpu/ops/matmul.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { compareLinear, randomF32, randomWeight } from "./gpu_quant_data.ts";
import { nanBuffer, qkvFields, runOps, untouchedPast } from "./gpu_ops_helpers.ts";

interface Case {
  types: [string, string, string];
  rows: [number, number, number];
  cols: number;
  m: number;
  tuning?: MatmulTuning;
}

const CASES: Case[] = [
  // Q4_K_M's mix: Q and K in Q4_K, V in Q6_K; Q spans two row tiles, K and V part of one.
  { types: ["Q4_K", "Q4_K", "Q6_K"], rows: [130, 33, 33], cols: 256, m: 7 },
  { types: ["Q8_0", "F16", "Q4_0"], rows: [40, 9, 17], cols: 96, m: 19, tuning: { tokensPerThread: 8 } },
  {
    types: ["F32", "F32", "F32"],
    rows: [1, 1, 1],
    cols: 37,
    m: 1,
    tuning: { tokensPerThread: 2, kStep: 16 },
  },
];

Deno.test("gpu qkv matmul: Q, K and V of different types in one dispatch match the CPU table", async () => {
  const gpu = await getGpu();
  for (const c of CASES) {
    const maxTokens = c.m + 3; // sized past m: those rows must stay untouched
    const weights = c.types.map((type, i) => randomWeight(gpu, `w${i}.${type}`, type, c.rows[i], c.cols));
    const x = randomF32(maxTokens * c.cols);
    const xBuf = gpu.buffer("x", x.byteLength, x);
    const outs = c.rows.map((rows, i) => nanBuffer(gpu, `y${i}`, maxTokens * rows));
    const step = new StepParams(gpu, maxTokens);
    const op = createQkvMatmul(gpu, {
      label: "qkv",
      ...qkvFields(weights, outs),
      x: xBuf,
      maxTokens,
      step,
      tuning: c.tuning,
    });
    const results = await runOps(gpu, [op], step, c.m, 0, outs);
    for (let i = 0; i < 3; i++) {
      const got = results[i];
      const what = `${c.types.join("/")} ${"QKV"[i]} rows=${c.rows[i]} cols=${c.cols} m=${c.m}`;
      const bad = compareLinear(got, weights[i].w, x, c.m, c.rows[i], c.cols, 2e-5);
      ok(bad === undefined, `${what}: ${bad}`);
      untouchedPast(what, got, c.m, c.rows[i]);
    }
  }
});

Deno.test("gpu qkv matmul: weights split into parts or of different widths are refused", async () => {
  const gpu = await getGpu();
  const q = randomWeight(gpu, "q", "Q8_0", 8, 64).weight;
  const narrow = randomWeight(gpu, "k", "Q8_0", 8, 32).weight;
  const split = randomWeight(gpu, "v", "Q8_0", 8, 64, 34 * 2 * 2).weight;
  ok(qkvMatmulBlocker(q, q, q) === undefined);
  ok(qkvMatmulBlocker(q, narrow, q)?.includes("rows of 32 values"));
  ok(qkvMatmulBlocker(q, q, split)?.includes("parts"));
  const step = new StepParams(gpu, 4);
  const buf = gpu.buffer("b", 4 * 64 * 4);
  throws(
    () =>
      createQkvMatmul(gpu, {
        label: "qkv",
        wq: q,
        wk: q,
        wv: split,
        x: buf,
        q: buf,
        k: buf,
        v: buf,
        maxTokens: 4,
        step,
      }),
    UnsupportedError,
  );
});
