/**
 * Microbenchmark of the prefill matrix-matrix kernels (no model file): `createMatmul` and the fused gate/up +
 * SwiGLU `createGateUpSwiGluMatmul` at the Llama-3.1-8B and Llama-3.2-1B shapes, for a list of weight types,
 * prompt lengths and tunings (`MatmulTuning`: tile shape, unrolled K loop, prefetch). Weights hold random
 * quants with small finite f16 scales (F16/BF16/F32 weights: small random values); each op gets enough
 * copies of its weights (`--min-mb`, default 128 MB in all) that they do not all sit in the L2 cache, and
 * many dispatches cycling through the copies go into one submit. The time per op is the difference of two
 * such runs of different lengths, divided by the extra dispatches (so the submit and readback overheads
 * cancel); run lengths are chosen from a first estimate so that the short run takes about 50 ms.
 * TFLOP/s counts 2 · tokens · rows · cols per op (rows of gate and up together for gate_up).
 *
 * A tuning `{"int8": true}` (optionally with `"kBlocks": 2` or `4`) times the integer-dot-product kernel
 * (`createMatmulInt8`) instead, for the types that have an integer view: its input quantised once before
 * the timed runs (the quantisation is a separate, much smaller dispatch); gate_up runs the fused
 * `createGateUpSwiGluInt8`.
 *
 * usage: deno run -A bench/matmul.ts [--types Q4_K,Q6_K,Q8_0,F16] [--shapes 8b,1b | 8b.ffn_down,…]
 *          [--tokens 512,4096] [--tunings '[{}, {"unrollK": true}, {"prefetch": false}]']
 *          [--min-mb 128] [--out out/matmul.json] [--quick]
 * defaults: --types Q4_K,Q6_K --shapes 8b,1b --tokens 512 --tunings '[{}]' (the default tuning only).
 *
 * Ops are built for each prompt length as the model builds them (`maxTokens` = the length), so `{}` rows
 * show the default tile shape for that length; the `tile` column gives the shape each row ran with
 * (t tokens per thread, k columns per step, u unrolled K loop, p prefetch, f16 for `{"half": true}`: f16
 * products; `coop` for `{"coop": true}`: products on the GPU's cooperative matrices, emulated on a software
 * adapter and refused on a GPU without them). A tuning an op rejects becomes a row with an error. `--quick`
 * (for software adapters) runs small "tiny" shapes with 64 tokens, few copies and dispatches: it shows that
 * everything runs, not speed.
 * The JSON holds the device description and every row; it is rewritten after each row (to a `.tmp` file,
 * then renamed), so a run cut short keeps its rows.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { benchFlags } from "./flags.ts";
import { BadFlagError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { createGateUpSwiGluMatmul } from "../src/gpu/ops/fused.ts";
import {
  createMatmul,
  MATMUL_TILE_ROWS,
  type MatmulShape,
  matmulShape,
  type MatmulTuning,
} from "../src/gpu/ops/matmul.ts";
import { ceilDiv, type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import {
  createGateUpSwiGluInt8,
  createMatmulInt8,
  createQ8Quantize,
  q8ActivationBytes,
  type Q8Activations,
} from "../src/gpu/ops/matmul_int8.ts";
import type { GpuWeight } from "../src/gpu/weights.ts";
import { GGMLType, typeInfo } from "../src/gguf/types.ts";
import { RANDOM_WEIGHT_TYPES, randomWeight, saveJson, timeOps } from "./kernel_timing.ts";

/** One benchmarked op shape: `matmul` (rows × cols) or `gate_up` (gate and up, each rows × cols). */
interface Shape {
  name: string;
  kind: "matmul" | "gate_up";
  cols: number;
  /** Output rows of the weight (of each of gate and up for gate_up). */
  rows: number;
}

