/**
 * What the single-kernel benchmarks (`bench/matvec.ts`, `bench/matmul.ts`, `bench/attention.ts`) share: the
 * timing of a batch of dispatches by the difference of two submits, random weights with finite scales, and
 * the atomic write of a results file.
 *
 * @module
 */

import type { Gpu } from "../src/gpu/device.ts";
import type { GpuOp } from "../src/gpu/ops/op.ts";
import { GpuProfiler } from "../src/gpu/profiler.ts";
import { GpuWeight } from "../src/gpu/weights.ts";
import { f32ToBf16, f32ToHalf } from "../src/gguf/half.ts";
import { GGMLType, typeInfo } from "../src/gguf/types.ts";

/**
 * Seconds `count` dispatches (cycling through `ops`) take in one pass: the GPU's timestamps at the pass's
 * start and end where the device has timestamp queries, else the wall clock from the submit to the
 * finished work. Either way the CPU's encoding is not counted (it happens before the clock starts; with
 * the wall clock it had added the CPU's cost per dispatch to the kernel's time).
 */
async function timeRun(gpu: Gpu, ops: GpuOp[], count: number, profiler?: GpuProfiler): Promise<number> {
  const encoder = gpu.device.createCommandEncoder();
  const pass = profiler ? profiler.beginPass(encoder, "run") : encoder.beginComputePass();
  for (let i = 0; i < count; i++) ops[i % ops.length].encode(pass);
  pass.end();
  profiler?.resolve(encoder);
  const commands = encoder.finish();
  const t0 = performance.now();
  gpu.device.queue.submit([commands]);
  await gpu.device.queue.onSubmittedWorkDone();
  const wall = (performance.now() - t0) / 1000;
  if (!profiler) return wall;
  profiler.reset();
  const [row] = await profiler.collect();
  return row.totalMs / 1000;
}

/** A timing of {@link timeOps}. */
export interface OpTiming {
  /** Microseconds per dispatch. */
  us: number;
  /** Dispatches in the short and the long timed run. */
  dispatches: [number, number];
}

/** Seconds of work a timing first runs untimed, so that a GPU left idle is back at full clocks. */
const WARM_UP_S = 0.3;

/**
 * Microseconds per dispatch of `ops` (cycled through): the median over three tries of (T(long) − T(short)) /
 * (extra dispatches), so the submit and readback latencies cancel. The short run has at least one dispatch
 * per op and lasts about 50 ms (5 ms with `quick`, from a first estimate), the long one three times as long:
 * short runs of a few dispatches leave the difference to the noise of the two waits. Before timing, the ops
 * run untimed for {@link WARM_UP_S} seconds (not with `quick`): a GPU idle while the benchmark built its
 * buffers may still be at low clocks, which made kernels look several times slower than inside the model.
 * Runs are timed by the GPU's timestamps where the device was opened with `profile: true` and has them.
 * When noise leaves the long run no slower than the short one, the runs are repeated 4× longer (twice at
 * most), and then the long run's whole time per dispatch is reported: the result is always positive.
 */
export async function timeOps(gpu: Gpu, ops: GpuOp[], quick = false): Promise<OpTiming> {
  const timer = gpu.hasTimestamps ? new GpuProfiler(gpu, 1) : undefined;
  try {
    return await timeWith(gpu, ops, quick, timer);
  } finally {
    timer?.destroy();
  }
}

/** {@link timeOps} with `timer` timing each run on the GPU (the wall clock without one). */
async function timeWith(gpu: Gpu, ops: GpuOp[], quick: boolean, timer?: GpuProfiler): Promise<OpTiming> {
  await timeRun(gpu, ops, ops.length, timer); // warm up (pipelines, first touches)
  const probe = Math.max(2, ops.length);
  let estimate = (await timeRun(gpu, ops, probe, timer)) / probe;
  if (!quick) {
    const batch = Math.max(probe, Math.min(10000, Math.ceil(0.02 / Math.max(estimate, 1e-7))));
    for (const t0 = performance.now(); performance.now() - t0 < WARM_UP_S * 1000;) {
      await timeRun(gpu, ops, batch, timer);
    }
    estimate = (await timeRun(gpu, ops, probe, timer)) / probe;
  }
  let target = quick ? 0.005 : 0.05;
  for (let attempt = 0;; attempt++) {
    const short = Math.max(ops.length, 2, Math.min(40000, Math.ceil(target / Math.max(estimate, 1e-7))));
    const long = 3 * short;
    const tries: number[] = [];
    let longest = 0;
    for (let i = 0; i < (quick ? 1 : 3); i++) {
      const a = await timeRun(gpu, ops, short, timer);
      const b = await timeRun(gpu, ops, long, timer);
      longest = Math.max(longest, b);
      tries.push(Math.max(0, b - a) / (long - short) * 1e6);
    }
    const us = tries.sort((p, q) => p - q)[Math.floor(tries.length / 2)];
    if (us > 0) return { us, dispatches: [short, long] };
    // The noise of the two runs swallowed their difference (a loaded machine, a software adapter): time
    // longer runs, and in the end report the long run's time per dispatch, latencies included.
    if (attempt === MAX_RETIMES) return { us: longest / long * 1e6, dispatches: [short, long] };
    target *= 4;
  }
}

