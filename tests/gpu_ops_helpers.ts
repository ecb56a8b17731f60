/** Shared helpers of the GPU op tests: random inputs, NaN-filled outputs, element-wise comparison. */

import { deepEqual, fail, ok } from "node:assert/strict";
import type { Gpu } from "../src/gpu/device.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import type { GpuWeight } from "../src/gpu/weights.ts";
import { randomWeight } from "./gpu_quant_data.ts";
import { type GGUFFile, openGGUF } from "../src/gguf/reader.ts";
import { hparamsFromGGUF, type LlamaHParams } from "../src/model/hparams.ts";
import { type SynthType, writeSyntheticModel } from "../src/model/synth.ts";
import { DualCache } from "../src/kv/dual_cache.ts";
import { pageBytes } from "../src/kv/page_pool.ts";
import type { WindowedPolicy } from "../src/kv/wgkv_policy.ts";

/** `n` uniform random values in (−scale, scale), fresh each run, never zero. */
export function randomF32(n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = ((Math.random() * 2 - 1) || 0.5) * scale;
  return a;
}

/**
 * {@link randomF32} for products that quantise x to int8 per 16 values (`int8InputReference`): values whose
 * scaled form lies within 0.01 of a rounding tie are moved off it, so that a GPU whose division is a few
 * ulps off (as Vulkan allows) rounds every value as the reference does. `n` is a multiple of 16.
 */
export function randomInt8Input(n: number, scale = 1): Float32Array {
  const a = randomF32(n, scale);
  for (let b = 0; b + 16 <= n; b += 16) {
    let amax = 0;
    for (let i = 0; i < 16; i++) amax = Math.max(amax, Math.abs(a[b + i]));
    const inv = 127 / amax;
    for (let i = 0; i < 16; i++) {
      const v = Math.abs(a[b + i]) * inv;
      if (Math.abs((v % 1) - 0.5) < 0.01) a[b + i] = Math.sign(a[b + i]) * (Math.trunc(v) + 0.25) / inv;
    }
  }
  return a;
}

/** A storage buffer of `n` f32 NaNs, so that an element the kernel never wrote shows up. */
export function nanBuffer(gpu: Gpu, label: string, n: number): GPUBuffer {
  return gpu.buffer(label, n * 4, new Float32Array(n).fill(NaN));
}

/**
 * Fails unless `|got[i] − want[i]| <= rel·|want[i]| + abs` for every i < want.length (a NaN in `got`
 * always fails), naming the first bad element.
 */
export function expectClose(
  what: string,
  got: Float32Array,
  want: ArrayLike<number>,
  rel: number,
  abs = 0,
): void {
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    if (!(err <= rel * Math.abs(want[i]) + abs)) {
      fail(`${what}: element ${i} is ${got[i]}, expected ${want[i]} (error ${err}, rel ${rel}, abs ${abs})`);
    }
  }
}

/** Encodes `ops` in one compute pass and submits it, failing on any validation error of the encoding. */
export async function submitValidated(gpu: Gpu, ops: GpuOp[]): Promise<void> {
  gpu.device.pushErrorScope("validation");
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  for (const op of ops) op.encode(pass);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  const error = await gpu.device.popErrorScope();
  ok(error === null, error?.message);
}

/** Runs `ops` in one compute pass with `m` tokens at position `pos0`, then reads `outputs` back. */
export async function runOps(
  gpu: Gpu,
  ops: GpuOp[],
  step: StepParams,
  m: number,
  pos0: number,
  outputs: GPUBuffer[],
): Promise<Float32Array[]> {
  step.set(m, pos0);
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  for (const op of ops) op.encode(pass);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  return await Promise.all(outputs.map((b) => gpu.readF32(b)));
}

/** Fails on the first element of `got` ([..][rows]) past the first `m` rows that is not NaN (never written). */
export function untouchedPast(what: string, got: Float32Array, m: number, rows: number): void {
  for (let i = m * rows; i < got.length; i++) ok(Number.isNaN(got[i]), `${what}: wrote past m at ${i}`);
}

