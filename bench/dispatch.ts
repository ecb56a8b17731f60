/**
 * Microbenchmark of what a dispatch costs the GPU apart from its work, the fixed cost that decode pays
 * about 5 times per layer (no model file). A small kernel (`wgsl/smoke.wgsl`: out[i] = a[i] · 1 + i over
 * `--values` floats, or its twin `wgsl/dispatch_probe.wgsl`) is recorded in the ways below, and each way's
 * time per dispatch is the median over three tries of (T(3N) − T(N)) / 2N, with T measured from the submit
 * to the finished work (encoding is done before the clock starts), so fixed latencies cancel:
 * - `chain`: N dispatches in one compute pass, each reading what the one before wrote (two buffers in
 *   turn), as the ops of a decode step do: every dispatch waits for the previous one to drain;
 * - `independent`: N dispatches in one pass over 16 disjoint buffer pairs in turn, so consecutive
 *   dispatches share no buffer;
 * - `passes`: the chain with one compute pass per dispatch (what `--profile` records);
 * - `submits`: the chain with one command buffer and one `queue.submit` per dispatch, as each decode step
 *   is submitted (this one includes the CPU's submit calls);
 * - `probe`: the chain of `wgsl/dispatch_probe.wgsl` (the same work staged through 256 bytes of workgroup
 *   memory), one pipeline: the baseline of the next two;
 * - `pipelines`: that chain with consecutive dispatches taking 5 pipelines in turn (the probe with 5
 *   values of an override constant), as a decode step's 5 kernels per layer do;
 * - `shared`: the same with the 5 pipelines also differing in workgroup memory (256 B to 48 KiB), which a
 *   GPU may have to reconfigure between them;
 * - `bindings`: the probe chain with 12 more read-only buffers bound to every dispatch (entry `wide`), as
 *   the model's kernels bind weights, cache pages, tables and parameters;
 * - `code`: the probe chain after 2048 unrolled FMA steps (entry `long_code`, about 32 KiB of machine
 *   code), one pipeline; `code-pipelines`: the same with 5 such pipelines in turn, whose code cannot all
 *   stay in the GPU's instruction caches: the difference is what a kernel's code costs to fetch each time
 *   (the code itself takes a few µs to run).
 *
 * usage: deno run -A bench/dispatch.ts [--values 64,1048576] [--count N] [--out out/dispatch.json] [--quick]
 *
 * `--quick` (for software adapters) takes few dispatches: it shows that everything runs, not speed.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { benchFlags, flagError } from "./flags.ts";
import { saveJson } from "./kernel_timing.ts";

const { values } = benchFlags(import.meta.url, () =>
  parseArgs({
    options: {
      help: { type: "boolean" },
      values: { type: "string" },
      count: { type: "string" },
      out: { type: "string" },
      quick: { type: "boolean" },
    },
  }));
const quick = values.quick ?? false;
const sizes = (values.values ?? (quick ? "64,4096" : "64,1048576")).split(",").map(Number);
if (!sizes.every((n) => Number.isInteger(n) && n >= 1)) {
  flagError(`--values: positive integers, got ${values.values}`);
}
const count = Number(values.count ?? (quick ? 8 : 500));
if (!Number.isInteger(count) || count < 1) flagError(`--count: a positive integer, got ${values.count}`);
const outPath = values.out ?? "out/dispatch.json";

/** The ways of recording the dispatches (see the module doc). */
const MODES = [
  "chain",
  "independent",
  "passes",
  "submits",
  "probe",
  "pipelines",
  "shared",
  "bindings",
  "code",
  "code-pipelines",
] as const;
type Mode = typeof MODES[number];

/** A pipeline with its chain's two bind groups: a_0 → b_0 and b_0 → a_0. */
interface ChainPipeline {
  pipeline: GPUComputePipeline;
  forward: GPUBindGroup;
  back: GPUBindGroup;
}

