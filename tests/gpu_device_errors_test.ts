import { equal, match, notEqual, ok } from "node:assert/strict";
import { DeviceError, OutOfMemoryError } from "../src/errors.ts";
import { type AdapterSource, formatBytes, getGpu, Gpu, noAdapterError } from "../src/gpu/device.ts";
import { GpuProfiler } from "../src/gpu/profiler.ts";
import { StagingRing } from "../src/gpu/readback.ts";
import { PoolStorage } from "../src/kv/pool_storage.ts";

/** `promise`, or a failure naming `what` when it has not settled within `ms` milliseconds (a hang). */
async function within<T>(what: string, promise: Promise<T>, ms = 10_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms (a hang)`)), ms);
  });
  try {
    return await Promise.race([promise, hang]);
  } finally {
    clearTimeout(timer);
  }
}

/** The error `promise` rejects with (within a time limit); fails when it resolves. */
async function rejection(what: string, promise: Promise<unknown>): Promise<Error> {
  try {
    await within(what, promise);
  } catch (e) {
    return e as Error;
  }
  throw new Error(`${what}: resolved, but an error was expected`);
}

/** The error `fn` throws; fails when it returns. */
function thrown(what: string, fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error(`${what}: returned, but an error was expected`);
}

/** Fails unless `e` is an instance of `kind` with a one-line message matching `pattern`. */
function expectOneLine(e: Error, kind: new (...args: never[]) => Error, pattern: RegExp): void {
  ok(e instanceof kind, `expected a ${kind.name}, got ${e?.name}: ${e?.message}`);
  ok(!e.message.includes("\n"), `not one line: ${JSON.stringify(e.message)}`);
  match(e.message, pattern);
}

/** A storage buffer of `words` u32 words and the smoke kernel, on `gpu`. */
function smokeWork(gpu: Gpu, words = 64) {
  const a = gpu.buffer("a", words * 4, new Float32Array(words).fill(1));
  const out = gpu.buffer("out", words * 4);
  return { a, out, kernel: gpu.kernel("smoke", { scale: 2, n: words }) };
}

Deno.test("gpu: no adapter is a one-line error saying how to get one; the adapter asked is high-performance", async () => {
  const asked: (GPURequestAdapterOptions | undefined)[] = [];
  const none: AdapterSource = {
    requestAdapter(options) {
      asked.push(options);
      return Promise.resolve(null);
    },
  };
  const e = await rejection("Gpu.create without an adapter", Gpu.create({}, none));
  expectOneLine(e, DeviceError, /^no WebGPU adapter found: install a GPU driver/);
  match(e.message, /`apt-get install mesa-vulkan-drivers`/);
  equal(asked.length, 1);
  equal(asked[0]?.powerPreference, "high-performance");
  // Where this process limited the backends, the error says which were tried and how to try another.
  const limited = noAdapterError("vulkan");
  expectOneLine(limited, DeviceError, /only vulkan was tried; DENO_WEBGPU_BACKEND=gl tries OpenGL/);
  equal(noAdapterError().message.includes("was tried"), false);
});

Deno.test("gpu: the pipeline cache returns one pipeline per kernel and specialisation", async () => {
  const gpu = await Gpu.create();
  try {
    const k = gpu.kernel("smoke", { scale: 2, n: 64 });
    // Same kernel, same specialisation (override constants in any order): the same pipeline.
    equal(gpu.kernel("smoke", { scale: 2, n: 64 }), k);
    equal(gpu.kernel("smoke", { n: 64, scale: 2 }), k);
    equal(gpu.kernel("smoke", { scale: 2, n: 64 }, {}, "main"), k);
    // Another constant value, another constant set, or defines: another pipeline.
    const others = [
      gpu.kernel("smoke", { scale: 3, n: 64 }),
      gpu.kernel("smoke", { scale: 2, n: 65 }),
      gpu.kernel("smoke", { scale: 2 }),
      gpu.kernel("smoke", { scale: 2, n: 64 }, { UNUSED: "1" }),
    ];
    for (const other of others) {
      notEqual(other, k);
      notEqual(other.pipeline, k.pipeline);
      notEqual(other.key, k.key);
    }
    equal(new Set(others.map((o) => o.pipeline)).size, others.length);
    equal(gpu.kernel("smoke", { scale: 2, n: 64 }, { UNUSED: "1" }), others[3]);
    equal(gpu.kernel("smoke", { scale: 2, n: 64 }, { UNUSED: "2" }) === others[3], false);
  } finally {
    gpu.destroy();
  }
});

Deno.test("gpu: after the device is destroyed, reads, dispatches and new kernels are one-line DeviceErrors", async () => {
  const gpu = await Gpu.create();
  const { a, out, kernel } = smokeWork(gpu);
  gpu.dispatch(kernel, [a, out], [1]);
  equal((await gpu.readF32(out))[1], 3);
  // Destroyed behind the Gpu's back, as a driver reset would: the read in flight must not hang.
  gpu.device.destroy();
  const read = await rejection("read after device.destroy()", gpu.read(out));
  expectOneLine(read, DeviceError, /^the GPU device was destroyed/);
  equal(gpu.buffers.stats.inUse, 0, "the failed read's staging buffer was not given back");
  expectOneLine(thrown("checkAlive", () => gpu.checkAlive()), DeviceError, /destroyed/);
  expectOneLine(thrown("dispatch", () => gpu.dispatch(kernel, [a, out], [1])), DeviceError, /destroyed/);
  expectOneLine(thrown("a new kernel", () => gpu.kernel("smoke", { scale: 5 })), DeviceError, /destroyed/);
  // Buffers made now are invalid, and so is any work using them: it fails at its dispatch or read.
  const late = gpu.buffer("late", 16);
  expectOneLine(
    thrown("dispatch on a late buffer", () => gpu.dispatch(kernel, [late, out], [1])),
    DeviceError,
    /destroyed/,
  );
  expectOneLine(await rejection("a second read", gpu.readU32(out)), DeviceError, /destroyed/);
  gpu.destroy();
});

Deno.test("gpu: Gpu.destroy() makes later work a DeviceError at once, even a read already under way", async () => {
  const gpu = await Gpu.create();
  const { out } = smokeWork(gpu, 1 << 16);
  const reading = gpu.read(out);
  gpu.destroy();
  expectOneLine(thrown("checkAlive", () => gpu.checkAlive()), DeviceError, /destroyed/);
  // Deno may finish the mapping before the destroy: either the data or a DeviceError, never a hang.
  try {
    equal((await within("a read under way", reading)).byteLength, (1 << 16) * 4);
  } catch (e) {
    expectOneLine(e as Error, DeviceError, /destroyed/);
  }
  expectOneLine(await rejection("a read after", gpu.read(out)), DeviceError, /destroyed/);
});

Deno.test("gpu: staging rings and the profiler turn a lost device into a DeviceError", async (t) => {
  const gpu = await Gpu.create({ profile: true });
  try {
    const { a, out, kernel } = smokeWork(gpu);
    const ring = new StagingRing(gpu.device, "test staging", 64 * 4, 2, "wait");
    const staging = await ring.take();
    const encoder = gpu.device.createCommandEncoder();
    let profiler: GpuProfiler | undefined;
    if (gpu.hasTimestamps) {
      profiler = new GpuProfiler(gpu, 4);
      const pass = profiler.beginPass(encoder, "smoke");
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, gpu.bind(kernel, [a, out]));
      pass.dispatchWorkgroups(1);
      pass.end();
      profiler.resolve(encoder);
    }
    encoder.copyBufferToBuffer(out, 0, staging, 0, 64 * 4);
    gpu.device.queue.submit([encoder.finish()]);
    gpu.device.destroy();
    const ringError = await rejection("StagingRing.read", ring.read(staging, 64 * 4));
    expectOneLine(ringError, DeviceError, /^reading 'test staging 0' back from the GPU failed: /);
    // What a caller of the ring reports: the device's fate, not the mapping's.
    expectOneLine(
      await gpu.readFailure(ringError, "the result"),
      DeviceError,
      /^the GPU device was destroyed/,
    );
    if (!profiler) {
      await t.step({
        name: "profiler: timestamp-query unavailable on this adapter",
        ignore: true,
        fn: () => {},
      });
      return;
    }
    const collectError = await rejection("GpuProfiler.collect", profiler.collect());
    expectOneLine(collectError, DeviceError, /^the GPU device was destroyed/);
    // The failed batch is dropped, not read again.
    equal((await within("a second collect", profiler.collect())).length, 0);
  } finally {
    gpu.destroy();
  }
});

Deno.test("getGpu: a destroyed device is forgotten and the next call opens a new one", async () => {
  const first = await getGpu();
  equal(await getGpu(), first);
  first.destroy();
  await within("device.lost", first.device.lost);
  const second = await getGpu();
  notEqual(second, first);
  second.checkAlive();
  const { a, out, kernel } = smokeWork(second);
  second.dispatch(kernel, [a, out], [1]);
  equal((await second.readF32(out))[2], 4);
});

Deno.test("gpu: a buffer past the device's largest is a one-line OutOfMemoryError with both sizes", async () => {
  const gpu = await Gpu.create();
  try {
    const max = gpu.limits.maxBufferSize;
    gpu.device.pushErrorScope("validation");
    const e = thrown("an oversized buffer", () => gpu.buffer("kv pool shard 0", max + 1));
    equal(await gpu.device.popErrorScope(), null, "the oversized buffer reached the device");
    expectOneLine(e, OutOfMemoryError, /^kv pool shard 0: /);
    const asked = Math.ceil((max + 1) / 4) * 4;
    ok(e.message.includes(`${asked} B) asked`), e.message);
    ok(e.message.includes(`largest buffer is ${formatBytes(max)} (${max} B)`), e.message);
    gpu.checkAlive();
  } finally {
    gpu.destroy();
  }
});

Deno.test("kv pool: a pool too large to bind, or one the driver refuses, is a one-line OutOfMemoryError", async () => {
  const gpu = await Gpu.create();
  try {
    // Planned against the real limits: far more pages than the shards a kernel can bind.
    const pages = 1 << 24;
    const planned = await rejection("PoolStorage.create (too large)", PoolStorage.create(gpu, pages, 128));
    expectOneLine(
      planned,
      OutOfMemoryError,
      /^KV cache: .* asked \(16777216 pages × 8192 B\) but kernels can bind/,
    );
    ok(planned.message.includes(formatBytes(pages * 8192)), planned.message);

    // Refused by the driver (its out-of-memory error scope reports an error): the buffers made are freed.
    const made: GPUBuffer[] = [];
    let destroyed = 0;
    const refusing = {
      limits: gpu.limits,
      device: {
        pushErrorScope: () => {},
        popErrorScope: () => Promise.resolve(new GPUOutOfMemoryError("Not enough memory left.")),
      },
      buffer(label: string, size: number) {
        const b = gpu.buffer(label, size);
        const destroy = b.destroy.bind(b);
        b.destroy = () => {
          destroyed++;
          destroy();
        };
        made.push(b);
        return b;
      },
    } as unknown as Gpu;
    const refused = await rejection(
      "PoolStorage.create (refused)",
      PoolStorage.create(refusing, 64, 128, 16 * 8192),
    );
    expectOneLine(
      refused,
      OutOfMemoryError,
      /^KV cache: the GPU could not allocate 512\.00 KiB \(64 pages in 4 shards\)/,
    );
    match(refused.message, /Not enough memory left/);
    equal(made.length, 4);
    equal(destroyed, 4);
  } finally {
    gpu.destroy();
  }
});
