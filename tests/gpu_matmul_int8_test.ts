import { ok, throws } from "node:assert/strict";
import { BadFlagError, UnsupportedError } from "../src/errors.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import {
  createGateUpSwiGluInt8,
  createMatmulInt8,
  createQ8Quantize,
  createQkvInt8,
  gateUpInt8Blocker,
  INT8_WEIGHT_TYPES,
  int8MatmulBlocker,
  int8WorkgroupBytes,
  q8ActivationBytes,
  type Q8Activations,
  qkvInt8Blocker,
} from "../src/gpu/ops/matmul_int8.ts";
import { SPLIT_K_SKEW, SplitKMatmulOp, splitKOutputFloats } from "../src/gpu/ops/matmul.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { compareLinear, randomWeight } from "./gpu_quant_data.ts";
import { qkvFields, randomF32, submitValidated } from "./gpu_ops_helpers.ts";

/** Quantised activation buffers for `maxTokens` rows of `cols`, filled with garbage (0xAB bytes). */
function q8Buffers(gpu: Gpu, maxTokens: number, cols: number): Q8Activations {
  const bytes = q8ActivationBytes(maxTokens, cols);
  return {
    xq: gpu.buffer("xq", bytes.xq, new Uint8Array(bytes.xq).fill(0xab)),
    xds: gpu.buffer("xds", bytes.xds, new Uint8Array(bytes.xds).fill(0xab)),
    cols,
    maxTokens,
  };
}

/** The quantised rows read back: x' = d · q per value ([m][cols]), and the (d, d·Σq) pairs. */
async function readQ8(
  gpu: Gpu,
  q8: Q8Activations,
  m: number,
): Promise<{ x: Float32Array; ds: Float32Array }> {
  const cols = q8.cols, blocks = cols / 32;
  const raw = new Int8Array((await gpu.readF32(q8.xq as GPUBuffer, 0, m * cols / 4)).buffer);
  const ds = await gpu.readF32(q8.xds as GPUBuffer, 0, m * blocks * 2);
  const x = new Float32Array(m * cols);
  for (let i = 0; i < m * cols; i++) x[i] = ds[2 * Math.floor(i / 32)] * raw[i];
  return { x, ds };
}

Deno.test("int8 matmul: activations quantise per 32-value block to within half a step, every block written", async () => {
  const gpu = await getGpu();
  const cols = 96, maxTokens = 6, m = 5;
  const x = randomF32(maxTokens * cols, 3);
  x.fill(0, 32, 64); // an all-zero block: d = 0
  const step = new StepParams(gpu, maxTokens);
  const q8 = q8Buffers(gpu, maxTokens, cols);
  const op = createQ8Quantize(gpu, { label: "q8", x: gpu.buffer("x", x.byteLength, x), out: q8, step });
  step.set(m);
  await submitValidated(gpu, [op]);
  const raw = new Int8Array((await gpu.readF32(q8.xq as GPUBuffer, 0, maxTokens * cols / 4)).buffer);
  const { ds } = await readQ8(gpu, q8, maxTokens);
  for (let b = 0; b < m * cols / 32; b++) {
    let amax = 0, sum = 0;
    for (let e = 0; e < 32; e++) amax = Math.max(amax, Math.abs(x[32 * b + e]));
    const d = ds[2 * b];
    ok(Math.abs(d - amax / 127) <= 1e-6 * amax, `block ${b}: d = ${d}, max |x| / 127 = ${amax / 127}`);
    for (let e = 0; e < 32; e++) {
      const q = raw[32 * b + e];
      sum += q;
      ok(Math.abs(q) <= 127, `block ${b}: q = ${q}`);
      ok(
        Math.abs(d * q - x[32 * b + e]) <= 0.5001 * d + 1e-30,
        `block ${b} value ${e}: ${d * q} for ${x[32 * b + e]}`,
      );
    }
    ok(
      Math.abs(ds[2 * b + 1] - d * sum) <= 1e-6 * Math.abs(d) * 32 * 127,
      `block ${b}: d·Σq = ${ds[2 * b + 1]}`,
    );
  }
  // Rows past the step's tokens are untouched.
  ok(raw.subarray(m * cols).every((v) => v === -85), "the quantiser wrote past the step's tokens");
});