/** The buffers and bind groups of one size: `pairs` (a → b) plus the chain's way back (b → a). */
interface Setup {
  pipeline: GPUComputePipeline;
  workgroups: number;
  /** Bind groups a_i → b_i of the 16 disjoint pairs. */
  forward: GPUBindGroup[];
  /** Bind group b_0 → a_0: with forward[0], the chain's two steps. */
  back: GPUBindGroup;
  /** The probe modes' pipelines: `probe` takes the first of `pipelines`. */
  pipelines: ChainPipeline[];
  shared: ChainPipeline[];
  /** The `bindings` mode's pipeline (entry `wide`). */
  wide: ChainPipeline;
  /** The `code` modes' pipelines (entry `long_code`): `code` takes the first. */
  longCode: ChainPipeline[];
  buffers: GPUBuffer[];
}

function setUp(gpu: Gpu, n: number): Setup {
  const kernel = gpu.kernel("smoke", { scale: 1, n });
  const buffers: GPUBuffer[] = [];
  const forward: GPUBindGroup[] = [];
  for (let i = 0; i < 16; i++) {
    const a = gpu.buffer(`a${i}`, 4 * n), b = gpu.buffer(`b${i}`, 4 * n);
    buffers.push(a, b);
    forward.push(gpu.bind(kernel, [a, b]));
  }
  const back = gpu.bind(kernel, [buffers[1], buffers[0]]);
  const probe = (scale: number, sharedFloats: number): ChainPipeline => {
    const k = gpu.kernel("dispatch_probe", { scale, n, shared_floats: sharedFloats });
    return {
      pipeline: k.pipeline,
      forward: gpu.bind(k, [buffers[0], buffers[1]]),
      back: gpu.bind(k, [buffers[1], buffers[0]]),
    };
  };
  const extras = Array.from({ length: 12 }, (_, i) => gpu.buffer(`extra${i}`, 16));
  buffers.push(...extras);
  const wideKernel = gpu.kernel("dispatch_probe", { scale: 1, n, shared_floats: 64 }, {}, "wide");
  const wide: ChainPipeline = {
    pipeline: wideKernel.pipeline,
    forward: gpu.bind(wideKernel, [buffers[0], buffers[1], ...extras]),
    back: gpu.bind(wideKernel, [buffers[1], buffers[0], ...extras]),
  };
  const scales = [1, 0.5, 0.25, 2, 4];
  const longCode = scales.map((scale): ChainPipeline => {
    const k = gpu.kernel(
      "dispatch_probe",
      { scale, n, shared_floats: 64, code_steps: 2048 },
      {},
      "long_code",
    );
    return {
      pipeline: k.pipeline,
      forward: gpu.bind(k, [buffers[0], buffers[1]]),
      back: gpu.bind(k, [buffers[1], buffers[0]]),
    };
  });
  // Workgroup memory of the `shared` pipelines: 256 B to 48 KiB (within the default 16 KiB limit where the
  // adapter offers no more).
  const most = Math.min(12288, gpu.limits.maxComputeWorkgroupStorageSize / 4);
  const sharedFloats = [64, most, Math.max(64, most >> 2), Math.max(64, most >> 1), Math.max(64, most >> 3)];
  return {
    pipeline: kernel.pipeline,
    workgroups: Math.ceil(n / 64),
    forward,
    back,
    pipelines: scales.map((scale) => probe(scale, 64)),
    shared: scales.map((scale, i) => probe(scale, sharedFloats[i])),
    wide,
    longCode,
    buffers,
  };
}

