/**
 * Microbenchmark of the decode matrix-vector kernels (no model file): `createMatvec`, the fused gate/up +
 * SwiGLU and the fused QKV + RoPE at the Llama-3.1-8B and Llama-3.2-1B shapes, for a list of types and
 * tunings. Weights hold random values with finite scales; each op gets enough copies of its weights
 * (`--min-mb`, default 320 MB in all) that they cannot sit in the L2 cache, and many dispatches cycling
 * through the copies go into one submit. The time per op comes from `timeOps` (./kernel_timing.ts): the
 * difference of two such runs of different lengths (the short one about 50 ms), divided by the extra
 * dispatches, so the submit and readback overheads cancel. GB/s counts weight bytes read per op.
 *
 * usage: deno run -A bench/matvec.ts [--types Q4_K,Q6_K,Q8_0,F16] [--shapes 8b,1b | 8b.ffn_down,…]
 *          [--tunings '[{}, {"unitsPerStep": 2}, {"workgroupSize": 128, "rowsPerWorkgroup": 2}]']
 *          [--tokens 1,4] [--min-mb 320] [--out out/matvec.json] [--quick] [--interleave]
 *
 * A tuning is a `MatvecTuning` (workgroupSize, rowsPerWorkgroup, tokensPerWorkgroup, unitsPerStep), used
 * for the plain and the fused ops alike; `{}` is the default choice. A tuning an op rejects (e.g. an odd
 * rowsPerWorkgroup for QKV + RoPE, or an unknown field) becomes a row with an error. The `units` column
 * names the unit section of `wgsl/matvec_units.wgsl` that reads the weights. `--quick` (for software
 * adapters) runs small "tiny" shapes with few copies and dispatches: it shows that everything runs, not speed.
 * Shapes named `…_folded` take their input as the consumer of a folded RMSNorm (reading the producer's
 * partial sums, one per 4 rows of the product before), as the model's gate/up and QKV do at decode.
 * `--interleave` (one token count) then also times the shapes' ops taking turns (A, B, A, B, …, each
 * dispatch after an op of another shape, as the model's decode chain runs them) per type and tuning, and
 * prints the time of a round against the sum of the shapes' times alone: what changing kernels costs.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { benchFlags, flagError } from "./flags.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createCopy } from "../src/gpu/ops/copy.ts";
import { createGateUpSwiGlu, createQkvMatvec } from "../src/gpu/ops/fused.ts";
import { createMatvec, type MatvecTuning } from "../src/gpu/ops/matmul.ts";
import { unitSection } from "../src/gpu/ops/matvec_units.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { ropeInverseFrequencies } from "../src/model/ops.ts";
import type { GpuWeight } from "../src/gpu/weights.ts";
import { GGMLType, typeInfo } from "../src/gguf/types.ts";
import { RANDOM_WEIGHT_TYPES, randomWeight, saveJson, timeOps } from "./kernel_timing.ts";

/** One benchmarked op shape: `kind` matvec (rows × cols), gate_up (two weights rows × cols) or qkv. */
interface Shape {
  name: string;
  kind: "matvec" | "gate_up" | "qkv";
  cols: number;
  /** Output rows: one entry, or [q, k, v] for qkv. */
  rows: number[];
  /**
   * gate_up and qkv: the input is the consumer side of a folded RMSNorm over this many producer partial
   * sums per token (as in the model, where the product before leaves one per workgroup of 4 rows).
   */
  normPartials?: number;
}

