import { deepEqual, equal, notEqual, ok, throws } from "node:assert/strict";
import { BufferPool, MIN_POOLED_BYTES, sizeClass } from "../src/gpu/buffer_pool.ts";
import { Gpu, STORAGE_USAGE } from "../src/gpu/device.ts";

/** Map-read | copy-dst: a staging buffer. */
const STAGING = 0x01 | 0x08;

/** `n` random u32 words, fresh each call. */
function randomWords(n: number): Uint32Array<ArrayBuffer> {
  return Uint32Array.from({ length: n }, () => (Math.random() * 2 ** 32) >>> 0);
}

/** Runs `body` with a device of its own (so the pool's counters see only this test), then destroys it. */
async function withGpu(body: (gpu: Gpu) => void | Promise<void>): Promise<void> {
  const gpu = await Gpu.create();
  try {
    await body(gpu);
  } finally {
    gpu.destroy();
  }
}

Deno.test("buffer pool: size classes are powers of two of at least 256 bytes", () => {
  equal(MIN_POOLED_BYTES, 256);
  deepEqual([0, 1, 4, 256, 257, 1000, 4096, 4097].map(sizeClass), [
    256,
    256,
    256,
    256,
    512,
    1024,
    4096,
    8192,
  ]);
  equal(sizeClass(2 ** 30 + 1), 2 ** 31);
  throws(() => sizeClass(-4), RangeError);
  throws(() => sizeClass(1.5), RangeError);
  throws(() => new BufferPool({} as GPUDevice, -1), RangeError);
});

Deno.test("buffer pool: reuses a buffer of the same usage and size class, never across usages", async () => {
  await withGpu((gpu) => {
    const pool = new BufferPool(gpu.device);
    try {
      const a = pool.acquire(300, STAGING, "a");
      equal(a.size, 512);
      equal(a.usage, STAGING);
      equal(a.label, "a");
      pool.release(a);
      deepEqual(pool.stats, {
        created: 1,
        reused: 0,
        destroyed: 0,
        idleBuffers: 1,
        idleBytes: 512,
        inUse: 0,
      });
      // Same usage, another size of the same class: the same buffer.
      const again = pool.acquire(512, STAGING, "again");
      equal(again, a);
      // Same class, another usage: a new buffer; another class, same usage: a new buffer.
      const storage = pool.acquire(400, STORAGE_USAGE, "storage");
      notEqual(storage, a);
      equal(storage.usage, STORAGE_USAGE);
      const bigger = pool.acquire(513, STAGING, "bigger");
      notEqual(bigger, a);
      equal(bigger.size, 1024);
      // Two taken at once are two buffers.
      const second = pool.acquire(300, STAGING, "second");
      notEqual(second, a);
      for (const b of [again, storage, bigger, second]) pool.release(b);
      deepEqual(pool.stats, {
        created: 4,
        reused: 1,
        destroyed: 0,
        idleBuffers: 4,
        idleBytes: 512 + 512 + 1024 + 512,
        inUse: 0,
      });
      // The storage buffer comes back only for its usage.
      equal(pool.acquire(257, STORAGE_USAGE), storage);
      const staged = [pool.acquire(257, STAGING), pool.acquire(512, STAGING)];
      deepEqual(new Set(staged), new Set([a, second]));
    } finally {
      pool.destroy();
    }
    equal(pool.stats.idleBuffers, 0);
    equal(pool.stats.inUse, 0);
  });
});

Deno.test("buffer pool: idle bytes stay within the cap; larger classes are never pooled", async () => {
  await withGpu((gpu) => {
    const pool = new BufferPool(gpu.device, 1024);
    try {
      const taken = [pool.acquire(512, STAGING), pool.acquire(512, STAGING), pool.acquire(512, STAGING)];
      for (const b of taken) pool.release(b);
      // Two fit under 1024 bytes, the third is destroyed.
      equal(pool.stats.idleBytes, 1024);
      equal(pool.stats.idleBuffers, 2);
      equal(pool.stats.destroyed, 1);
      // A class above the cap: made at the size asked (rounded to 4), destroyed on release.
      const big = pool.acquire(1501, STAGING, "big");
      equal(big.size, 1504);
      pool.release(big);
      equal(pool.stats.destroyed, 2);
      equal(pool.stats.idleBytes, 1024);
      // A full pool destroys what another class would add.
      const other = pool.acquire(256, STAGING);
      pool.release(other);
      equal(pool.stats.destroyed, 3);
      ok(pool.stats.idleBytes <= pool.maxPooledBytes);
    } finally {
      pool.destroy();
    }
  });
});