/** Times {@link timeOps} retries with 4× longer runs when noise leaves no difference between its two runs. */
const MAX_RETIMES = 2;

/** Byte offsets of the f16 scale fields inside one block of each quantised type (ggml block layouts). */
export const SCALE_FIELDS: Readonly<Record<string, readonly number[]>> = {
  Q4_0: [0],
  Q4_1: [0, 2],
  Q5_0: [0],
  Q5_1: [0, 2],
  Q8_0: [0],
  Q2_K: [80, 82],
  Q3_K: [108],
  Q4_K: [0, 2],
  Q5_K: [0, 2],
  Q6_K: [208],
};

/** The weight types {@link randomWeight} makes. */
export const RANDOM_WEIGHT_TYPES: readonly string[] = [...Object.keys(SCALE_FIELDS), "F16", "BF16", "F32"];

/** Random small finite values of a type's encoding: whole blocks, the f16 scales of quantised ones set. */
function randomPool(type: string, bytes: number): Uint8Array {
  const info = typeInfo(GGMLType[type as keyof typeof GGMLType], type);
  const blocks = Math.ceil(bytes / info.bytesPerBlock);
  const pool = new Uint8Array(blocks * info.bytesPerBlock);
  const view = new DataView(pool.buffer);
  const small = () => (Math.random() * 2 - 1) * 0.05;
  if (type === "F32") {
    for (let i = 0; i < pool.length; i += 4) view.setFloat32(i, small(), true);
  } else if (type === "F16" || type === "BF16") {
    const encode = type === "F16" ? f32ToHalf : f32ToBf16;
    for (let i = 0; i < pool.length; i += 2) view.setUint16(i, encode(small()), true);
  } else {
    for (let i = 0; i < pool.length; i += 65536) crypto.getRandomValues(pool.subarray(i, i + 65536));
    for (let b = 0; b < pool.length; b += info.bytesPerBlock) {
      for (const at of SCALE_FIELDS[type]) view.setUint16(b + at, f32ToHalf(small()), true);
    }
  }
  return pool;
}

/** Upload chunk size: GpuWeight.upload reads whole rows, a multiple of four bytes, within it. */
const CHUNK_BYTES = 4 << 20;
const pools = new Map<string, Uint8Array>();

/**
 * Uploads a weight of random values of `type` (one of {@link RANDOM_WEIGHT_TYPES}), every upload chunk a
 * block-aligned window of one random pool per type (speed does not depend on the values).
 */
export function randomWeight(
  gpu: Gpu,
  type: string,
  cols: number,
  rows: number,
  label: string,
): Promise<GpuWeight> {
  let pool = pools.get(type);
  if (!pool) {
    pool = randomPool(type, CHUNK_BYTES);
    pools.set(type, pool);
  }
  const source = pool;
  return GpuWeight.upload(gpu, {
    name: label,
    type: GGMLType[type as keyof typeof GGMLType],
    shape: [cols, rows],
    read: (_offset, length) => {
      // Chunks are whole rows, so whole blocks: any block-aligned window of the pool will do.
      if (length > source.length) throw new Error(`upload chunk of ${length} bytes exceeds the random pool`);
      return source.subarray(0, length);
    },
  }, { chunkBytes: CHUNK_BYTES });
}

/** Writes `value` as JSON to `path` through a `.tmp` file renamed over it, creating the folder. */
export function saveJson(path: string, value: unknown): void {
  const dir = path.substring(0, path.lastIndexOf("/"));
  if (dir) Deno.mkdirSync(dir, { recursive: true });
  Deno.writeTextFileSync(`${path}.tmp`, JSON.stringify(value, null, 2) + "\n");
  Deno.renameSync(`${path}.tmp`, path);
}