const SHAPES: Shape[] = [
  { name: "8b.attn_q", kind: "matvec", cols: 4096, rows: [4096] },
  { name: "8b.attn_k", kind: "matvec", cols: 4096, rows: [1024] },
  { name: "8b.qkv", kind: "qkv", cols: 4096, rows: [4096, 1024, 1024] },
  { name: "8b.ffn_up", kind: "matvec", cols: 4096, rows: [14336] },
  { name: "8b.gate_up", kind: "gate_up", cols: 4096, rows: [14336] },
  { name: "8b.gate_up_folded", kind: "gate_up", cols: 4096, rows: [14336], normPartials: 1024 },
  { name: "8b.qkv_folded", kind: "qkv", cols: 4096, rows: [4096, 1024, 1024], normPartials: 1024 },
  { name: "8b.ffn_down", kind: "matvec", cols: 14336, rows: [4096] },
  { name: "8b.output", kind: "matvec", cols: 4096, rows: [128256] },
  { name: "1b.attn_q", kind: "matvec", cols: 2048, rows: [2048] },
  { name: "1b.qkv", kind: "qkv", cols: 2048, rows: [2048, 512, 512] },
  { name: "1b.ffn_up", kind: "matvec", cols: 2048, rows: [8192] },
  { name: "1b.gate_up", kind: "gate_up", cols: 2048, rows: [8192] },
  { name: "1b.gate_up_folded", kind: "gate_up", cols: 2048, rows: [8192], normPartials: 512 },
  { name: "1b.qkv_folded", kind: "qkv", cols: 2048, rows: [2048, 512, 512], normPartials: 512 },
  { name: "1b.ffn_down", kind: "matvec", cols: 8192, rows: [2048] },
  { name: "tiny.matvec", kind: "matvec", cols: 512, rows: [512] },
  { name: "tiny.qkv", kind: "qkv", cols: 512, rows: [512, 128, 128] },
  { name: "tiny.gate_up", kind: "gate_up", cols: 512, rows: [1024] },
  { name: "tiny.gate_up_folded", kind: "gate_up", cols: 512, rows: [1024], normPartials: 128 },
  { name: "tiny.down", kind: "matvec", cols: 1024, rows: [512] },
];

/** One measured (shape, type, tokens, tuning). */
interface Row {
  shape: string;
  kind: string;
  cols: number;
  rows: number[];
  type: string;
  tokens: number;
  tuning: MatvecTuning;
  /** The unit section(s) reading the weights, e.g. "Q4_K" or "F16_PLAIN". */
  units: string;
  /** Weight bytes one op reads. */
  bytes: number;
  /** Copies of the weights cycled through. */
  copies: number;
  us?: number;
  gbs?: number;
  error?: string;
}

const { values } = benchFlags(import.meta.url, () =>
  parseArgs({
    args: Deno.args,
    options: {
      help: { type: "boolean" },
      types: { type: "string" },
      shapes: { type: "string" },
      tunings: { type: "string" },
      tokens: { type: "string" },
      "min-mb": { type: "string" },
      out: { type: "string" },
      quick: { type: "boolean" },
      interleave: { type: "boolean" },
    },
  }));

const quick = values.quick ?? false;
const list = (s: string | undefined, fallback: string) =>
  (s ?? fallback).split(",").map((v) => v.trim()).filter(Boolean);
const types = list(values.types, "Q4_K,Q6_K,Q8_0,F16");
for (const t of types) {
  if (!RANDOM_WEIGHT_TYPES.includes(t)) {
    flagError(`--types: ${t} is not one of ${RANDOM_WEIGHT_TYPES.join(", ")}`);
  }
}
const shapeNames = list(values.shapes, quick ? "tiny" : "8b,1b");
const shapes = SHAPES.filter((s) => shapeNames.some((n) => s.name === n || s.name.startsWith(`${n}.`)));
if (shapes.length === 0) flagError(`--shapes: no shape matches ${shapeNames.join(",")}`);
let tunings: MatvecTuning[] = [];
try {
  tunings = JSON.parse(values.tunings ?? "[{}]");
} catch (e) {
  flagError(`--tunings is not JSON: ${(e as Error).message}`);
}
if (!Array.isArray(tunings)) flagError("--tunings: expected a JSON array of tuning objects");
const tokenCounts = list(values.tokens, "1").map(Number);
const minBytes = Number(values["min-mb"] ?? (quick ? 2 : 320)) * 1e6;
const outPath = values.out ?? "out/matvec.json";
const interleave = values.interleave ?? false;
if (interleave && (tokenCounts.length !== 1 || shapes.length < 2)) {
  flagError("--interleave needs one --tokens value and at least two shapes");
}