Deno.test("buffer pool: release refuses foreign, doubly released and mapped buffers", async () => {
  await withGpu(async (gpu) => {
    const pool = new BufferPool(gpu.device);
    const foreign = gpu.device.createBuffer({ label: "foreign", size: 256, usage: STAGING });
    try {
      throws(() => pool.release(foreign), /'foreign' was not handed out by this pool/);
      const b = pool.acquire(256, STAGING, "staging");
      await b.mapAsync(GPUMapMode.READ);
      throws(() => pool.release(b), /'staging' is mapped; unmap it before releasing it/);
      b.unmap();
      pool.release(b);
      throws(() => pool.release(b), /released already/);
      // A discarded buffer is forgotten: the next acquire makes a new one.
      const c = pool.acquire(256, STAGING);
      equal(c, b);
      pool.discard(c);
      notEqual(pool.acquire(256, STAGING), c);
    } finally {
      foreign.destroy();
      pool.destroy();
    }
  });
});

Deno.test("buffer pool: a released buffer works again with new contents", async () => {
  await withGpu(async (gpu) => {
    const pool = new BufferPool(gpu.device);
    try {
      let previous: GPUBuffer | undefined;
      for (let round = 0; round < 4; round++) {
        const words = 250 + round; // one size class (1000..1012 bytes → 1024)
        const scratch = pool.acquire(words * 4, STORAGE_USAGE, "scratch");
        if (previous) equal(scratch, previous);
        const values = randomWords(words);
        gpu.device.queue.writeBuffer(scratch, 0, values);
        deepEqual(Array.from(await gpu.readU32(scratch, 0, words)), Array.from(values));
        pool.release(scratch);
        previous = scratch;
      }
      equal(pool.stats.created, 1);
      equal(pool.stats.reused, 3);
    } finally {
      pool.destroy();
    }
  });
});

Deno.test("gpu.read: sizes and offsets of all kinds read back right; a repeated size makes no new buffer", async () => {
  await withGpu(async (gpu) => {
    const sourceWords = (1 << 18) + 64;
    const source = gpu.buffer("read source", sourceWords * 4);
    // [offset, size] in bytes, multiples of 4 as copies need.
    const reads: [number, number][] = [
      [0, 4],
      [4, 8],
      [0, 252],
      [256, 256],
      [12, 260],
      [0, 1020],
      [1024, 4096],
      [8, 4100],
      [4096, 65536 + 12],
      [64 * 4, 1 << 20],
      [0, 0],
    ];
    const check = async () => {
      const values = randomWords(sourceWords);
      gpu.device.queue.writeBuffer(source, 0, values);
      for (const [offset, size] of reads) {
        const got = new Uint32Array(await gpu.read(source, offset, size));
        equal(got.length, size / 4, `read of ${size} B at ${offset}`);
        deepEqual(Array.from(got), Array.from(values.subarray(offset / 4, (offset + size) / 4)));
      }
      // The whole buffer, and several reads at once (each its own staging buffer).
      deepEqual(new Uint32Array(await gpu.read(source)), values);
      const together = await Promise.all(
        reads.slice(0, 4).map(([offset, size]) => gpu.read(source, offset, size)),
      );
      together.forEach((got, i) => {
        const [offset, size] = reads[i];
        deepEqual(
          Array.from(new Uint32Array(got)),
          Array.from(values.subarray(offset / 4, (offset + size) / 4)),
        );
      });
    };
    await check();
    const first = gpu.buffers.stats;
    equal(first.inUse, 0);
    ok(first.created > 0);
    // The same sizes again, with fresh contents: every staging buffer comes from the pool.
    await check();
    await check();
    const later = gpu.buffers.stats;
    equal(later.created, first.created, "a repeated read size made a new staging buffer");
    ok(later.reused > first.reused);
    equal(later.inUse, 0);
    source.destroy();
  });
});

Deno.test("gpu.destroy: the pool's buffers go with the device", async () => {
  const gpu = await Gpu.create();
  const source = gpu.buffer("source", 64, new Uint32Array(16).fill(7));
  deepEqual(Array.from(await gpu.readU32(source)), new Array(16).fill(7));
  equal(gpu.buffers.stats.idleBuffers, 1);
  gpu.destroy();
  equal(gpu.buffers.stats.idleBuffers, 0);
  equal(gpu.buffers.stats.destroyed, 1);
});