/** The command buffers of `dispatches` dispatches recorded in `mode`. */
function record(gpu: Gpu, s: Setup, mode: Mode, dispatches: number): GPUCommandBuffer[] {
  const groupOf = (i: number) =>
    mode === "independent" ? s.forward[i % s.forward.length] : i % 2 === 0 ? s.forward[0] : s.back;
  const probes = mode === "probe"
    ? s.pipelines.slice(0, 1)
    : mode === "shared"
    ? s.shared
    : mode === "bindings"
    ? [s.wide]
    : mode === "code"
    ? s.longCode.slice(0, 1)
    : mode === "code-pipelines"
    ? s.longCode
    : s.pipelines;
  const dispatch = (pass: GPUComputePassEncoder, i: number) => {
    if (!["chain", "independent", "passes", "submits"].includes(mode)) {
      const p = probes[i % probes.length];
      pass.setPipeline(p.pipeline);
      pass.setBindGroup(0, i % 2 === 0 ? p.forward : p.back);
    } else {
      pass.setPipeline(s.pipeline);
      pass.setBindGroup(0, groupOf(i));
    }
    pass.dispatchWorkgroups(s.workgroups);
  };
  if (mode === "submits") {
    return Array.from({ length: dispatches }, (_, i) => {
      const encoder = gpu.device.createCommandEncoder();
      const pass = encoder.beginComputePass();
      dispatch(pass, i);
      pass.end();
      return encoder.finish();
    });
  }
  const encoder = gpu.device.createCommandEncoder();
  if (mode === "passes") {
    for (let i = 0; i < dispatches; i++) {
      const pass = encoder.beginComputePass();
      dispatch(pass, i);
      pass.end();
    }
  } else {
    const pass = encoder.beginComputePass();
    for (let i = 0; i < dispatches; i++) dispatch(pass, i);
    pass.end();
  }
  return [encoder.finish()];
}

/** Seconds from submitting `commands` (one submit each in `submits` mode, else one in all) to their end. */
async function timeSubmit(gpu: Gpu, commands: GPUCommandBuffer[], mode: Mode): Promise<number> {
  const t0 = performance.now();
  if (mode === "submits") { for (const c of commands) gpu.device.queue.submit([c]); }
  else gpu.device.queue.submit(commands);
  await gpu.device.queue.onSubmittedWorkDone();
  return (performance.now() - t0) / 1000;
}

/** Microseconds per dispatch in `mode`: the median over three tries of (T(3N) − T(N)) / 2N. */
async function microsPerDispatch(gpu: Gpu, s: Setup, mode: Mode): Promise<number> {
  const tries: number[] = [];
  await timeSubmit(gpu, record(gpu, s, mode, count), mode); // warm-up (clocks, pipeline)
  for (let t = 0; t < 3; t++) {
    const short = await timeSubmit(gpu, record(gpu, s, mode, count), mode);
    const long = await timeSubmit(gpu, record(gpu, s, mode, 3 * count), mode);
    tries.push(((long - short) / (2 * count)) * 1e6);
  }
  return tries.sort((a, b) => a - b)[1];
}

const gpu = await getGpu();
console.error(
  `device: ${gpu.description}${gpu.isFallback ? " (software: figures show only that it runs)" : ""}`,
);
const rows: { mode: Mode; values: number; workgroups: number; us: number }[] = [];
const results = {
  device: gpu.description,
  software: gpu.isFallback,
  date: new Date().toISOString(),
  count,
  rows,
};
const table = [["mode", "values", "workgroups", "µs/dispatch"]];
for (const n of sizes) {
  const s = setUp(gpu, n);
  for (const mode of MODES) {
    const us = await microsPerDispatch(gpu, s, mode);
    rows.push({ mode, values: n, workgroups: s.workgroups, us });
    table.push([mode, String(n), String(s.workgroups), us.toFixed(2)]);
    console.error(`${mode} ${n}: ${us.toFixed(2)} µs per dispatch`);
    saveJson(outPath, results);
  }
  for (const b of s.buffers) b.destroy();
}
const widths = table[0].map((_, c) => Math.max(...table.map((r) => r[c].length)));
for (const r of table) console.log(r.map((v, c) => c === r.length - 1 ? v : v.padEnd(widths[c])).join("  "));
console.log(`wrote ${outPath}`);