/** Every supported type at odd shapes: rows past a tile, tokens past a tile, a K step left half full. */
for (const type of INT8_WEIGHT_TYPES) {
  Deno.test(`int8 matmul: ${type} matches the dequantised weights times the quantised activations`, async () => {
    const gpu = await getGpu();
    const block = type.endsWith("_K") ? 256 : 32;
    const cases = [
      { rows: 1, cols: block, m: 1, kBlocks: 2 },
      { rows: 130, cols: type.endsWith("_K") ? 256 : 96, m: 70, kBlocks: 2 },
      { rows: 7, cols: 3 * block, m: 9, kBlocks: 2 },
      // Four blocks per step where the workgroup memory allows (a GPU; not lavapipe's 32 KiB).
      ...(int8WorkgroupBytes(4) <= gpu.limits.maxComputeWorkgroupStorageSize
        ? [{ rows: 33, cols: 5 * block, m: 3, kBlocks: 4 }]
        : []),
    ];
    for (const c of cases) {
      const maxTokens = c.m + 2;
      const { weight, w } = randomWeight(gpu, `w.${type}`, type, c.rows, c.cols);
      const x = randomF32(maxTokens * c.cols);
      const step = new StepParams(gpu, maxTokens);
      const q8 = q8Buffers(gpu, maxTokens, c.cols);
      const y = gpu.buffer("y", maxTokens * c.rows * 4, new Float32Array(maxTokens * c.rows).fill(NaN));
      const ops = [
        createQ8Quantize(gpu, { label: "q8", x: gpu.buffer("x", x.byteLength, x), out: q8, step }),
        createMatmulInt8(gpu, { label: `mm.${type}`, weight, x: q8, y, maxTokens, step, kBlocks: c.kBlocks }),
      ];
      step.set(c.m);
      await submitValidated(gpu, ops);
      const got = await gpu.readF32(y);
      const { x: xq } = await readQ8(gpu, q8, c.m);
      const bad = compareLinear(got, w, xq, c.m, c.rows, c.cols, 1e-5);
      ok(bad === undefined, `${type} ${JSON.stringify(c)}: ${bad}`);
      ok(got.subarray(c.m * c.rows).every(Number.isNaN), `${type} ${JSON.stringify(c)}: wrote past the step`);
    }
  });
}

Deno.test("int8 matmul: split-K parts add up to the product of the quantised input, every element written", async () => {
  const gpu = await getGpu();
  for (
    const c of [
      { type: "Q4_K", rows: 33, cols: 2048, m: 5, maxTokens: 9 }, // 4 ranges of 16 blocks
      { type: "Q6_K", rows: 7, cols: 1280, m: 2, maxTokens: 3 }, // 4 ranges, the last one shorter
      { type: "Q8_0", rows: 130, cols: 544, m: 3, maxTokens: 4 }, // 2 ranges (256 columns each at least)
    ]
  ) {
    const { type, rows, cols, m, maxTokens } = c;
    const { weight, w } = randomWeight(gpu, `w.${type}`, type, rows, cols);
    const x = randomF32(maxTokens * cols);
    const step = new StepParams(gpu, maxTokens);
    const q8 = q8Buffers(gpu, maxTokens, cols);
    const floats = splitKOutputFloats(4, maxTokens, rows);
    const y = gpu.buffer("y", floats * 4, new Float32Array(floats).fill(NaN));
    const product = createMatmulInt8(gpu, {
      label: `mm.${type}`,
      weight,
      x: q8,
      y,
      maxTokens,
      step,
      maxKSplits: 4,
    });
    ok(product instanceof SplitKMatmulOp);
    const splits = product.splitsFor(m);
    ok(splits > 1, `${type}: ${splits} splits`);
    step.set(m);
    await submitValidated(gpu, [
      createQ8Quantize(gpu, { label: "q8", x: gpu.buffer("x", x.byteLength, x), out: q8, step }),
      product,
    ]);
    const got = await gpu.readF32(y);
    const { x: xq } = await readQ8(gpu, q8, m);
    const part = m * rows + SPLIT_K_SKEW;
    const total = new Float32Array(m * rows);
    for (let s = 0; s < splits; s++) {
      for (let i = 0; i < m * rows; i++) {
        ok(Number.isFinite(got[s * part + i]), `${type}: part ${s} element ${i} not written`);
        total[i] += got[s * part + i];
      }
    }
    const bad = compareLinear(total, w, xq, m, rows, cols, 1e-5);
    ok(bad === undefined, `${type} ${splits} splits: ${bad}`);
    ok(got.subarray(splits * part).every(Number.isNaN), `${type}: wrote past the parts`);
  }
});

