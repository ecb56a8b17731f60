import { equal, ok, throws } from "node:assert/strict";
import { BadFlagError, UnsupportedError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { createSwiGlu } from "../src/gpu/ops/elementwise.ts";
import {
  canFuseGateUp,
  canFuseQkv,
  createGateUpSwiGlu,
  createGateUpSwiGluMatmul,
  createQkvMatvec,
  suffixedDequantSource,
} from "../src/gpu/ops/fused.ts";
import { createMatvec } from "../src/gpu/ops/matmul.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { createRope } from "../src/gpu/ops/rope.ts";
import { typeInfo } from "../src/gguf/types.ts";
import { rope, ropeInverseFrequencies } from "../src/model/ops.ts";
import { products, randomF32, randomWeight, typeOf } from "./gpu_quant_data.ts";
import { gateUpCase, nanBuffer as nans, runOps, untouchedPast } from "./gpu_ops_helpers.ts";
import type { QkvRopeCase } from "./gpu_qkv_rope_check.ts";

const silu = (v: number) => v / (1 + Math.exp(-v));

const TOL = 2e-5;

interface GateUpCase {
  type: string;
  rows: number;
  blocks: number;
  m: number;
}

Deno.test("gpu fused: gate/up + SwiGLU matches the CPU reference at odd shapes", async () => {
  const gpu = await getGpu();
  const cases: GateUpCase[] = [
    { type: "Q4_K", rows: 1, blocks: 1, m: 1 },
    { type: "Q4_K", rows: 37, blocks: 3, m: 1 },
    { type: "Q4_K", rows: 19, blocks: 2, m: 5 },
    { type: "Q6_K", rows: 33, blocks: 2, m: 1 },
    { type: "Q8_0", rows: 17, blocks: 3, m: 3 },
    { type: "Q4_0", rows: 7, blocks: 5, m: 3 },
    { type: "Q3_K", rows: 13, blocks: 1, m: 2 },
    { type: "F32", rows: 9, blocks: 36, m: 2 }, // 36 columns: plain units, the second one ragged
    { type: "F16", rows: 11, blocks: 52, m: 1 },
  ];
  for (const c of cases) {
    const cols = c.blocks * typeInfo(typeOf(c.type), c.type).blockSize;
    const maxTokens = c.m + 2;
    const x = randomF32(maxTokens * cols);
    const { gate, up, xBuf, step, fields } = gateUpCase(gpu, c.type, c.rows, cols, x);
    const out = nans(gpu, "out", maxTokens * c.rows);
    const op = createGateUpSwiGlu(gpu, { ...fields(out), tuning: { tokensPerWorkgroup: 4 } });
    const [got] = await runOps(gpu, [op], step, c.m, 0, [out]);
    const g = products(gate.w, x, c.m, c.rows, cols);
    const u = products(up.w, x, c.m, c.rows, cols);
    const what = `${c.type} rows=${c.rows} cols=${cols} m=${c.m}`;
    for (let i = 0; i < c.m * c.rows; i++) {
      const want = silu(g.sum[i]) * u.sum[i];
      // silu' is at most 1.1: propagate the dot products' rounding bounds through silu(g) · u.
      const bound = TOL * (1.1 * g.abs[i] * Math.abs(u.sum[i]) + Math.abs(silu(g.sum[i])) * u.abs[i]) + 1e-30;
      ok(
        Math.abs(got[i] - want) <= bound,
        `${what}: out[${i}] = ${got[i]}, expected ${want} (bound ${bound})`,
      );
    }
    untouchedPast(what, got, c.m, c.rows);
    for (const b of [xBuf, out]) b.destroy();
    gate.weight.destroy();
    up.weight.destroy();
  }
});

Deno.test("gpu fused: gate/up + SwiGLU agrees with matvec, matvec, SwiGLU and replays across token counts", async () => {
  const gpu = await getGpu();
  const [rows, cols, maxTokens] = [45, 512, 4];
  const gate = randomWeight(gpu, "ffn_gate", "Q5_K", rows, cols);
  const up = randomWeight(gpu, "ffn_up", "Q5_K", rows, cols);
  const step = new StepParams(gpu, maxTokens);
  const xBuf = gpu.buffer("x", maxTokens * cols * 4);
  const gBuf = gpu.buffer("g", maxTokens * rows * 4);
  const uBuf = gpu.buffer("u", maxTokens * rows * 4);
  const outBuf = gpu.buffer("out", maxTokens * rows * 4);
  const fusedBuf = gpu.buffer("fused", maxTokens * rows * 4);
  const common = { x: xBuf, maxTokens, step };
  const unfused = [
    createMatvec(gpu, { label: "gate", weight: gate.weight, y: gBuf, ...common }),
    createMatvec(gpu, { label: "up", weight: up.weight, y: uBuf, ...common }),
    createSwiGlu(gpu, { label: "swiglu", width: rows, maxTokens, gate: gBuf, up: uBuf, out: outBuf, step }),
  ];
  const fused = createGateUpSwiGlu(gpu, {
    label: "gate_up",
    gate: gate.weight,
    up: up.weight,
    out: fusedBuf,
    ...common,
  });
  for (const m of [4, 1, 3]) {
    const x = randomF32(m * cols);
    gpu.device.queue.writeBuffer(xBuf, 0, x);
    gpu.device.queue.writeBuffer(fusedBuf, 0, new Float32Array(maxTokens * rows).fill(NaN));
    const [want, got] = await runOps(gpu, [...unfused, fused], step, m, 0, [outBuf, fusedBuf]);
    const g = products(gate.w, x, m, rows, cols);
    const u = products(up.w, x, m, rows, cols);
    for (let i = 0; i < m * rows; i++) {
      const bound = 2 * TOL * (1.1 * g.abs[i] * Math.abs(u.sum[i]) + Math.abs(silu(g.sum[i])) * u.abs[i]);
      ok(Math.abs(got[i] - want[i]) <= bound, `m=${m}: fused ${got[i]} vs unfused ${want[i]} at ${i}`);
    }
    untouchedPast(`m=${m}`, got, m, rows);
  }
});

Deno.test("gpu fused: prefill gate/up + SwiGLU matmul matches the CPU reference at odd shapes", async () => {
  const gpu = await getGpu();
  const cases: GateUpCase[] = [
    { type: "Q4_K", rows: 45, blocks: 2, m: 65 },
    { type: "Q4_K", rows: 1, blocks: 1, m: 1 },
    { type: "Q6_K", rows: 33, blocks: 1, m: 17 },
    { type: "F32", rows: 70, blocks: 37, m: 3 }, // 37 columns: a partial K step
  ];
  for (const c of cases) {
    const cols = c.blocks * typeInfo(typeOf(c.type), c.type).blockSize;
    const maxTokens = c.m + 2;
    const x = randomF32(maxTokens * cols);
    const { gate, up, xBuf, step, fields } = gateUpCase(gpu, c.type, c.rows, cols, x);
    const out = nans(gpu, "out", maxTokens * c.rows);
    const op = createGateUpSwiGluMatmul(gpu, fields(out));
    const [got] = await runOps(gpu, [op], step, c.m, 0, [out]);
    const g = products(gate.w, x, c.m, c.rows, cols);
    const u = products(up.w, x, c.m, c.rows, cols);
    const what = `${c.type} rows=${c.rows} cols=${cols} m=${c.m}`;
    for (let i = 0; i < c.m * c.rows; i++) {
      const want = silu(g.sum[i]) * u.sum[i];
      const bound = TOL * (1.1 * g.abs[i] * Math.abs(u.sum[i]) + Math.abs(silu(g.sum[i])) * u.abs[i]) + 1e-30;
      ok(
        Math.abs(got[i] - want) <= bound,
        `${what}: out[${i}] = ${got[i]}, expected ${want} (bound ${bound})`,
      );
    }
    untouchedPast(what, got, c.m, c.rows);
    for (const b of [xBuf, out]) b.destroy();
    gate.weight.destroy();
    up.weight.destroy();
  }
});

interface QkvCase extends QkvRopeCase {
  types: [string, string, string];
  rope: boolean;
}

Deno.test("gpu fused: QKV matvec with RoPE (and K before RoPE) matches the CPU reference, mixed types, odd shapes", async () => {
  const gpu = await getGpu();
  const cases: QkvCase[] = [
    // The Q4_K_M mix: Q6_K for some attn_v.
    {
      types: ["Q4_K", "Q4_K", "Q6_K"],
      cols: 512,
      headDim: 6,
      ropeDim: 6,
      qHeads: 3,
      kvHeads: 1,
      m: 1,
      pos0: 7,
    },
    {
      types: ["Q4_K", "Q4_K", "Q6_K"],
      cols: 256,
      headDim: 10,
      ropeDim: 6,
      qHeads: 5,
      kvHeads: 3,
      m: 3,
      pos0: 4093,
    },
    {
      types: ["F16", "BF16", "F32"], // 100 columns: plain units, the last one ragged
      cols: 100,
      headDim: 4,
      ropeDim: 4,
      qHeads: 7,
      kvHeads: 1,
      m: 2,
      pos0: 0,
    },
    {
      types: ["Q4_K", "Q4_K", "Q6_K"],
      cols: 256,
      headDim: 6,
      ropeDim: 6,
      qHeads: 3,
      kvHeads: 1,
      m: 2,
      pos0: 50,
    },
    {
      types: ["Q8_0", "Q5_0", "Q4_1"],
      cols: 96,
      headDim: 2,
      ropeDim: 2,
      qHeads: 9,
      kvHeads: 3,
      m: 1,
      pos0: 33,
    },
    {
      types: ["Q2_K", "Q3_K", "Q5_1"],
      cols: 256,
      headDim: 8,
      ropeDim: 4,
      qHeads: 3,
      kvHeads: 1,
      m: 3,
      pos0: 1000,
    },
  ].map((c, i) => ({ ...c, types: c.types as [string, string, string], rope: i !== 3 }));
  for (const c of cases) {
    const qRows = c.qHeads * c.headDim;
    const kvRows = c.kvHeads * c.headDim;
    const wq = randomWeight(gpu, "attn_q", c.types[0], qRows, c.cols);
    const wk = randomWeight(gpu, "attn_k", c.types[1], kvRows, c.cols);
    const wv = randomWeight(gpu, "attn_v", c.types[2], kvRows, c.cols);
    const maxTokens = c.m + 1;
    const x = randomF32(maxTokens * c.cols);
    const xBuf = gpu.buffer("x", x.byteLength, x);
    const outs = [
      nans(gpu, "q", maxTokens * qRows),
      nans(gpu, "k", maxTokens * kvRows),
      nans(gpu, "v", maxTokens * kvRows),
      nans(gpu, "k before rope", maxTokens * kvRows),
    ];
    const step = new StepParams(gpu, maxTokens);
    const invFreq = ropeInverseFrequencies(c.ropeDim, 10000 + Math.random() * 1000);
    const op = createQkvMatvec(gpu, {
      label: "attn_qkv",
      wq: wq.weight,
      wk: wk.weight,
      wv: wv.weight,
      x: xBuf,
      q: outs[0],
      k: outs[1],
      v: outs[2],
      maxTokens,
      step,
      rope: c.rope ? { headDim: c.headDim, ropeDim: c.ropeDim, invFreq, maxPosition: 8192 } : undefined,
      kPre: outs[3],
      tuning: { tokensPerWorkgroup: 4 },
    });
    const got = await runOps(gpu, [op], step, c.m, c.pos0, outs);
    const what = `${c.types.join("/")} cols=${c.cols} head=${c.headDim}/${c.ropeDim} m=${c.m} pos0=${c.pos0}`;
    const parts = [[wq.w, qRows, c.qHeads], [wk.w, kvRows, c.kvHeads], [wv.w, kvRows, 0]] as const;
    parts.forEach(([w, rows, heads], n) => {
      const { sum, abs } = products(w, x, c.m, rows, c.cols);
      const want = Float32Array.from(sum);
      if (c.rope && heads > 0) {
        for (let t = 0; t < c.m; t++) {
          rope(want.subarray(t * rows, (t + 1) * rows), heads, c.headDim, c.pos0 + t, invFreq);
        }
      }
      for (let i = 0; i < c.m * rows; i++) {
        // A rotated value mixes two sums: bound by the larger magnitude of the pair.
        const pair = i ^ 1;
        const mag = c.rope && heads > 0 ? Math.max(abs[i], abs[pair]) : abs[i];
        const bound = 2 * TOL * mag + 1e-30;
        ok(
          Math.abs(got[n][i] - want[i]) <= bound,
          `${what}: ${"qkv"[n]}[${i}] = ${got[n][i]}, expected ${want[i]} (bound ${bound})`,
        );
      }
      untouchedPast(`${what} ${"qkv"[n]}`, got[n], c.m, rows);
      if (n === 1) {
        // K before RoPE, for the write gate.
        for (let i = 0; i < c.m * rows; i++) {
          const bound = 2 * TOL * abs[i] + 1e-30;
          ok(
            Math.abs(got[3][i] - sum[i]) <= bound,
            `${what}: k_pre[${i}] = ${got[3][i]}, expected ${sum[i]}`,
          );
        }
        untouchedPast(`${what} k_pre`, got[3], c.m, rows);
      }
    });
    for (const b of [xBuf, ...outs]) b.destroy();
    for (const w of [wq, wk, wv]) w.weight.destroy();
  }
});

Deno.test("gpu fused: QKV + RoPE agrees with three matvecs and the RoPE op at a large position", async () => {
  const gpu = await getGpu();
  const [cols, headDim, qHeads, kvHeads, maxTokens] = [256, 8, 3, 1, 2];
  const qRows = qHeads * headDim, kvRows = kvHeads * headDim;
  const wq = randomWeight(gpu, "attn_q", "Q4_K", qRows, cols);
  const wk = randomWeight(gpu, "attn_k", "Q4_K", kvRows, cols);
  const wv = randomWeight(gpu, "attn_v", "Q6_K", kvRows, cols);
  const step = new StepParams(gpu, maxTokens);
  const x = randomF32(maxTokens * cols);
  const xBuf = gpu.buffer("x", x.byteLength, x);
  const ref = [
    gpu.buffer("q", maxTokens * qRows * 4),
    gpu.buffer("k", maxTokens * kvRows * 4),
    gpu.buffer("v", maxTokens * kvRows * 4),
  ];
  const outs = [
    nans(gpu, "fq", maxTokens * qRows),
    nans(gpu, "fk", maxTokens * kvRows),
    nans(gpu, "fv", maxTokens * kvRows),
  ];
  const invFreq = ropeInverseFrequencies(headDim, 500000);
  const maxPosition = 131072;
  const common = { x: xBuf, maxTokens, step };
  const unfused = [
    createMatvec(gpu, { label: "q", weight: wq.weight, y: ref[0], ...common }),
    createMatvec(gpu, { label: "k", weight: wk.weight, y: ref[1], ...common }),
    createMatvec(gpu, { label: "v", weight: wv.weight, y: ref[2], ...common }),
    createRope(gpu, {
      label: "rope",
      headDim,
      invFreq,
      maxPosition,
      maxTokens,
      q: { buffer: ref[0], nHeads: qHeads },
      k: { buffer: ref[1], nHeads: kvHeads },
      step,
    }),
  ];
  const fused = createQkvMatvec(gpu, {
    label: "qkv",
    wq: wq.weight,
    wk: wk.weight,
    wv: wv.weight,
    q: outs[0],
    k: outs[1],
    v: outs[2],
    rope: { headDim, invFreq, maxPosition },
    ...common,
  });
  const got = await runOps(gpu, [...unfused, fused], step, maxTokens, 131070, [...ref, ...outs]);
  for (let n = 0; n < 3; n++) {
    const rows = n === 0 ? qRows : kvRows;
    const w = [wq.w, wk.w, wv.w][n];
    const { abs } = products(w, x, maxTokens, rows, cols);
    for (let i = 0; i < maxTokens * rows; i++) {
      const bound = 4 * TOL * Math.max(abs[i], abs[n < 2 ? i ^ 1 : i]);
      ok(Math.abs(got[3 + n][i] - got[n][i]) <= bound, `${"qkv"[n]}[${i}]: ${got[3 + n][i]} vs ${got[n][i]}`);
    }
  }
});

Deno.test("gpu fused: predicates and one-line errors for weights and options that cannot be fused", async () => {
  const gpu = await getGpu();
  const a = randomWeight(gpu, "blk.0.ffn_gate", "Q4_K", 4, 256).weight;
  const b = randomWeight(gpu, "blk.0.ffn_up", "Q6_K", 4, 256).weight;
  const c = randomWeight(gpu, "blk.0.ffn_up", "Q4_K", 5, 256).weight;
  const wide = randomWeight(gpu, "blk.0.attn_v", "Q4_K", 4, 512).weight;
  const split = randomWeight(gpu, "blk.0.ffn_up", "Q4_K", 4, 256, 300).weight;
  equal(split.parts.length, 2);
  ok(canFuseGateUp(a, a));
  ok(!canFuseGateUp(a, b));
  ok(!canFuseGateUp(a, c));
  ok(!canFuseGateUp(a, split));
  ok(canFuseQkv(a, c, b));
  ok(!canFuseQkv(a, c, wide));
  ok(!canFuseQkv(a, split, b));
  const step = new StepParams(gpu, 2);
  const x = gpu.buffer("x", 2 * 256 * 4);
  const out = gpu.buffer("out", 2 * 8 * 4);
  const base = { label: "blk.0.ffn_gate_up", x, out, maxTokens: 2, step };
  throws(
    () => createGateUpSwiGlu(gpu, { ...base, gate: a, up: b }),
    (e: Error) =>
      e instanceof UnsupportedError &&
      e.message ===
        "blk.0.ffn_gate_up: cannot fuse gate and up: blk.0.ffn_gate is Q4_K but blk.0.ffn_up is Q6_K",
  );
  throws(() => createGateUpSwiGlu(gpu, { ...base, gate: a, up: split }), /is split into 2 buffers/);
  throws(() => createGateUpSwiGluMatmul(gpu, { ...base, gate: a, up: c }), UnsupportedError);
  throws(() => createGateUpSwiGlu(gpu, { ...base, gate: a, up: a, maxTokens: 3 }), BadFlagError);
  throws(
    () => createGateUpSwiGlu(gpu, { ...base, gate: a, up: a, out: gpu.buffer("small", 16) }),
    BadFlagError,
  );
  const qkv = { label: "qkv", wq: a, wk: a, wv: a, x, q: out, k: out, v: out, maxTokens: 2, step };
  const rope = { headDim: 4, invFreq: new Float32Array(2), maxPosition: 16 };
  throws(() => createQkvMatvec(gpu, { ...qkv, wv: wide }), UnsupportedError);
  throws(
    () => createQkvMatvec(gpu, { ...qkv, rope, tuning: { rowsPerWorkgroup: 3 } }),
    /qkv: rowsPerWorkgroup must be even with RoPE, got 3/,
  );
  throws(() => createQkvMatvec(gpu, { ...qkv, rope: { ...rope, headDim: 3 } }), BadFlagError);
  throws(
    () => createQkvMatvec(gpu, { ...qkv, tuning: { prefetchGroups: true } }),
    /qkv: prefetchGroups is for single products and gate\/up, not QKV/,
  );
  throws(
    () => createQkvMatvec(gpu, { ...qkv, rope: { ...rope, invFreq: new Float32Array(3) } }),
    BadFlagError,
  );
  // Unquantised rows that are not a multiple of 4 values fuse, but no decode kernel reads them.
  const odd = randomWeight(gpu, "blk.0.attn_q", "F32", 4, 37).weight;
  ok(canFuseGateUp(odd, odd) && canFuseQkv(odd, odd, odd));
  throws(
    () => createGateUpSwiGlu(gpu, { ...base, gate: odd, up: odd }),
    (e: Error) =>
      e instanceof UnsupportedError &&
      e.message ===
        "blk.0.ffn_gate_up: no decode kernel: blk.0.attn_q has rows of 37 F32 values, not a multiple of 4",
  );
  throws(() => createQkvMatvec(gpu, { ...qkv, wq: odd, wk: odd, wv: odd }), UnsupportedError);
  throws(
    () => createGateUpSwiGlu(gpu, { ...base, gate: a, up: a, tuning: { variant: "dq16" } as object }),
    /blk\.0\.ffn_gate_up: unknown decode tuning field "variant"/,
  );
});

Deno.test("gpu fused: the spliced dequantisation sections are renamed per weight", () => {
  const source = suffixedDequantSource("Q4_K", "b");
  ok(source.includes("fn dq16_b(") && source.includes("W_b[") && source.includes("BLOCK_BYTES_b"));
  ok(!/\bW\[/.test(source) && !/\bfn dq4\(/.test(source) && !/\brd32\(/.test(source));
});
