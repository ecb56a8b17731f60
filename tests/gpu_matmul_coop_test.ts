// The prefill kernels on cooperative matrices (MatmulTuning.coop, wgsl/matmul_coop.wgsl) in all three
// entries, against the CPU product of the weights and activations rounded to f16 (what the tiles hold),
// summed in f64. On a GPU with working cooperative matrices (Gpu.coopMatrix) this runs the hardware's
// fragments; elsewhere (lavapipe in CI) the emulated ones, so the kernel around them (staging, tile and
// fragment indexing, the epilogues, the masks at the tile edges) is checked everywhere. The products of
// f16 values are exact in f32 and the sums are f32: every element must be within 2^-11 of the sum of the
// products' magnitudes (far more than f32 sums lose, far less than a misplaced product costs).
import { ok, throws } from "node:assert/strict";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createGateUpSwiGluMatmul } from "../src/gpu/ops/fused.ts";
import {
  coopMatmulWorkgroupBytes,
  createMatmul,
  createQkvMatmul,
  matmulShape,
} from "../src/gpu/ops/matmul.ts";
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

const TUNING = { coop: true };
/** Both tile sizes (64 tokens: two token blocks per subgroup; 128: four). */
const TUNINGS = [{ coop: true, coopTileTokens: 64 }, { coop: true, coopTileTokens: 128 }];
const BOUND = 2 ** -11;

/**
 * `build()` with the device's validation errors caught: a kernel that does not compile (on a GPU whose
 * cooperative matrices differ from what the kernel expects) fails here with the compiler's message, not
 * later as unwritten outputs.
 */
async function compiled<T>(gpu: Gpu, build: () => T): Promise<T> {
  gpu.device.pushErrorScope("validation");
  const built = build();
  const error = await gpu.device.popErrorScope();
  ok(error === null, `the kernel did not compile: ${error?.message}`);
  return built;
}

function check(what: string, got: Float32Array, want: RoundedProducts): void {
  checkRoundedProducts(what, got, want, BOUND);
}

const CASES = [
  { type: "F16", rows: 7, cols: 80, m: 33 }, // one partial row tile, a partial K step
  { type: "F16", rows: 130, cols: 512, m: 70 }, // two row tiles, two token tiles, many K steps
  { type: "Q4_K", rows: 129, cols: 256, m: 5 }, // a quantised type (decoded to f16 while staged)
];

Deno.test("gpu matmul coop: cooperative-matrix products (entry main) match the f16-rounded CPU product", async () => {
  const gpu = await getGpu({ coopMatrix: true });
  if (!gpu.hasF16) return; // no shader-f16: matmulShape refuses coop (tested below)
  const shape = matmulShape(gpu, "mm", 64, 1, TUNING);
  ok(shape.coop && shape.tileTokens === 64, JSON.stringify(shape));
  for (const c of CASES) {
    const maxTokens = c.m + 3;
    const { weight, w, x, xBuf, step } = productCase(gpu, c, maxTokens, 4);
    const want = products(toHalf(w), toHalf(x), c.m, c.rows, c.cols);
    for (const tuning of TUNINGS) {
      const y = nanBuffer(gpu, "y", maxTokens * c.rows);
      const op = await compiled(
        gpu,
        () => createMatmul(gpu, { label: "mm", weight, x: xBuf, y, maxTokens, step, tuning }),
      );
      const [got] = await runOps(gpu, [op], step, c.m, 0, [y]);
      const what = `${c.type} rows=${c.rows} cols=${c.cols} m=${c.m} ${JSON.stringify(tuning)} (${
        gpu.coopMatrixNote || "emulated"
      })`;
      check(what, got, want);
      untouchedPast(what, got, c.m, c.rows);
      y.destroy();
    }
    xBuf.destroy();
    weight.destroy();
  }
});

Deno.test("gpu matmul coop: Q, K and V in one dispatch (entry qkv)", async () => {
  const gpu = await getGpu({ coopMatrix: true });
  if (!gpu.hasF16) return;
  const rows = [130, 33, 17];
  const [cols, m] = [160, 67];
  const maxTokens = m + 2;
  const weights = rows.map((r, i) => randomWeight(gpu, `w${i}`, i === 1 ? "Q8_0" : "F16", r, cols));
  const x = randomF32(maxTokens * cols, 4);
  const xBuf = gpu.buffer("x", x.byteLength, x);
  const outs = rows.map((r, i) => nanBuffer(gpu, `y${i}`, maxTokens * r));
  const step = new StepParams(gpu, maxTokens);
  const op = await compiled(gpu, () =>
    createQkvMatmul(gpu, {
      label: "qkv",
      ...qkvFields(weights, outs),
      x: xBuf,
      maxTokens,
      step,
      tuning: TUNINGS[1],
    }));
  const results = await runOps(gpu, [op], step, m, 0, outs);
  for (let i = 0; i < 3; i++) {
    const what = `${"QKV"[i]} rows=${rows[i]}`;
    check(what, results[i], products(toHalf(weights[i].w), toHalf(x), m, rows[i], cols));
    untouchedPast(what, results[i], m, rows[i]);
  }
  for (const b of [xBuf, ...outs]) b.destroy();
  for (const w of weights) w.weight.destroy();
});

Deno.test("gpu matmul coop: fused gate/up + SwiGLU (entry swiglu)", async () => {
  const gpu = await getGpu({ coopMatrix: true });
  if (!gpu.hasF16) return;
  for (const [rows, cols, m, tiles] of [[70, 96, 37, 64], [200, 64, 65, 128], [130, 48, 150, 64]]) {
    const maxTokens = m + 2;
    const x = randomF32(maxTokens * cols, 4);
    const { gate, up, xBuf, step, fields } = gateUpCase(gpu, "F16", rows, cols, x);
    const g = products(toHalf(gate.w), toHalf(x), m, rows, cols);
    const u = products(toHalf(up.w), toHalf(x), m, rows, cols);
    const out = nanBuffer(gpu, "out", maxTokens * rows);
    const op = await compiled(
      gpu,
      () => createGateUpSwiGluMatmul(gpu, { ...fields(out), tuning: { coop: true, coopTileTokens: tiles } }),
    );
    const [got] = await runOps(gpu, [op], step, m, 0, [out]);
    const what = `gate/up rows=${rows} cols=${cols} m=${m} tiles of ${tiles}`;
    checkRoundedSwiGlu(what, got, g, u, m * rows, BOUND);
    untouchedPast(what, got, m, rows);
    for (const b of [out, xBuf]) b.destroy();
    gate.weight.destroy();
    up.weight.destroy();
  }
});

Deno.test("gpu matmul coop: the tuning is checked, and both tile sizes fit 32 KiB of workgroup memory", async () => {
  const gpu = await getGpu({ coopMatrix: true });
  // Both tile sizes fit lavapipe's 32 KiB of workgroup memory, so both are tested there.
  for (const t of [64, 128]) ok(coopMatmulWorkgroupBytes(t) <= 32768, `${coopMatmulWorkgroupBytes(t)} bytes`);
  throws(
    () => matmulShape(gpu, "mm", 64, 1, { coop: true, coopTileTokens: 32 }),
    /^BadFlagError: mm: coopTileTokens must be 64 or 128, got 32$/,
  );
  throws(
    () => matmulShape(gpu, "mm", 64, 1, { coop: 1 as unknown as boolean }),
    /^BadFlagError: mm: coop must be true or false, got 1$/,
  );
  if (!gpu.hasF16) {
    throws(() => matmulShape(gpu, "mm", 64, 1, TUNING), /need the shader-f16 feature/);
  }
});
