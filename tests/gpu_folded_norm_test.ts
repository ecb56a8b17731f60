import { ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { createGateUpSwiGlu, createQkvMatvec } from "../src/gpu/ops/fused.ts";
import { createMatvec } from "../src/gpu/ops/matmul.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { rope, ropeInverseFrequencies } from "../src/model/ops.ts";
import { randomF32, randomWeight } from "./gpu_quant_data.ts";
import { nanBuffer as nans, runOps, subgroupReduceOrEmulated } from "./gpu_ops_helpers.ts";

/** `w` ([rows][cols]) times each of the `m` rows of `x`, in f64. */
function matvec(w: Float32Array, x: Float64Array, m: number, rows: number, cols: number): Float64Array {
  const y = new Float64Array(m * rows);
  for (let t = 0; t < m; t++) {
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let c = 0; c < cols; c++) s += w[r * cols + c] * x[t * cols + c];
      y[t * rows + r] = s;
    }
  }
  return y;
}

/** rmsnorm(y) · γ per row of `width`. */
function rmsNorm(y: Float64Array, gamma: Float32Array, m: number, width: number, eps: number): Float64Array {
  const out = new Float64Array(m * width);
  for (let t = 0; t < m; t++) {
    let ss = 0;
    for (let i = 0; i < width; i++) ss += y[t * width + i] ** 2;
    const scale = 1 / Math.sqrt(ss / width + eps);
    for (let i = 0; i < width; i++) out[t * width + i] = y[t * width + i] * scale * gamma[i];
  }
  return out;
}

function expectNear(what: string, got: Float32Array, want: Float64Array, n: number, rel: number): void {
  let scale = 0;
  for (let i = 0; i < n; i++) scale = Math.max(scale, Math.abs(want[i]));
  for (let i = 0; i < n; i++) {
    ok(
      Math.abs(got[i] - want[i]) <= rel * scale + 1e-6,
      `${what}[${i}] = ${got[i]}, expected ${want[i]} (scale ${scale})`,
    );
  }
}