const gpu = await getGpu({ profile: true });
console.error(
  `device: ${gpu.description}${gpu.isFallback ? " (software: figures show only that it runs)" : ""}`,
);

/** Copy bandwidth (bytes read + written per second) of a large buffer copy, for reference. */
async function copyGBs(gpu: Gpu): Promise<number> {
  const bytes = Math.min(quick ? 16 << 20 : 1 << 30, gpu.limits.maxStorageBufferBindingSize);
  const floats = Math.floor(bytes / 16) * 4;
  const src = gpu.buffer("copy.src", floats * 4);
  const dst = gpu.buffer("copy.dst", floats * 4);
  const { us } = await timeOps(gpu, [createCopy(gpu, "copy", src, dst, floats)], quick);
  src.destroy();
  dst.destroy();
  return 2 * floats * 4 / us / 1e3;
}

/** The ops of the shapes taking turns (`--interleave`): a round's time against the shapes' times alone. */
interface InterleavedRow {
  shapes: string[];
  type: string;
  tokens: number;
  tuning: MatvecTuning;
  /** Microseconds per round (one op of each shape). */
  us?: number;
  /** Sum of the shapes' microseconds per op, each timed alone. */
  aloneUs: number;
  error?: string;
}

const results = {
  device: gpu.description,
  date: new Date().toISOString(),
  copyGBs: 0,
  rows: [] as Row[],
  interleaved: [] as InterleavedRow[],
};
// --interleave: each (type, tuning)'s ops and time alone per shape, kept until the rounds are timed.
const kept = new Map<string, { shape: string; ops: GpuOp[]; us: number }[]>();
const cleanups: (() => void)[] = [];
results.copyGBs = await copyGBs(gpu);
console.error(`copy bandwidth: ${results.copyGBs.toFixed(0)} GB/s (read + write)`);

const header = ["shape", "type", "m", "units", "tuning", "µs", "GB/s"];
const table: string[][] = [];
const maxTokens = Math.max(...tokenCounts);

for (const shape of shapes) {
  for (const type of types) {
    const info = typeInfo(GGMLType[type as keyof typeof GGMLType], type);
    const rowBytes = shape.cols / info.blockSize * info.bytesPerBlock;
    const weightRows = shape.kind === "gate_up" ? [shape.rows[0], shape.rows[0]] : shape.rows;
    const bytes = weightRows.reduce((sum, r) => sum + r * rowBytes, 0);
    const copies = Math.max(1, Math.ceil(minBytes / bytes));
    const sets: GpuWeight[][] = [];
    for (let c = 0; c < copies; c++) {
      sets.push(
        await Promise.all(
          weightRows.map((r, i) => randomWeight(gpu, type, shape.cols, r, `${shape.name}.${i}.${c}`)),
        ),
      );
    }
    const x = gpu.buffer(
      "x",
      maxTokens * shape.cols * 4,
      new Float32Array(maxTokens * shape.cols).fill(0.01),
    );
    const outs = shape.rows.map((r, i) => gpu.buffer(`y${i}`, maxTokens * r * 4));
    // A folded norm's partial sums of squares (positive; their values do not change the work).
    const norm = shape.normPartials === undefined ? undefined : {
      sums: gpu.buffer(
        "norm sums",
        maxTokens * shape.normPartials * 4,
        new Float32Array(maxTokens * shape.normPartials).fill(4e-4),
      ),
      partials: shape.normPartials,
      width: shape.cols,
      eps: 1e-5,
    };
    const step = new StepParams(gpu, maxTokens);
    const headDim = 128;
    const invFreq = ropeInverseFrequencies(headDim, 500000);
    for (const tokens of tokenCounts) {
      step.set(tokens, 1000);
      for (const tuning of tunings) {
        const row: Row = {
          shape: shape.name,
          kind: shape.kind,
          cols: shape.cols,
          rows: shape.rows,
          type,
          tokens,
          tuning,
          units: "",
          bytes,
          copies,
        };
        try {
          row.units = [...new Set(sets[0].map(unitSection))].join("/");
          const ops = sets.map((ws) => {
            const common = { label: shape.name, x, maxTokens, step, tuning };
            if (shape.kind === "matvec") return createMatvec(gpu, { ...common, weight: ws[0], y: outs[0] });
            if (shape.kind === "gate_up") {
              return createGateUpSwiGlu(gpu, { ...common, gate: ws[0], up: ws[1], out: outs[0], norm });
            }
            return createQkvMatvec(gpu, {
              ...common,
              wq: ws[0],
              wk: ws[1],
              wv: ws[2],
              q: outs[0],
              k: outs[1],
              v: outs[2],
              rope: { headDim, invFreq, maxPosition: 8192 },
              norm,
            });
          });
          row.us = (await timeOps(gpu, ops, quick)).us;
          row.gbs = bytes / row.us / 1e3;
          if (interleave) {
            const key = JSON.stringify([type, tuning]);
            kept.set(key, [...kept.get(key) ?? [], { shape: shape.name, ops, us: row.us }]);
          }
        } catch (e) {
          row.error = e instanceof Error ? e.message : String(e);
        }
        results.rows.push(row);
        saveJson(outPath, results); // at once, so a run cut short keeps its rows
        table.push([
          shape.name,
          type,
          String(tokens),
          row.units || "-",
          JSON.stringify(tuning),
          row.us === undefined ? "error" : row.us.toFixed(1),
          row.gbs === undefined ? "-" : row.gbs.toPrecision(3),
        ]);
        console.error(table[table.length - 1].join("  "));
      }
    }
    const cleanup = () => {
      for (const ws of sets) for (const w of ws) w.destroy();
      for (const b of [x, ...outs]) b.destroy();
      if (norm) norm.sums.destroy();
      step.buffer.destroy();
    };
    if (interleave) cleanups.push(cleanup);
    else cleanup();
  }
}

