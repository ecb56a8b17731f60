import { deepEqual, ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createEmbed, type EmbedOp } from "../src/gpu/ops/embed.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { GpuWeight } from "../src/gpu/weights.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import { typeInfo } from "../src/gguf/types.ts";
import { fixture, fixtureTest } from "./fixtures.ts";
import { dequantized, randomBlocks, typeOf, TYPES } from "./gpu_quant_data.ts";

async function gather(gpu: Gpu, op: EmbedOp, step: StepParams, ids: number[], out: GPUBuffer) {
  op.writeIds(ids);
  step.set(ids.length);
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  op.encode(pass);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  return await gpu.readF32(out);
}

/**
 * Checks out[t] against table row ids[t] for t < n (within 1e-6 of the row's largest magnitude: the GPU may
 * fuse the dequantisation's multiply-adds), and NaN (untouched) past n.
 */
function checkRows(got: Float32Array, table: Float32Array, ids: number[], cols: number, what: string) {
  for (let t = 0; t < ids.length; t++) {
    const row = table.subarray(ids[t] * cols, (ids[t] + 1) * cols);
    const tol = 1e-6 * row.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
    for (let c = 0; c < cols; c++) {
      const g = got[t * cols + c];
      ok(Math.abs(g - row[c]) <= tol, `${what}: out[${t}][${c}] = ${g}, expected ${row[c]} (id ${ids[t]})`);
    }
  }
  for (let i = ids.length * cols; i < got.length; i++) {
    ok(Number.isNaN(got[i]), `${what}: wrote past n at ${i}`);
  }
}

for (const name of TYPES) {
  Deno.test(`gpu embed: ${name} rows gather exactly as the CPU table dequantises them`, async () => {
    const gpu = await getGpu();
    const info = typeInfo(typeOf(name), name);
    for (const [vocab, blocks, n] of [[37, 3, 5], [9, 2048 / info.blockSize, 2]]) {
      const cols = blocks * info.blockSize;
      const bytes = randomBlocks(name, vocab * blocks);
      const weight = GpuWeight.fromBytes(gpu, `embd.${name}`, typeOf(name), [cols, vocab], bytes);
      const table = dequantized(name, bytes, vocab, cols);
      const maxTokens = n + 3;
      const ids = Array.from({ length: n }, () => Math.floor(Math.random() * vocab));
      ids[0] = vocab - 1;
      if (n > 2) ids[2] = ids[1]; // a repeated id
      const idBuf = gpu.buffer("ids", maxTokens * 4);
      const out = gpu.buffer("out", maxTokens * cols * 4, new Float32Array(maxTokens * cols).fill(NaN));
      const step = new StepParams(gpu, maxTokens);
      const op = createEmbed(gpu, { label: "token_embd", weight, ids: idBuf, out, maxTokens, step });
      checkRows(
        await gather(gpu, op, step, ids, out),
        table,
        ids,
        cols,
        `${name} vocab=${vocab} cols=${cols}`,
      );
      weight.destroy();
    }
  });
}

Deno.test("gpu embed: out-of-range ids are rejected on the CPU side and clamped on the GPU side", async () => {
  const gpu = await getGpu();
  const [vocab, cols] = [11, 64];
  const bytes = randomBlocks("Q8_0", vocab * 2);
  const weight = GpuWeight.fromBytes(gpu, "token_embd.weight", typeOf("Q8_0"), [cols, vocab], bytes);
  const idBuf = gpu.buffer("ids", 4 * 4);
  const out = gpu.buffer("out", 4 * cols * 4, new Float32Array(4 * cols).fill(NaN));
  const step = new StepParams(gpu, 4);
  const op = createEmbed(gpu, { label: "token_embd", weight, ids: idBuf, out, maxTokens: 4, step });
  throws(() => op.writeIds([3, 11]), {
    name: "BadFlagError",
    message: "token_embd: token id 11 at index 1 is outside the vocabulary [0, 11)",
  });
  throws(() => op.writeIds([-1]), BadFlagError);
  throws(() => op.writeIds([1.5]), BadFlagError);
  throws(() => op.writeIds([1, 2, 3, 4, 5]), /at most 4 per step/);
  // An id written straight into the buffer (as the GPU sampler does) past the vocabulary reads the last row.
  gpu.device.queue.writeBuffer(idBuf, 0, new Uint32Array([1000, 2]));
  step.set(2);
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  op.encode(pass);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  const got = await gpu.readF32(out);
  const table = dequantized("Q8_0", bytes, vocab, cols);
  checkRows(got, table, [vocab - 1, 2], cols, "clamped");
});