Deno.test("int8 matmul: gate/up + SwiGLU in one dispatch matches silu(x·gateᵀ) · (x·upᵀ) of the quantised input", async () => {
  const gpu = await getGpu();
  for (
    const c of [
      { type: "Q4_K", rows: 70, cols: 512, m: 65 },
      { type: "Q6_K", rows: 33, cols: 256, m: 3 },
      { type: "Q8_0", rows: 129, cols: 96, m: 1 },
    ]
  ) {
    const { type, rows, cols, m } = c;
    const maxTokens = m + 1;
    const gate = randomWeight(gpu, "gate", type, rows, cols);
    const up = randomWeight(gpu, "up", type, rows, cols);
    const x = randomF32(maxTokens * cols);
    const step = new StepParams(gpu, maxTokens);
    const q8 = q8Buffers(gpu, maxTokens, cols);
    const out = gpu.buffer("out", maxTokens * rows * 4, new Float32Array(maxTokens * rows).fill(NaN));
    const ops = [
      createQ8Quantize(gpu, { label: "q8", x: gpu.buffer("x", x.byteLength, x), out: q8, step }),
      createGateUpSwiGluInt8(gpu, {
        label: "gate_up",
        gate: gate.weight,
        up: up.weight,
        x: q8,
        out,
        maxTokens,
        step,
      }),
    ];
    step.set(m);
    await submitValidated(gpu, ops);
    const got = await gpu.readF32(out);
    const { x: xq } = await readQ8(gpu, q8, m);
    for (let t = 0; t < m; t++) {
      for (let r = 0; r < rows; r++) {
        let g = 0, u = 0, scale = 0;
        for (let k = 0; k < cols; k++) {
          g += gate.w[r * cols + k] * xq[t * cols + k];
          u += up.w[r * cols + k] * xq[t * cols + k];
          scale += Math.abs(gate.w[r * cols + k] * xq[t * cols + k]) +
            Math.abs(up.w[r * cols + k] * xq[t * cols + k]);
        }
        const want = g / (1 + Math.exp(-g)) * u;
        const err = Math.abs(got[t * rows + r] - want);
        ok(
          err <= 1e-5 * scale * (Math.abs(g) + Math.abs(u) + 1),
          `${type} out[${t}][${r}] = ${got[t * rows + r]}, want ${want}`,
        );
      }
    }
    ok(got.subarray(m * rows).every(Number.isNaN), `${type}: wrote past the step`);
  }
  const q4 = randomWeight(gpu, "g", "Q4_K", 4, 256).weight,
    q6 = randomWeight(gpu, "u", "Q6_K", 4, 256).weight;
  ok(gateUpInt8Blocker(q4, q6)?.includes("g is Q4_K, u Q6_K"), gateUpInt8Blocker(q4, q6));
});