Deno.test("folded norm: attn_output adds onto the residual, gate/up and QKV read rmsnorm(residual) · γ", async () => {
  const gpu = await getGpu();
  const eps = 1e-5;
  const cases = [
    { type: "Q8_0", m: 1, width: 256, inner: 96 },
    { type: "Q4_K", m: 3, width: 512, inner: 256 },
    { type: "Q3_K", m: 2, width: 256, inner: 256 },
    { type: "Q4_0", m: 1, width: 160, inner: 64 },
    { type: "BF16", m: 3, width: 100, inner: 36 }, // plain units, the last one ragged
    // 264 producer partials: the consumers' four-way loop (256 per pass) runs, then the remainder.
    { type: "Q8_0", m: 2, width: 1056, inner: 64 },
    // Fewer workgroups than row groups in all three ops (each takes several groups in turn).
    { type: "Q4_K", m: 3, width: 512, inner: 256, maxWorkgroups: 3 },
    { type: "Q8_0", m: 2, width: 1056, inner: 64, maxWorkgroups: 5 },
    // The workgroup reductions summed per subgroup first (the GPU's subgroups of 32 where it has them,
    // else the emulation).
    { type: "Q4_K", m: 3, width: 512, inner: 256, subgroupReduce: subgroupReduceOrEmulated(gpu) },
    {
      type: "Q8_0",
      m: 2,
      width: 1056,
      inner: 64,
      maxWorkgroups: 5,
      subgroupReduce: subgroupReduceOrEmulated(gpu),
    },
  ];
  for (const c of cases) {
    const { type, m, width: E, inner } = c;
    const ff = 40, headDim = 16, qHeads = 4, kvHeads = 2;
    const maxTokens = m + 1;
    const wo = randomWeight(gpu, "attn_output", type, E, inner);
    const gate = randomWeight(gpu, "ffn_gate", type, ff, E);
    const up = randomWeight(gpu, "ffn_up", type, ff, E);
    const wq = randomWeight(gpu, "attn_q", type, qHeads * headDim, E);
    const wk = randomWeight(gpu, "attn_k", type, kvHeads * headDim, E);
    const wv = randomWeight(gpu, "attn_v", type, kvHeads * headDim, E);
    const residual = randomF32(maxTokens * E);
    const a = randomF32(maxTokens * inner);
    const gamma = randomF32(E);
    const step = new StepParams(gpu, maxTokens);
    const residualBuf = gpu.buffer("residual", residual.byteLength, residual);
    const aBuf = gpu.buffer("a", a.byteLength, a);
    const gammaBuf = gpu.buffer("gamma", gamma.byteLength, gamma);
    const xg = nans(gpu, "y · γ", maxTokens * E);
    const sums = nans(gpu, "sums", maxTokens * E);
    const outs = {
      gateUp: nans(gpu, "gate up", maxTokens * ff),
      q: nans(gpu, "q", maxTokens * qHeads * headDim),
      k: nans(gpu, "k", maxTokens * kvHeads * headDim),
      v: nans(gpu, "v", maxTokens * kvHeads * headDim),
      kPre: nans(gpu, "k pre", maxTokens * kvHeads * headDim),
    };
    const producer = createMatvec(gpu, {
      label: "attn_output",
      weight: wo.weight,
      x: aBuf,
      y: residualBuf,
      maxTokens,
      step,
      fold: { weight: gammaBuf, out: xg, sums },
      tuning: { tokensPerWorkgroup: 2, maxWorkgroups: c.maxWorkgroups, subgroupReduce: c.subgroupReduce },
    });
    const norm = { sums, partials: producer.normPartials, width: E, eps };
    const gateUp = createGateUpSwiGlu(gpu, {
      label: "ffn_gate_up",
      gate: gate.weight,
      up: up.weight,
      x: xg,
      out: outs.gateUp,
      maxTokens,
      step,
      norm,
      tuning: { maxWorkgroups: c.maxWorkgroups, subgroupReduce: c.subgroupReduce },
    });
    const invFreq = ropeInverseFrequencies(headDim, 10000);
    const qkv = createQkvMatvec(gpu, {
      label: "attn_qkv",
      wq: wq.weight,
      wk: wk.weight,
      wv: wv.weight,
      x: xg,
      q: outs.q,
      k: outs.k,
      v: outs.v,
      kPre: outs.kPre,
      maxTokens,
      step,
      rope: { headDim, invFreq, maxPosition: 4096 },
      norm,
      tuning: { maxWorkgroups: c.maxWorkgroups, subgroupReduce: c.subgroupReduce },
    });
    const pos0 = 17;
    const [newResidual, gotGateUp, gotQ, gotK, gotV, gotKPre] = await runOps(
      gpu,
      [producer, gateUp, qkv],
      step,
      m,
      pos0,
      [residualBuf, outs.gateUp, outs.q, outs.k, outs.v, outs.kPre],
    );

    // The CPU: y = residual + Wo·a; n = rmsnorm(y) · γ; silu(Wg·n) · (Wu·n); Q, K, V of n, RoPE on Q and K.
    const wantResidual = matvec(wo.w, Float64Array.from(a), m, E, inner);
    for (let i = 0; i < m * E; i++) wantResidual[i] += residual[i];
    const normed = rmsNorm(wantResidual, gamma, m, E, eps);
    const g = matvec(gate.w, normed, m, ff, E), u = matvec(up.w, normed, m, ff, E);
    const wantGateUp = g.map((v, i) => v / (1 + Math.exp(-v)) * u[i]);
    const what = `${type} m=${m}`;
    expectNear(`${what} residual`, newResidual, wantResidual, m * E, 1e-5);
    for (let i = m * E; i < newResidual.length; i++) {
      ok(newResidual[i] === residual[i], `${what}: residual past m`);
    }
    expectNear(`${what} gate/up`, gotGateUp, wantGateUp, m * ff, 1e-4);
    const kPre = matvec(wk.w, normed, m, kvHeads * headDim, E);
    expectNear(`${what} k before rope`, gotKPre, kPre, m * kvHeads * headDim, 1e-4);
    const wantQ = matvec(wq.w, normed, m, qHeads * headDim, E);
    const wantK = Float64Array.from(kPre);
    for (let t = 0; t < m; t++) {
      const q32 = Float32Array.from(wantQ.subarray(t * qHeads * headDim, (t + 1) * qHeads * headDim));
      rope(q32, qHeads, headDim, pos0 + t, invFreq);
      wantQ.set(q32, t * qHeads * headDim);
      const k32 = Float32Array.from(wantK.subarray(t * kvHeads * headDim, (t + 1) * kvHeads * headDim));
      rope(k32, kvHeads, headDim, pos0 + t, invFreq);
      wantK.set(k32, t * kvHeads * headDim);
    }
    expectNear(`${what} q`, gotQ, wantQ, m * qHeads * headDim, 1e-4);
    expectNear(`${what} k`, gotK, wantK, m * kvHeads * headDim, 1e-4);
    expectNear(`${what} v`, gotV, matvec(wv.w, normed, m, kvHeads * headDim, E), m * kvHeads * headDim, 1e-4);
    for (const b of [residualBuf, aBuf, gammaBuf, xg, sums, ...Object.values(outs)]) b.destroy();
    for (const w of [wo, gate, up, wq, wk, wv]) w.weight.destroy();
  }
});

Deno.test("folded norm: the producer must be one part", async () => {
  const gpu = await getGpu();
  const step = new StepParams(gpu, 1);
  const buffer = gpu.buffer("b", 4096 * 4);
  const rowBytes = 8 * 18; // Q4_0, 256 values
  const split = randomWeight(gpu, "w", "Q4_0", 32, 256, 10 * rowBytes);
  ok(split.weight.parts.length > 1);
  const fold = { weight: buffer, out: buffer, sums: buffer };
  throws(
    () =>
      createMatvec(gpu, { label: "o", weight: split.weight, x: buffer, y: buffer, maxTokens: 1, step, fold }),
    (e: Error) => e instanceof BadFlagError && e.message === "o: a folded norm needs a weight in one part",
  );
  split.weight.destroy();
  buffer.destroy();
});
