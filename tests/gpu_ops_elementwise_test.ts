import { equal, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { createAdd, createSwiGlu } from "../src/gpu/ops/elementwise.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { swiglu } from "../src/model/ops.ts";
import { expectClose, nanBuffer, randomF32 } from "./gpu_ops_helpers.ts";

async function run(op: GpuOp): Promise<void> {
  const gpu = await getGpu();
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  op.encode(pass);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  await gpu.device.queue.onSubmittedWorkDone();
}

const shapes = [[8, 1, 1], [64, 3, 3], [72, 17, 17], [2056, 3, 3], [2056, 17, 5], [300, 17, 1]];

for (const [width, maxTokens, nTokens] of shapes) {
  for (const mode of ["in place", "out of place", "fused gate|up rows"]) {
    Deno.test(`swiglu ${mode}: width ${width}, M ${nTokens} of ${maxTokens}`, async () => {
      const gpu = await getGpu();
      const step = new StepParams(gpu, maxTokens);
      step.set(nTokens);
      const fused = mode === "fused gate|up rows";
      // Fused: each row is [gate (width) | pad | up (width) | pad], up starting at a 256-byte-aligned column.
      const upCol = fused ? Math.ceil(width / 64) * 64 : 0;
      const stride = fused ? 2 * upCol : width;
      const g = randomF32(maxTokens * stride, 6);
      const u = randomF32(maxTokens * stride, 2);
      if (fused) {
        for (let t = 0; t < maxTokens; t++) {
          g.set(u.subarray(t * stride, t * stride + width), t * stride + upCol);
        }
      }
      const gBuf = gpu.buffer("g", g.byteLength, g);
      const uBuf = gpu.buffer("u", u.byteLength, u);
      const out = nanBuffer(gpu, "out", maxTokens * width);
      const op = createSwiGlu(gpu, {
        label: "ffn",
        width,
        maxTokens,
        gate: gBuf,
        up: fused ? { buffer: gBuf, offset: upCol * 4 } : uBuf,
        inputStride: stride,
        out: mode === "in place" ? undefined : out,
        step,
      });
      await run(op);
      const want = new Float32Array(maxTokens * width).fill(NaN);
      for (let t = 0; t < nTokens; t++) {
        const row = g.slice(t * stride, t * stride + width);
        swiglu(row, u.subarray(t * stride, t * stride + width));
        want.set(row, t * width);
      }
      const got = mode === "in place" ? await gpu.readF32(gBuf) : await gpu.readF32(out);
      if (mode === "in place") {
        expectClose("swiglu in place", got, want.subarray(0, nTokens * width), 1e-5, 1e-7);
        for (let i = nTokens * width; i < g.length; i++) equal(got[i], g[i], `g[${i}] changed past nTokens`);
      } else {
        expectClose(`swiglu ${mode}`, got, want.subarray(0, nTokens * width), 1e-5, 1e-7);
        for (let i = nTokens * width; i < want.length; i++) {
          equal(got[i], NaN, `out[${i}] written past nTokens`);
        }
        const gAfter = await gpu.readF32(gBuf);
        for (let i = 0; i < g.length; i++) equal(gAfter[i], g[i], `gate[${i}] changed`);
      }
    });
  }
  Deno.test(`add: width ${width}, M ${nTokens} of ${maxTokens}`, async () => {
    const gpu = await getGpu();
    const step = new StepParams(gpu, maxTokens);
    step.set(nTokens);
    const x = randomF32(maxTokens * width, 4);
    const y = randomF32(maxTokens * width, 4);
    const xBuf = gpu.buffer("x", x.byteLength, x);
    const yBuf = gpu.buffer("y", y.byteLength, y);
    await run(createAdd(gpu, { label: "residual", width, maxTokens, x: xBuf, y: yBuf, step }));
    const got = await gpu.readF32(xBuf);
    const want = x.slice();
    for (let i = 0; i < nTokens * width; i++) want[i] = Math.fround(x[i] + y[i]);
    expectClose("add", got, want, 0, 0);
  });
}

Deno.test("swiglu: extreme gate values (±100) stay finite", async () => {
  const gpu = await getGpu();
  const step = new StepParams(gpu, 1);
  const g = Float32Array.from([-100, -30, 0.5, 30, 100, -1e-3, 88, -88]);
  const u = randomF32(g.length, 2);
  const gBuf = gpu.buffer("g", g.byteLength, g);
  const uBuf = gpu.buffer("u", u.byteLength, u);
  await run(createSwiGlu(gpu, { label: "ffn", width: g.length, maxTokens: 1, gate: gBuf, up: uBuf, step }));
  const want = g.slice();
  swiglu(want, u);
  expectClose("swiglu extremes", await gpu.readF32(gBuf), want, 1e-5, 1e-30);
});

Deno.test("elementwise: aliasing and short buffers are one-line BadFlagErrors", async () => {
  const gpu = await getGpu();
  const step = new StepParams(gpu, 2);
  const a = gpu.buffer("a", 2 * 8 * 4);
  const b = gpu.buffer("b", 8);
  const base = { label: "ffn", width: 8, maxTokens: 2, step };
  throws(() => createSwiGlu(gpu, { ...base, gate: a, up: a }), /different buffers/);
  throws(() => createSwiGlu(gpu, { ...base, gate: a, up: b }), /buffer 'up' holds 8 bytes/);
  throws(() => createAdd(gpu, { ...base, x: a, y: a }), BadFlagError);
  throws(() => createAdd(gpu, { ...base, maxTokens: 3, x: a, y: b }), /maxTokens/);
});
