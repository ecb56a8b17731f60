// The prefill kernels with f16 products (MatmulTuning.half: f16 tiles and FMAs, each K step summed in f16,
// the steps in f32) in all three entries of wgsl/matmul.wgsl, against the CPU product of the weights and
// activations rounded to f16. The bound is the rounding of a step's f16 sums: at most kStep + 1 roundings
// of half an f16 ulp each, relative to the sum of the products' magnitudes; the mean error must also be far
// below it (a misplaced or missing product would not be).
import { ok } from "node:assert/strict";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createGateUpSwiGluMatmul } from "../src/gpu/ops/fused.ts";
import { createMatmul, createQkvMatmul, matmulShape, type MatmulTuning } from "../src/gpu/ops/matmul.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { products, randomWeight } from "./gpu_quant_data.ts";
import {
  gateUpCase,
  nanBuffer,
  productCase,
  qkvFields,
  randomF32,
  runOps,
  untouchedPast,
} from "./gpu_ops_helpers.ts";
import { checkRoundedProducts, checkRoundedSwiGlu, type RoundedProducts, toHalf } from "./half_rounded.ts";

/**
 * Checks `got` ([m][rows]) against the f16-rounded product of `w` and `x`: every element within the
 * rounding bound of a K step of `kStep` columns, and the mean error under a tenth of the mean bound.
 */
function checkHalf(
  what: string,
  got: Float32Array,
  want: RoundedProducts,
  kStep: number,
): void {
  const perAbs = (kStep + 1) * 2 ** -11;
  const { error, scale } = checkRoundedProducts(what, got, want, perAbs);
  ok(error <= 0.1 * perAbs * scale, `${what}: mean error ${error / want.sum.length} is too large`);
}

/** The half tunings to try: the default shape, each tile shape, the K loop rolled and late fetches. */
function halfTunings(gpu: Gpu): MatmulTuning[] {
  const all: MatmulTuning[] = [
    { half: true },
    { half: true, tokensPerThread: 8 },
    { half: true, tokensPerThread: 2, kStep: 16 },
    { half: true, tokensPerThread: 4, kStep: 16, unrollK: false, prefetch: false },
  ];
  return all.filter((t) => {
    try {
      matmulShape(gpu, "probe", 64, 1, t);
      return true;
    } catch {
      return false;
    }
  });
}

const CASES = [
  { type: "F16", rows: 7, cols: 80, m: 33 }, // a partial K step
  { type: "F16", rows: 130, cols: 512, m: 5 }, // two row tiles, several K steps
  { type: "Q8_0", rows: 33, cols: 96, m: 66 }, // quantised weights work too (rounded to f16)
  { type: "F32", rows: 9, cols: 37, m: 17 }, // four-column tails
];

Deno.test("gpu matmul half: f16 products (entry main) match the f16-rounded CPU product", async () => {
  const gpu = await getGpu();
  if (!gpu.hasF16) return; // no shader-f16: the products stay f32 (matmulShape refuses `half`)
  const tunings = halfTunings(gpu);
  ok(tunings.length >= 3, `only ${tunings.length} half tunings fit`);
  for (const c of CASES) {
    const maxTokens = c.m + 3;
    const { weight, w, x, xBuf, step } = productCase(gpu, c, maxTokens, 4);
    const want = products(toHalf(w), toHalf(x), c.m, c.rows, c.cols);
    for (const tuning of tunings) {
      const y = nanBuffer(gpu, "y", maxTokens * c.rows);
      const op = createMatmul(gpu, { label: "mm", weight, x: xBuf, y, maxTokens, step, tuning });
      const [got] = await runOps(gpu, [op], step, c.m, 0, [y]);
      const what = `${c.type} rows=${c.rows} cols=${c.cols} m=${c.m} ${JSON.stringify(tuning)}`;
      checkHalf(what, got, want, matmulShape(gpu, "mm", maxTokens, 1, tuning).kStep);
      untouchedPast(what, got, c.m, c.rows);
      y.destroy();
    }
    weight.destroy();
    xBuf.destroy();
  }
});

Deno.test("gpu matmul half: Q, K and V in one dispatch (entry qkv) with f16 products", async () => {
  const gpu = await getGpu();
  if (!gpu.hasF16) return; // no shader-f16: the products stay f32 (matmulShape refuses `half`)
  const rows = [130, 33, 17];
  const [cols, m] = [160, 19];
  const maxTokens = m + 2;
  const weights = rows.map((r, i) => randomWeight(gpu, `w${i}`, "F16", r, cols));
  const x = randomF32(maxTokens * cols, 4);
  const xBuf = gpu.buffer("x", x.byteLength, x);
  const outs = rows.map((r, i) => nanBuffer(gpu, `y${i}`, maxTokens * r));
  const step = new StepParams(gpu, maxTokens);
  const tuning = { half: true };
  const op = createQkvMatmul(gpu, {
    label: "qkv",
    ...qkvFields(weights, outs),
    x: xBuf,
    maxTokens,
    step,
    tuning,
  });
  const results = await runOps(gpu, [op], step, m, 0, outs);
  const kStep = matmulShape(gpu, "qkv", maxTokens, 3, tuning).kStep;
  for (let i = 0; i < 3; i++) {
    const what = `${"QKV"[i]} rows=${rows[i]}`;
    checkHalf(what, results[i], products(toHalf(weights[i].w), toHalf(x), m, rows[i], cols), kStep);
    untouchedPast(what, results[i], m, rows[i]);
  }
  for (const b of [xBuf, ...outs]) b.destroy();
  for (const w of weights) w.weight.destroy();
});

Deno.test("gpu matmul half: fused gate/up + SwiGLU (entry swiglu) with f16 products", async () => {
  const gpu = await getGpu();
  if (!gpu.hasF16) return; // no shader-f16: the products stay f32 (matmulShape refuses `half`)
  const [rows, cols, m] = [70, 96, 37];
  const maxTokens = m + 2;
  const x = randomF32(maxTokens * cols, 4);
  const { gate, up, xBuf, step, fields } = gateUpCase(gpu, "F16", rows, cols, x);
  const g = products(toHalf(gate.w), toHalf(x), m, rows, cols);
  const u = products(toHalf(up.w), toHalf(x), m, rows, cols);
  for (const tuning of halfTunings(gpu)) {
    const out = nanBuffer(gpu, "out", maxTokens * rows);
    const op = createGateUpSwiGluMatmul(gpu, { ...fields(out), tuning });
    const [got] = await runOps(gpu, [op], step, m, 0, [out]);
    const per = (matmulShape(gpu, "g", maxTokens, 2, tuning).kStep + 1) * 2 ** -11;
    const what = `gate/up ${JSON.stringify(tuning)}`;
    checkRoundedSwiGlu(what, got, g, u, m * rows, per);
    untouchedPast(what, got, m, rows);
    out.destroy();
  }
  xBuf.destroy();
  gate.weight.destroy();
  up.weight.destroy();
});