fixtureTest(
  "gpu embed: stories260K token embeddings uploaded from the GGUF file",
  ["stories260K.gguf"],
  async () => {
    const gpu = await getGpu();
    const file = await openGGUF(fixture("stories260K.gguf"));
    try {
      const info = file.tensor("token_embd.weight");
      const weight = await GpuWeight.fromGGUF(gpu, file, info, { chunkBytes: 1000 });
      deepEqual([weight.cols, weight.rows], info.shape);
      const table = await file.readF32(info);
      const ids = [1, 0, 511, 42, 42, 300];
      const idBuf = gpu.buffer("ids", ids.length * 4);
      const out = gpu.buffer(
        "out",
        ids.length * weight.cols * 4,
        new Float32Array(ids.length * weight.cols).fill(NaN),
      );
      const step = new StepParams(gpu, ids.length);
      const op = createEmbed(gpu, {
        label: "token_embd",
        weight,
        ids: idBuf,
        out,
        maxTokens: ids.length,
        step,
      });
      checkRows(await gather(gpu, op, step, ids, out), table, ids, weight.cols, "stories260K");
    } finally {
      file.close();
    }
  },
);

Deno.test("gpu embed: with a folded norm it also writes out · γ and each workgroup's Σ out²", async () => {
  const gpu = await getGpu();
  // 320 columns: 2 workgroups of 256 columns, the second ragged; 3 of 4 token slots used.
  const [vocab, cols, maxTokens] = [23, 320, 4];
  const ids = [7, 22, 7];
  const bytes = randomBlocks("Q8_0", vocab * cols / 32);
  const weight = GpuWeight.fromBytes(gpu, "token_embd.weight", typeOf("Q8_0"), [cols, vocab], bytes);
  const table = dequantized("Q8_0", bytes, vocab, cols);
  const gamma = Float32Array.from({ length: cols }, () => Math.random() * 2 - 1);
  const nan = (n: number) => new Float32Array(n).fill(NaN);
  const idBuf = gpu.buffer("ids", maxTokens * 4);
  const out = gpu.buffer("out", maxTokens * cols * 4, nan(maxTokens * cols));
  const normOut = gpu.buffer("xn", maxTokens * cols * 4, nan(maxTokens * cols));
  const sums = gpu.buffer("sums", maxTokens * 2 * 4, nan(maxTokens * 2));
  const step = new StepParams(gpu, maxTokens);
  const op = createEmbed(gpu, {
    label: "token_embd",
    weight,
    ids: idBuf,
    out,
    maxTokens,
    step,
    fold: { weight: gpu.buffer("gamma", cols * 4, gamma), out: normOut, sums },
  });
  ok(op.normPartials === 2, `normPartials ${op.normPartials}`);
  checkRows(await gather(gpu, op, step, ids, out), table, ids, cols, "folded");
  const xn = await gpu.readF32(normOut), got = await gpu.readF32(sums);
  for (let t = 0; t < ids.length; t++) {
    const row = table.subarray(ids[t] * cols, (ids[t] + 1) * cols);
    for (let c = 0; c < cols; c++) {
      const want = row[c] * gamma[c];
      ok(Math.abs(xn[t * cols + c] - want) <= 1e-5 * (1 + Math.abs(want)), `xn[${t}][${c}]`);
    }
    for (let g = 0; g < 2; g++) {
      const want = row.subarray(256 * g, Math.min(cols, 256 * (g + 1))).reduce((a, v) => a + v * v, 0);
      ok(
        Math.abs(got[t * 2 + g] - want) <= 1e-4 * want,
        `sums[${t}][${g}] = ${got[t * 2 + g]}, want ${want}`,
      );
    }
  }
  ok(xn.subarray(ids.length * cols).every(Number.isNaN) && got.subarray(ids.length * 2).every(Number.isNaN));
  weight.destroy();
});
