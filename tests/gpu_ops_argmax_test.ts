import { deepEqual, throws } from "node:assert/strict";
import { getGpu } from "../src/gpu/device.ts";
import { createArgmax } from "../src/gpu/ops/argmax.ts";
import { randomF32 } from "./gpu_ops_helpers.ts";

/** CPU reference: lowest index of the largest value. */
function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/**
 * Runs argmax over `rows` (each `vocab` long, `stride` apart) and compares with the CPU, row by row. The op
 * runs twice, the ids reset between: the second run must find the blocks' arrival counters back at zero.
 */
async function check(rows: Float32Array[], vocab: number, stride = vocab, maxRows = rows.length) {
  const gpu = await getGpu();
  const data = randomF32(maxRows * stride, 10);
  rows.forEach((r, i) => data.set(r, i * stride));
  const logits = gpu.buffer("logits", data.byteLength, data);
  const op = createArgmax(gpu, { label: "sample", vocab, maxRows, logits, rowStride: stride });
  op.setRows(rows.length);
  const enc = gpu.device.createCommandEncoder();
  for (let run = 0; run < 2; run++) {
    if (run > 0) enc.clearBuffer(op.tokens);
    const pass = enc.beginComputePass();
    op.encode(pass);
    pass.end();
  }
  gpu.device.queue.submit([enc.finish()]);
  const got = Array.from(await gpu.readU32(op.tokens));
  const want = [...rows.map(argmax), ...new Array(maxRows - rows.length).fill(0)];
  deepEqual(got, want, `vocab ${vocab}, ${rows.length} of ${maxRows} rows`);
}

for (const vocab of [1, 7, 1000, 4097, 128256]) {
  Deno.test(`argmax: vocab ${vocab}, random rows`, async () => {
    await check([randomF32(vocab, 10)], vocab);
    await check([randomF32(vocab, 10), randomF32(vocab, 10), randomF32(vocab, 10)], vocab, vocab + 5, 4);
  });
  Deno.test(`argmax: vocab ${vocab}, ties go to the lowest index`, async () => {
    const rows: Float32Array[] = [];
    for (let r = 0; r < 3; r++) {
      const x = randomF32(vocab, 10);
      // Equal maxima spread over blocks, over invocations and next to each other.
      const at = [
        vocab - 1,
        Math.floor(vocab / 2),
        Math.floor(vocab / 3) + 1,
        Math.floor(vocab / 3),
        4096,
        4097,
      ]
        .filter((i) => i < vocab);
      for (const i of at) x[i] = 20 + r;
      rows.push(x);
    }
    rows.push(new Float32Array(vocab).fill(-3.5)); // all equal: index 0
    await check(rows, vocab);
  });
}

Deno.test("argmax: bad shapes are one-line BadFlagErrors", async () => {
  const gpu = await getGpu();
  const logits = gpu.buffer("l", 100 * 4);
  throws(() => createArgmax(gpu, { label: "sample", vocab: 101, logits }), /buffer 'logits' holds 400 bytes/);
  throws(() => createArgmax(gpu, { label: "sample", vocab: 0, logits }), /vocab/);
  const op = createArgmax(gpu, { label: "sample", vocab: 100, logits });
  throws(() => op.setRows(2), /nRows/);
});