/** Largest |a − b| relative to the largest |b| (at least 1): how far two logit vectors are apart. */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let maxDiff = 0, scale = 1;
  for (let i = 0; i < b.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return maxDiff / scale;
}

/** The Q, K and V weight and output fields of the fused QKV ops, from three weights and three outputs. */
export function qkvFields(
  weights: readonly { weight: GpuWeight }[],
  outs: readonly GPUBuffer[],
): { wq: GpuWeight; wk: GpuWeight; wv: GpuWeight; q: GPUBuffer; k: GPUBuffer; v: GPUBuffer } {
  return {
    wq: weights[0].weight,
    wk: weights[1].weight,
    wv: weights[2].weight,
    q: outs[0],
    k: outs[1],
    v: outs[2],
  };
}

/**
 * Runs `body` with a tiny synthetic model file of weight type `type` (default Q8_0; a fresh random seed
 * unless given), removed afterwards.
 */
export async function withTinyModel(
  body: (file: GGUFFile, hp: LlamaHParams) => Promise<void>,
  options: { type?: SynthType; seed?: number } = {},
): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/tiny.gguf`;
    const seed = options.seed ?? Math.floor(Math.random() * 1e6);
    await writeSyntheticModel({ shape: "tiny", type: options.type ?? "q8_0", out: path, seed });
    const file = await openGGUF(path);
    try {
      await body(file, hparamsFromGGUF(file));
    } finally {
      file.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * What a test of a subgroup option passes: `true` (the GPU's subgroups) where they hold at least
 * `minSize` invocations, else "emulated" (the same kernel with the subgroup operations through workgroup
 * memory; lavapipe has no subgroups).
 */
export function subgroupsOrEmulated(gpu: Gpu, minSize: number): true | "emulated" {
  return gpu.subgroups !== undefined && gpu.subgroups.minSize >= minSize ? true : "emulated";
}

/** As {@link subgroupsOrEmulated} for the decode products' subgroup sums, which need subgroups all 32 wide. */
export function subgroupReduceOrEmulated(gpu: Gpu): true | "emulated" {
  return gpu.subgroups?.minSize === 32 && gpu.subgroups.maxSize === 32 ? true : "emulated";
}

/**
 * A prefill product's test case: a random `type` weight of `rows` × `cols` with its dequantised values `w`,
 * `maxTokens` rows of input `x` (never zero, times `xScale`) in `xBuf`, and step parameters sized for them.
 */
export function productCase(
  gpu: Gpu,
  c: { type: string; rows: number; cols: number },
  maxTokens: number,
  xScale = 1,
): { weight: GpuWeight; w: Float32Array; x: Float32Array; xBuf: GPUBuffer; step: StepParams } {
  const { weight, w } = randomWeight(gpu, `w.${c.type}`, c.type, c.rows, c.cols);
  const x = randomF32(maxTokens * c.cols, xScale);
  return { weight, w, x, xBuf: gpu.buffer("x", x.byteLength, x), step: new StepParams(gpu, maxTokens) };
}

/**
 * A gate/up test case: random `type` gate and up weights of `rows` × `cols` (with their dequantised values
 * `w`), the input `x` ([maxTokens][cols]) in `xBuf`, step parameters sized for it, and `fields(out)`: what
 * the gate/up ops take besides their tuning, writing `out`.
 */
export function gateUpCase(gpu: Gpu, type: string, rows: number, cols: number, x: Float32Array) {
  const gate = randomWeight(gpu, "ffn_gate", type, rows, cols);
  const up = randomWeight(gpu, "ffn_up", type, rows, cols);
  const maxTokens = x.length / cols;
  const xBuf = gpu.buffer("x", x.byteLength, x);
  const step = new StepParams(gpu, maxTokens);
  const fields = (out: GPUBuffer) => ({
    label: "ffn_gate_up",
    gate: gate.weight,
    up: up.weight,
    x: xBuf,
    out,
    maxTokens,
    step,
  });
  return { gate, up, xBuf, step, fields };
}

/**
 * Shape of {@link twinDualCaches}: a dual cache's sizes, its policy (default `wgkv` with the shape's
 * window), and how many shards to force (or one).
 */
export interface TwinDualShape {
  layers: number;
  kvHeads: number;
  headDim: number;
  window: number;
  maxBatch: number;
  shards?: number;
  policy?: WindowedPolicy;
}

/**
 * Two dual caches of one shape whose pools hand out the same, scattered pages (their free lists
 * shuffled alike), so that a fused op and its reference can be compared word for word.
 */
export async function twinDualCaches(
  gpu: Gpu,
  c: TwinDualShape,
  pages: number,
  maxGlobalTokens: number,
): Promise<[DualCache, DualCache]> {
  const make = async () => {
    const kv = await DualCache.create(gpu, {
      layers: c.layers,
      kvHeads: c.kvHeads,
      headDim: c.headDim,
      policy: c.policy ?? { kind: "wgkv", window: c.window, threshold: 0.1, gate: null },
      maxBatch: c.maxBatch,
      maxGlobalTokens,
      pages,
      maxShardBytes: c.shards ? Math.ceil(pages / c.shards) * pageBytes(c.headDim) : undefined,
    });
    const junk = kv.pool.allocate(30);
    kv.pool.release(junk.filter((_, i) => i % 3 !== 2)); // scatter the free list
    return kv;
  };
  return [await make(), await make()];
}

/**
 * Fails unless `fused` holds what `ref` holds, word for word: slot info, block tables and every pool shard
 * (naming the first word that differs). Returns the slot info and the number of non-zero pool words.
 */
export async function expectSameDualCaches(
  gpu: Gpu,
  ref: DualCache,
  fused: DualCache,
  what: string,
): Promise<{ info: Uint32Array; nonZero: number }> {
  const [refInfo, fusedInfo] = await Promise.all([ref, fused].map((kv) => gpu.readU32(kv.slotInfo)));
  deepEqual(fusedInfo, refInfo, `${what}: slot info`);
  deepEqual(fused.tables.table, ref.tables.table, `${what}: block tables`);
  let nonZero = 0;
  for (let s = 0; s < ref.shards.length; s++) {
    const [a, b] = await Promise.all([gpu.read(ref.shards[s]), gpu.read(fused.shards[s])]);
    const refWords = new Uint32Array(a), fusedWords = new Uint32Array(b);
    for (let i = 0; i < refWords.length; i++) {
      if (fusedWords[i] !== refWords[i]) {
        fail(`${what}: shard ${s} word ${i} is ${fusedWords[i]}, the reference wrote ${refWords[i]}`);
      }
      if (refWords[i] !== 0) nonZero++;
    }
  }
  return { info: refInfo, nonZero };
}

/**
 * `gpu` as code that reads `gpu.limits` sees it with a storage binding of at most `maxBinding` bytes (the real
 * limits dwarf test models): the same device, its methods run on the real object (its private fields), and
 * the label of every buffer made through the view pushed onto `labels`.
 */
export function smallBindingView(gpu: Gpu, maxBinding: number, labels: string[]): Gpu {
  // A plain copy: the device's limits object answers only for itself.
  const limits: Record<string, number> = {};
  for (const key in gpu.limits) limits[key] = gpu.limits[key as keyof GPUSupportedLimits] as number;
  limits.maxStorageBufferBindingSize = maxBinding;
  return new Proxy(gpu, {
    get(target, prop) {
      if (prop === "limits") return limits;
      const value = Reflect.get(target, prop, target);
      if (prop === "buffer") {
        return (label: string, ...rest: unknown[]) => {
          labels.push(label);
          return (value as (...a: unknown[]) => GPUBuffer).call(target, label, ...rest);
        };
      }
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}