Deno.test("int8 matmul: Q, K and V of mixed types in one dispatch each match their own product", async () => {
  const gpu = await getGpu();
  for (
    const c of [
      // Llama-like: Q and K Q4_K, V Q6_K, K and V with fewer rows; Q past a row tile, tokens past a tile.
      { types: ["Q4_K", "Q4_K", "Q6_K"], rows: [160, 40, 40], cols: 512, m: 67 },
      { types: ["Q8_0", "Q5_K", "Q4_0"], rows: [7, 129, 1], cols: 256, m: 2 },
    ]
  ) {
    const { cols, m } = c;
    const maxTokens = m + 1;
    const weights = c.types.map((type, i) => randomWeight(gpu, ["wq", "wk", "wv"][i], type, c.rows[i], cols));
    const x = randomF32(maxTokens * cols);
    const step = new StepParams(gpu, maxTokens);
    const q8 = q8Buffers(gpu, maxTokens, cols);
    const outs = c.rows.map((rows) =>
      gpu.buffer("out", maxTokens * rows * 4, new Float32Array(maxTokens * rows).fill(NaN))
    );
    const ops = [
      createQ8Quantize(gpu, { label: "q8", x: gpu.buffer("x", x.byteLength, x), out: q8, step }),
      createQkvInt8(gpu, {
        label: "qkv",
        ...qkvFields(weights, outs),
        x: q8,
        maxTokens,
        step,
      }),
    ];
    step.set(m);
    await submitValidated(gpu, ops);
    const { x: xq } = await readQ8(gpu, q8, m);
    for (let i = 0; i < 3; i++) {
      const got = await gpu.readF32(outs[i]);
      const bad = compareLinear(got, weights[i].w, xq, m, c.rows[i], cols, 1e-5);
      ok(bad === undefined, `${c.types[i]} (output ${i}): ${bad}`);
      ok(got.subarray(m * c.rows[i]).every(Number.isNaN), `output ${i}: wrote past the step`);
    }
  }
  const q4 = randomWeight(gpu, "wq", "Q4_K", 4, 256).weight;
  const narrow = randomWeight(gpu, "wk", "Q4_K", 4, 512).weight;
  const f16 = randomWeight(gpu, "wv", "F16", 4, 256).weight;
  ok(qkvInt8Blocker(q4, narrow, q4)?.includes("differ in width"), qkvInt8Blocker(q4, narrow, q4));
  ok(qkvInt8Blocker(q4, q4, f16)?.includes("wv is F16"), qkvInt8Blocker(q4, q4, f16));
});

Deno.test("int8 matmul: a weight split into parts writes each part's columns", async () => {
  const gpu = await getGpu();
  const rows = 300, cols = 64, m = 4;
  const { weight, w } = randomWeight(gpu, "w.split", "Q8_0", rows, cols, 100 * 68);
  ok(weight.parts.length > 1, `expected several parts, got ${weight.parts.length}`);
  const x = randomF32(m * cols);
  const step = new StepParams(gpu, m);
  const q8 = q8Buffers(gpu, m, cols);
  const y = gpu.buffer("y", m * rows * 4, new Float32Array(m * rows).fill(NaN));
  const ops = [
    createQ8Quantize(gpu, { label: "q8", x: gpu.buffer("x", x.byteLength, x), out: q8, step }),
    createMatmulInt8(gpu, { label: "mm.split", weight, x: q8, y, maxTokens: m, step }),
  ];
  step.set(m);
  await submitValidated(gpu, ops);
  const bad = compareLinear(await gpu.readF32(y), w, (await readQ8(gpu, q8, m)).x, m, rows, cols, 1e-5);
  ok(bad === undefined, bad);
});

Deno.test("int8 matmul: types without an integer view, rows off the 32-value grid and bad kBlocks are refused", async () => {
  const gpu = await getGpu();
  const f16 = randomWeight(gpu, "w.f16", "F16", 4, 64).weight;
  ok(int8MatmulBlocker(f16)?.includes("w.f16 is F16"), int8MatmulBlocker(f16));
  const step = new StepParams(gpu, 2);
  throws(
    () =>
      createMatmulInt8(gpu, {
        label: "mm",
        weight: f16,
        x: q8Buffers(gpu, 2, 64),
        y: gpu.buffer("y", 32),
        maxTokens: 2,
        step,
      }),
    UnsupportedError,
  );
  const q8 = randomWeight(gpu, "w.q8", "Q8_0", 4, 64).weight;
  ok(int8MatmulBlocker(q8) === undefined);
  for (const kBlocks of [1, 3, 8]) {
    throws(
      () =>
        createMatmulInt8(gpu, {
          label: "mm",
          weight: q8,
          x: q8Buffers(gpu, 2, 64),
          y: gpu.buffer("y", 32),
          maxTokens: 2,
          step,
          kBlocks,
        }),
      BadFlagError,
    );
  }
  throws(
    () =>
      createMatmulInt8(gpu, {
        label: "mm",
        weight: q8,
        x: q8Buffers(gpu, 2, 96),
        y: gpu.buffer("y", 32),
        maxTokens: 2,
        step,
      }),
    UnsupportedError,
  );
});