const SHAPES: Shape[] = [
  { name: "8b.attn_q", kind: "matmul", cols: 4096, rows: 4096 },
  { name: "8b.attn_k", kind: "matmul", cols: 4096, rows: 1024 }, // attn_v alike
  { name: "8b.attn_output", kind: "matmul", cols: 4096, rows: 4096 },
  { name: "8b.gate_up", kind: "gate_up", cols: 4096, rows: 14336 },
  { name: "8b.ffn_down", kind: "matmul", cols: 14336, rows: 4096 },
  { name: "8b.output", kind: "matmul", cols: 4096, rows: 128256 },
  { name: "1b.attn_q", kind: "matmul", cols: 2048, rows: 2048 },
  { name: "1b.attn_k", kind: "matmul", cols: 2048, rows: 512 }, // attn_v alike
  { name: "1b.attn_output", kind: "matmul", cols: 2048, rows: 2048 },
  { name: "1b.gate_up", kind: "gate_up", cols: 2048, rows: 8192 },
  { name: "1b.ffn_down", kind: "matmul", cols: 8192, rows: 2048 },
  { name: "1b.output", kind: "matmul", cols: 2048, rows: 128256 },
  { name: "tiny.matmul", kind: "matmul", cols: 512, rows: 320 },
  { name: "tiny.gate_up", kind: "gate_up", cols: 256, rows: 192 },
  { name: "tiny.down", kind: "matmul", cols: 768, rows: 256 },
];

/** A prefill tuning, or the integer kernel with its blocks per step. */
type BenchTuning = MatmulTuning & { int8?: boolean; kBlocks?: number };

/** One measured (shape, type, tokens, tuning). */
interface Row {
  shape: string;
  kind: string;
  cols: number;
  /** Output rows of the op (gate and up together for gate_up). */
  rows: number;
  type: string;
  tokens: number;
  tuning: BenchTuning;
  /** The tile shape and variant the op ran with (the defaults filled in). */
  tile?: MatmulShape;
  /** Weight bytes one op reads. */
  bytes: number;
  /** Copies of the weights cycled through. */
  copies: number;
  /** Dispatches in the short and the long timed run. */
  dispatches?: [number, number];
  us?: number;
  tflops?: number;
  error?: string;
}

const { values } = benchFlags(import.meta.url, () =>
  parseArgs({
    args: Deno.args,
    options: {
      help: { type: "boolean" },
      types: { type: "string" },
      shapes: { type: "string" },
      tokens: { type: "string" },
      tunings: { type: "string" },
      "min-mb": { type: "string" },
      out: { type: "string" },
      quick: { type: "boolean" },
    },
  }));

/** Stops with a one-line usage error. */
function usage(message: string): never {
  console.error(`error: ${message}`);
  Deno.exit(2);
}

const quick = values.quick ?? false;
const list = (s: string | undefined, fallback: string) =>
  (s ?? fallback).split(",").map((v) => v.trim()).filter(Boolean);
const types = list(values.types, "Q4_K,Q6_K");
for (const t of types) {
  if (!RANDOM_WEIGHT_TYPES.includes(t)) {
    usage(`--types: ${t} is not one of ${RANDOM_WEIGHT_TYPES.join(", ")}`);
  }
}
const shapeNames = list(values.shapes, quick ? "tiny" : "8b,1b");
const shapes = SHAPES.filter((s) => shapeNames.some((n) => s.name === n || s.name.startsWith(`${n}.`)));
if (shapes.length === 0) usage(`--shapes: no shape matches ${shapeNames.join(",")}`);
const tokenCounts = list(values.tokens, quick ? "64" : "512").map(Number);
for (const n of tokenCounts) {
  if (!Number.isInteger(n) || n < 1) usage(`--tokens: expected positive integers, got ${values.tokens}`);
}
let tunings: BenchTuning[];
try {
  tunings = JSON.parse(values.tunings ?? "[{}]");
} catch (e) {
  usage(`--tunings: not JSON: ${e instanceof Error ? e.message : e}`);
}
if (!Array.isArray(tunings) || !tunings.every((t) => typeof t === "object" && t !== null)) {
  usage("--tunings: expected a JSON array of MatmulTuning objects, e.g. '[{}, {\"unrollK\": true}]'");
}
const minBytes = Number(values["min-mb"] ?? (quick ? 1 : 128)) * 1e6;
const outPath = values.out ?? "out/matmul.json";

