import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { Gpu } from "../src/gpu/device.ts";
import { encodeOps, type GpuOp } from "../src/gpu/ops/op.ts";
import { formatProfile, GpuProfiler } from "../src/gpu/profiler.ts";

/** A labelled op running the smoke kernel over `n` values. */
function smokeOp(gpu: Gpu, label: string, n: number): GpuOp {
  const kernel = gpu.kernel("smoke", { scale: 2, n });
  const a = gpu.buffer(`${label}.a`, n * 4, new Float32Array(n).fill(1));
  const out = gpu.buffer(`${label}.out`, n * 4);
  const group = gpu.bind(kernel, [a, out]);
  return {
    label,
    encode(pass) {
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(Math.ceil(n / 64));
    },
  };
}

Deno.test("profiler: timed passes aggregate by label over steps, totals are non-negative", async (t) => {
  const gpu = await Gpu.create({ profile: true });
  try {
    if (!gpu.hasTimestamps) {
      t.step({ name: "timestamp-query unavailable on this adapter", ignore: true, fn: () => {} });
      return;
    }
    const profiler = new GpuProfiler(gpu, 8);
    ok(profiler.available);
    equal(profiler.reason, undefined);
    const ops = [smokeOp(gpu, "norm", 4097), smokeOp(gpu, "ffn", 65537), smokeOp(gpu, "norm", 33)];
    for (let step = 0; step < 2; step++) {
      const encoder = gpu.device.createCommandEncoder();
      encodeOps(encoder, ops, profiler);
      profiler.resolve(encoder);
      gpu.device.queue.submit([encoder.finish()]);
      await profiler.collect();
    }
    const rows = profiler.totals();
    deepEqual(rows.map((r) => r.label).sort(), ["ffn", "norm"]);
    equal(rows.find((r) => r.label === "norm")!.calls, 4);
    equal(rows.find((r) => r.label === "ffn")!.calls, 2);
    for (const r of rows) ok(r.totalMs >= 0 && Number.isFinite(r.totalMs), `${r.label}: ${r.totalMs}`);
    ok(rows.some((r) => r.totalMs > 0), "some pass took measurable time");
    const table = formatProfile(rows);
    ok(/^label .*calls.*total ms/.test(table) && /\nffn /.test(table) && /\ntotal /.test(table), table);
    console.log(table);
    // Capacity is enforced with a clear message; reset forgets the totals.
    const encoder = gpu.device.createCommandEncoder();
    for (let i = 0; i < 8; i++) profiler.beginPass(encoder, "x").end();
    throws(() => profiler.beginPass(encoder, "x"), /more than 8 passes/);
    profiler.reset();
    deepEqual(profiler.totals(), []);
    profiler.destroy();
  } finally {
    gpu.destroy();
  }
});

Deno.test("profiler: without timestamp-query it says so, still opens passes, and measures nothing", async () => {
  const gpu = await Gpu.create({ profile: false });
  try {
    const profiler = new GpuProfiler(gpu);
    equal(profiler.available, false);
    ok(/timestamp-query/.test(profiler.reason ?? ""));
    const encoder = gpu.device.createCommandEncoder();
    encodeOps(encoder, [smokeOp(gpu, "norm", 100)], profiler);
    profiler.resolve(encoder);
    gpu.device.queue.submit([encoder.finish()]);
    deepEqual(await profiler.collect(), []);
  } finally {
    gpu.destroy();
  }
});