for (const [key, entries] of kept) {
  if (entries.length < 2) continue;
  const [type, tuning] = JSON.parse(key) as [string, MatvecTuning];
  const row: InterleavedRow = {
    shapes: entries.map((e) => e.shape),
    type,
    tokens: tokenCounts[0],
    tuning,
    aloneUs: entries.reduce((sum, e) => sum + e.us, 0),
  };
  const rounds = Math.max(...entries.map((e) => e.ops.length));
  const ops = Array.from({ length: rounds }, (_, i) => entries.map((e) => e.ops[i % e.ops.length])).flat();
  try {
    row.us = (await timeOps(gpu, ops, quick)).us * entries.length;
  } catch (e) {
    row.error = e instanceof Error ? e.message : String(e);
  }
  results.interleaved.push(row);
  saveJson(outPath, results);
  console.error(
    `interleaved ${row.shapes.join(" + ")} ${type} ${JSON.stringify(tuning)}: ` +
      (row.us === undefined ? `error: ${row.error}` : `${row.us.toFixed(1)} µs per round`) +
      ` against ${row.aloneUs.toFixed(1)} µs alone`,
  );
}
for (const cleanup of cleanups) cleanup();

const widths = header.map((h, i) => Math.max(h.length, ...table.map((r) => r[i].length)));
const line = (cells: string[]) =>
  cells.map((c, i) => (i >= 5 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join("  ");
console.log(`# ${gpu.description}; copy ${results.copyGBs.toFixed(0)} GB/s (read + write)`);
console.log(line(header));
for (const r of table) console.log(line(r));
const errors = new Set(
  results.rows.flatMap((r) =>
    r.error ? [`${r.shape} ${r.type} ${JSON.stringify(r.tuning)}: ${r.error}`] : []
  ),
);
for (const e of errors) console.log(`error: ${e}`);
for (const r of results.interleaved) {
  console.log(
    `interleaved ${r.shapes.join(" + ")} ${r.type} ${JSON.stringify(r.tuning)}: ` +
      (r.us === undefined ? "error" : `${r.us.toFixed(1)} µs per round`) +
      ` against ${r.aloneUs.toFixed(1)} µs alone`,
  );
}
saveJson(outPath, results);
console.error(`wrote ${outPath}`);