// Cooperative matrices are opened (and probed) only when a tuning asks for them.
const gpu = await getGpu({ profile: true, coopMatrix: tunings.some((t) => t.coop === true) });
// On a hardware GPU without working cooperative matrices the emulated kernel would only time the emulation.
if (tunings.some((t) => t.coop === true) && !gpu.coopMatrix && !gpu.isFallback) {
  usage(`--tunings: coop needs cooperative matrices: ${gpu.coopMatrixNote}`);
}
// A tuning with an unknown field or value fails here, before any weight is uploaded.
for (const t of tunings) {
  if (t.int8) continue;
  try {
    matmulShape(gpu, `--tunings ${JSON.stringify(t)}`, 1, 1, t);
  } catch (e) {
    if (e instanceof BadFlagError) usage(e.message);
    throw e;
  }
}
console.error(
  `device: ${gpu.description}${gpu.isFallback ? " (software: figures show only that it runs)" : ""}`,
);

/**
 * `t8 k32 u0 p1`: tokens per thread, K step, unrolled K loop, prefetch (and ` f16` for half products);
 * `coop 64x128` (or `coop-emulated 64x128`) for the cooperative-matrix kernel's tiles.
 */
function tileName(tile: MatmulShape | undefined): string {
  if (!tile) return "-";
  if (tile.coop) return `${gpu.coopMatrix ? "coop" : "coop-emulated"} ${tile.tileTokens}x128`;
  return `t${tile.tokensPerThread} k${tile.kStep} u${tile.unrollK ? 1 : 0} p${tile.prefetch ? 1 : 0}` +
    (tile.half ? " f16" : "");
}

const results = {
  device: gpu.description,
  software: gpu.isFallback,
  date: new Date().toISOString(),
  args: Deno.args,
  rows: [] as Row[],
};

const header = ["shape", "type", "m", "tuning", "tile", "µs", "TFLOP/s"];
const table: string[][] = [];
const maxTokens = Math.max(...tokenCounts);

/** Writes the results so far (atomically, so a reader never sees half a file). */
function save(): void {
  saveJson(outPath, results);
}

/** Adds a row to the results (saved at once, so a run cut short keeps its rows) and the table, and prints it. */
function record(row: Row): void {
  results.rows.push(row);
  table.push([
    row.shape,
    row.type,
    String(row.tokens),
    JSON.stringify(row.tuning),
    tileName(row.tile),
    row.us === undefined ? "error" : row.us.toFixed(1),
    row.tflops === undefined ? "-" : row.tflops.toPrecision(3),
  ]);
  console.error(table[table.length - 1].join("  "));
  save();
}

/** Time per op of the integer kernel over the weight copies (input quantised once, not timed). */
async function timeInt8(
  shape: Shape,
  sets: GpuWeight[][],
  x: GPUBuffer,
  y: GPUBuffer,
  tokens: number,
  step: StepParams,
  kBlocks: number | undefined,
): Promise<number> {
  const bytes = q8ActivationBytes(tokens, shape.cols);
  const q8: Q8Activations = {
    xq: gpu.buffer("xq", bytes.xq),
    xds: gpu.buffer("xds", bytes.xds),
    cols: shape.cols,
    maxTokens: tokens,
  };
  try {
    const quantize = createQ8Quantize(gpu, { label: "q8", x, out: q8, step });
    const encoder = gpu.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    quantize.encode(pass);
    pass.end();
    gpu.device.queue.submit([encoder.finish()]);
    const common = { x: q8, maxTokens: tokens, step, kBlocks };
    const ops: GpuOp[] = sets.map(([a, b]) =>
      shape.kind === "gate_up"
        ? createGateUpSwiGluInt8(gpu, { ...common, label: shape.name, gate: a, up: b, out: y })
        : createMatmulInt8(gpu, { ...common, label: shape.name, weight: a, y })
    );
    return (await timeOps(gpu, ops, quick)).us;
  } finally {
    for (const b of [q8.xq as GPUBuffer, q8.xds as GPUBuffer]) b.destroy();
  }
}

