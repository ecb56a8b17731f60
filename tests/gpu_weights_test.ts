import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { BadFileError, OutOfMemoryError, UnsupportedError } from "../src/errors.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createEmbed } from "../src/gpu/ops/embed.ts";
import { createMatmul, createMatvec } from "../src/gpu/ops/matmul.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { dequantSource, GpuWeight, type TensorSource } from "../src/gpu/weights.ts";
import { compareLinear, dequantized, randomBlocks, randomF32, typeOf } from "./gpu_quant_data.ts";

async function run(gpu: Gpu, op: GpuOp, step: StepParams, m: number, out: GPUBuffer): Promise<Float32Array> {
  step.set(m);
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  op.encode(pass);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  return await gpu.readF32(out);
}

/** The bytes of every part, concatenated (each part trimmed to its rows). */
async function readBack(gpu: Gpu, weight: GpuWeight): Promise<Uint8Array> {
  const all = new Uint8Array(weight.byteLength);
  for (const part of weight.parts) {
    const bytes = new Uint8Array(await gpu.read(part.buffer));
    all.set(bytes.subarray(0, part.rows * weight.rowBytes), part.firstRow * weight.rowBytes);
  }
  return all;
}

function source(
  name: string,
  type: number,
  shape: number[],
  bytes: Uint8Array,
  reads: number[],
): TensorSource {
  return {
    name,
    type,
    shape,
    read(offset, length) {
      reads.push(length);
      return Promise.resolve(bytes.slice(offset, offset + length));
    },
  };
}

Deno.test("gpu weights: streamed upload in whole-row chunks keeps every byte (unaligned rows)", async () => {
  const gpu = await getGpu();
  // Q6_K rows of 210 bytes and Q4_0 rows of 3 × 18 = 54 bytes: neither is 4-byte aligned.
  for (const [name, cols, rows] of [["Q6_K", 256, 23], ["Q4_0", 96, 41], ["F16", 3, 201]] as const) {
    const info = { blocks: name === "F16" ? cols : name === "Q6_K" ? 1 : 3 };
    const bytes = randomBlocks(name, rows * info.blocks);
    const reads: number[] = [];
    const weight = await GpuWeight.upload(
      gpu,
      source(`t.${name}`, typeOf(name), [cols, rows], bytes, reads),
      {
        chunkBytes: 500,
      },
    );
    equal(weight.parts.length, 1);
    ok(reads.length > 1, `${name}: read in ${reads.length} chunk(s)`);
    ok(reads.every((n) => n <= Math.max(500, 4 * weight.rowBytes) && n % weight.rowBytes === 0), `${reads}`);
    deepEqual(await readBack(gpu, weight), bytes, `${name}: bytes on the GPU differ`);
    weight.destroy();
  }
});

Deno.test("gpu weights: a tensor over the binding limit is split by rows; matvec, matmul and embed see one matrix", async () => {
  const gpu = await getGpu();
  for (const name of ["Q6_K", "Q4_0", "F32"]) {
    const blockSize = name === "Q6_K" ? 256 : name === "Q4_0" ? 32 : 1;
    // F32: 44 values per row, a multiple of 4 (the decode kernels read unquantised rows in vec4s).
    const [rows, cols] = [29, name === "F32" ? 44 : 2 * blockSize];
    const bytes = randomBlocks(name, rows * cols / blockSize);
    const rowBytes = bytes.byteLength / rows;
    // Parts of at most 5 rows (the last one shorter), streamed in 2-row chunks.
    const reads: number[] = [];
    const weight = await GpuWeight.upload(gpu, source("w", typeOf(name), [cols, rows], bytes, reads), {
      maxPartBytes: 5 * rowBytes + 3,
      chunkBytes: 2 * rowBytes,
    });
    deepEqual(weight.parts.map((p) => [p.firstRow, p.rows]), [[0, 5], [5, 5], [10, 5], [15, 5], [20, 5], [
      25,
      4,
    ]]);
    deepEqual(await readBack(gpu, weight), bytes);
    const w = dequantized(name, bytes, rows, cols);

    const m = 3;
    const x = randomF32(m * cols);
    const xBuf = gpu.buffer("x", x.byteLength, x);
    const step = new StepParams(gpu, m);
    for (const create of [createMatvec, createMatmul]) {
      const yBuf = gpu.buffer("y", m * rows * 4, new Float32Array(m * rows).fill(NaN));
      const op = create(gpu, { label: "split", weight, x: xBuf, y: yBuf, maxTokens: m, step });
      const bad = compareLinear(await run(gpu, op, step, m, yBuf), w, x, m, rows, cols, 2e-5);
      ok(bad === undefined, `${name} ${create.name}: ${bad}`);
    }

    const ids = [0, 4, 5, 28, 13, 25];
    const idBuf = gpu.buffer("ids", ids.length * 4);
    const out = gpu.buffer("out", ids.length * cols * 4, new Float32Array(ids.length * cols).fill(NaN));
    const embedStep = new StepParams(gpu, ids.length);
    const embed = createEmbed(gpu, {
      label: "embd",
      weight,
      ids: idBuf,
      out,
      maxTokens: ids.length,
      step: embedStep,
    });
    embed.writeIds(ids);
    const got = await run(gpu, embed, embedStep, ids.length, out);
    for (let t = 0; t < ids.length; t++) {
      for (let c = 0; c < cols; c++) {
        const want = w[ids[t] * cols + c];
        ok(Math.abs(got[t * cols + c] - want) <= 1e-6 * Math.abs(want) + 1e-7, `${name} embed [${t}][${c}]`);
      }
    }
    weight.destroy();
  }
});

Deno.test("gpu weights: bad tensors are one-line errors naming the tensor", async () => {
  const gpu = await getGpu();
  throws(
    () => GpuWeight.fromBytes(gpu, "blk.0.attn_q.weight", typeOf("Q4_0"), [64, 2], new Uint8Array(71)),
    {
      name: "BadFileError",
      message: "tensor blk.0.attn_q.weight: 71 bytes given, 72 expected for Q4_0 [64, 2]",
    },
  );
  throws(
    () => GpuWeight.fromBytes(gpu, "t", typeOf("Q4_K"), [100, 2], new Uint8Array(0)),
    /tensor t: row length 100 is not a multiple of the Q4_K block size 256/,
  );
  throws(() => GpuWeight.fromBytes(gpu, "t", 16, [256, 1], new Uint8Array(66)), UnsupportedError);
  throws(() => GpuWeight.fromBytes(gpu, "t", typeOf("F32"), [0, 1], new Uint8Array(0)), BadFileError);
  throws(
    () => GpuWeight.fromBytes(gpu, "t", typeOf("F32"), [64, 2], new Uint8Array(512), { maxPartBytes: 100 }),
    OutOfMemoryError,
  );
  const truncated: TensorSource = {
    name: "output.weight",
    type: typeOf("Q8_0"),
    shape: [32, 4],
    read: (_offset, length) => new Uint8Array(Math.max(0, length - 1)),
  };
  await rejects(
    GpuWeight.upload(gpu, truncated),
    /tensor output\.weight: read 135 bytes at row 0, 136 expected/,
  );
  throws(() => dequantSource("IQ2_XS"), UnsupportedError);
});