for (const shape of shapes) {
  for (const type of types) {
    const info = typeInfo(GGMLType[type as keyof typeof GGMLType], type);
    const rowBytes = shape.cols / info.blockSize * info.bytesPerBlock;
    const weights = shape.kind === "gate_up" ? 2 : 1;
    const outRows = weights * shape.rows;
    const bytes = outRows * rowBytes;
    const copies = Math.max(1, Math.ceil(minBytes / bytes));
    const base = {
      shape: shape.name,
      kind: shape.kind,
      cols: shape.cols,
      rows: outRows,
      type,
      bytes,
      copies,
    };
    const sets: GpuWeight[][] = [];
    const buffers: GPUBuffer[] = [];
    let step: StepParams | undefined;
    try {
      for (let c = 0; c < copies; c++) {
        const set: GpuWeight[] = [];
        for (let i = 0; i < weights; i++) {
          set.push(await randomWeight(gpu, type, shape.cols, shape.rows, `${shape.name}.${i}.${c}`));
        }
        sets.push(set);
      }
      const xs = Float32Array.from({ length: maxTokens * shape.cols }, () => Math.random() * 2 - 1);
      const x = gpu.buffer("x", xs.byteLength, xs);
      const y = gpu.buffer("y", maxTokens * shape.rows * 4);
      buffers.push(x, y);
      step = new StepParams(gpu, maxTokens);
      for (const tokens of tokenCounts) {
        step.set(tokens, 0);
        for (const tuning of tunings) {
          const row: Row = { ...base, tokens, tuning };
          try {
            if (tuning.int8) {
              row.us = await timeInt8(shape, sets, x, y, tokens, step, tuning.kBlocks);
              row.tflops = 2 * tokens * outRows * shape.cols / (row.us * 1e-6) / 1e12;
              record(row);
              continue;
            }
            const rowTiles = shape.kind === "gate_up"
              ? ceilDiv(shape.rows, MATMUL_TILE_ROWS / 2)
              : Math.max(...sets[0][0].parts.map((p) => ceilDiv(p.rows, MATMUL_TILE_ROWS)));
            row.tile = matmulShape(gpu, shape.name, tokens, rowTiles, tuning);
            const common = { label: shape.name, x, maxTokens: tokens, step, tuning };
            const ops = sets.map(([a, b]) =>
              shape.kind === "gate_up"
                ? createGateUpSwiGluMatmul(gpu, { ...common, gate: a, up: b, out: y })
                : createMatmul(gpu, { ...common, weight: a, y })
            );
            const timed = await timeOps(gpu, ops, quick);
            row.us = timed.us;
            row.dispatches = timed.dispatches;
            row.tflops = 2 * tokens * outRows * shape.cols / (timed.us * 1e-6) / 1e12;
          } catch (e) {
            row.error = e instanceof Error ? e.message : String(e);
          }
          record(row);
        }
      }
    } catch (e) {
      // The weights or buffers of this shape did not fit: one error row per measurement.
      const error = e instanceof Error ? e.message : String(e);
      for (const tokens of tokenCounts) {
        for (const tuning of tunings) record({ ...base, tokens, tuning, error });
      }
    }
    for (const ws of sets) for (const w of ws) w.destroy();
    for (const b of buffers) b.destroy();
    step?.buffer.destroy();
  }
}

const widths = header.map((h, i) => Math.max(h.length, ...table.map((r) => r[i].length)));
const line = (cells: string[]) =>
  cells.map((c, i) => (i >= 5 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join("  ");
console.log(`# ${gpu.description}`);
console.log(line(header));
for (const r of table) console.log(line(r));
const errors = new Set(
  results.rows.flatMap((r) =>
    r.error ? [`${r.shape} ${r.type} m=${r.tokens} ${JSON.stringify(r.tuning)}: ${r.error}`] : []
  ),
);
for (const e of errors) console.log(`error: ${e}`);
save();
console.error(`wrote ${outPath}`);
