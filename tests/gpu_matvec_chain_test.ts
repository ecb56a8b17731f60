import { deepEqual, ok, throws } from "node:assert/strict";
import { BadFlagError, UnsupportedError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { createFfnChain, FFN_CHAIN_COUNTER_BYTES, type FfnChainTuning } from "../src/gpu/ops/matvec_chain.ts";
import { int8InputReference } from "../src/gpu/ops/matvec_units.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { rope, ropeInverseFrequencies } from "../src/model/ops.ts";
import { randomF32, randomWeight } from "./gpu_quant_data.ts";
import { nanBuffer, qkvFields, submitValidated } from "./gpu_ops_helpers.ts";

/** `w` ([rows][cols]) times `x`, in f64. */
function matvec(w: Float32Array, x: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += w[r * cols + c] * x[c];
    y[r] = s;
  }
  return y;
}

/** `x` as a phase with int8 input sees it (rounded per 16 values), or `x` itself. */
function asInput(x: Float64Array, int8: boolean): ArrayLike<number> {
  return int8 ? int8InputReference(Float32Array.from(x), x.length) : x;
}

function expectNear(what: string, got: Float32Array, want: Float64Array, rel: number): void {
  let scale = 0;
  for (const v of want) scale = Math.max(scale, Math.abs(v));
  for (let i = 0; i < want.length; i++) {
    ok(Math.abs(got[i] - want[i]) <= rel * scale + 1e-6, `${what}[${i}] = ${got[i]}, expected ${want[i]}`);
  }
}

interface ChainCase {
  types: [string, string, string]; // attn_output, gate/up, ffn_down
  E: number;
  FF: number;
  inner: number; // attn_output's row length
  tuning?: FfnChainTuning;
  qkv?: [string, string, string]; // a QKV phase with weights of these types
}

Deno.test("FFN chain: attn_output, gate/up + SwiGLU and ffn_down in one dispatch match the CPU", async () => {
  const gpu = await getGpu();
  const eps = 1e-5;
  const cases: ChainCase[] = [
    { types: ["Q4_K", "Q4_K", "Q6_K"], E: 256, FF: 512, inner: 256 },
    // Ragged last workgroups in every phase (rows not a multiple of rows per workgroup).
    { types: ["Q8_0", "Q8_0", "Q8_0"], E: 96, FF: 160, inner: 64, tuning: { rowsPerWorkgroup: [5, 3, 7] } },
    { types: ["F16", "Q5_K", "Q4_0"], E: 256, FF: 256, inner: 512, tuning: { workgroupSize: 32 } },
    { types: ["BF16", "F32", "BF16"], E: 100, FF: 36, inner: 100 }, // plain units, the last one ragged
    // Int8 input in every phase, two units per step.
    {
      types: ["Q4_K", "Q5_K", "Q6_K"],
      E: 256,
      FF: 256,
      inner: 256,
      tuning: { int8: [true, true, true], unitsPerStep: [2, 2, 1], workgroupSize: 64 },
    },
    // The next layer's QKV as a fourth phase (RoPE, K before RoPE), types mixed as in Q4_K_M.
    { types: ["Q4_K", "Q4_K", "Q6_K"], E: 256, FF: 512, inner: 256, qkv: ["Q4_K", "Q4_K", "Q6_K"] },
    { types: ["Q8_0", "Q8_0", "Q8_0"], E: 96, FF: 160, inner: 64, qkv: ["Q8_0", "F16", "Q8_0"] },
  ];
  for (const c of cases) {
    const { E, FF, inner } = c;
    const [typeO, typeF, typeD] = c.types;
    const what = `${c.types.join("/")} E=${E} FF=${FF}`;
    const wo = randomWeight(gpu, "attn_output", typeO, E, inner);
    const gate = randomWeight(gpu, "ffn_gate", typeF, FF, E);
    const up = randomWeight(gpu, "ffn_up", typeF, FF, E);
    const down = randomWeight(gpu, "ffn_down", typeD, E, FF);
    const a = randomF32(inner), x = randomF32(E), gammaF = randomF32(E), gammaN = randomF32(E);
    const aBuf = gpu.buffer("att", a.byteLength, a);
    const xBuf = gpu.buffer("x", x.byteLength, x);
    const gammaFBuf = gpu.buffer("γ ffn", gammaF.byteLength, gammaF);
    const gammaNBuf = gpu.buffer("γ next", gammaN.byteLength, gammaN);
    const xn = nanBuffer(gpu, "xn", E), sums = nanBuffer(gpu, "sums", E), hidden = nanBuffer(gpu, "h", FF);
    const counters = gpu.buffer("counters", FFN_CHAIN_COUNTER_BYTES);
    // The QKV phase: 4 query heads and 2 KV heads of 16 values, at position 17.
    const headDim = 16, qRows = 4 * headDim, kvRows = 2 * headDim, pos = 17;
    const invFreq = ropeInverseFrequencies(headDim, 10000);
    const step = new StepParams(gpu, 1);
    step.set(1, pos);
    const wq = c.qkv && randomWeight(gpu, "attn_q", c.qkv[0], qRows, E);
    const wk = c.qkv && randomWeight(gpu, "attn_k", c.qkv[1], kvRows, E);
    const wv = c.qkv && randomWeight(gpu, "attn_v", c.qkv[2], kvRows, E);
    const outs = [qRows, kvRows, kvRows, kvRows].map((n, i) => nanBuffer(gpu, `qkv ${i}`, n));
    const op = createFfnChain(gpu, {
      label: "ffn_chain",
      wo: wo.weight,
      gate: gate.weight,
      up: up.weight,
      down: down.weight,
      att: aBuf,
      x: xBuf,
      xn,
      sums,
      hidden,
      ffnNorm: gammaFBuf,
      nextNorm: gammaNBuf,
      counters,
      eps,
      tuning: c.tuning,
      qkv: wq && wk && wv
        ? {
          label: "attn_qkv",
          ...qkvFields([wq, wk, wv], outs),
          kPre: outs[3],
          step,
          rope: { headDim, invFreq, maxPosition: 4096 },
        }
        : undefined,
    });
    const int8 = c.tuning?.int8 ?? [false, false, false];
    // The CPU, from x; twice: the second dispatch must find the counters back at zero.
    let want = Float64Array.from(x);
    const advance = () => {
      const x1 = matvec(wo.w, asInput(Float64Array.from(a), int8[0]), E, inner).map((v, i) => v + want[i]);
      let ss = 0;
      for (const v of x1) ss += v * v;
      const scale = 1 / Math.sqrt(ss / E + eps);
      const folded = x1.map((v, i) => v * gammaF[i]);
      const g = matvec(gate.w, asInput(folded, int8[1]), FF, E).map((v) => v * scale);
      const u = matvec(up.w, asInput(folded, int8[1]), FF, E).map((v) => v * scale);
      const h = g.map((v, i) => v / (1 + Math.exp(-v)) * u[i]);
      const x2 = matvec(down.w, asInput(h, int8[2]), E, FF).map((v, i) => v + x1[i]);
      want = x2;
      return h;
    };
    for (let run = 0; run < 2; run++) {
      await submitValidated(gpu, [op]);
      const wantHidden = advance();
      const [gotX, gotXn, gotSums, gotHidden] = await Promise.all(
        [xBuf, xn, sums, hidden].map((b) => gpu.readF32(b)),
      );
      const tag = `${what} run ${run}`;
      // Int8 input rounds differently where the f32 sums of the run before differ by an ulp: looser there.
      const rel = int8.some((i) => i) ? 2e-3 : 1e-4;
      expectNear(`${tag} hidden`, gotHidden, wantHidden, rel);
      expectNear(`${tag} x`, gotX, want, rel);
      expectNear(`${tag} xn`, gotXn, want.map((v, i) => v * gammaN[i]), rel);
      // ffn_down's partial sums of squares add up to Σ x²; past them the buffer is untouched.
      let total = 0, ss = 0;
      for (let i = 0; i < op.normPartials; i++) total += gotSums[i];
      for (const v of want) ss += v * v;
      ok(Math.abs(total - ss) <= 1e-4 * ss, `${tag} Σ x² = ${total}, expected ${ss}`);
      const rowsO = c.tuning?.rowsPerWorkgroup?.[0] ?? 4;
      for (let i = Math.max(op.normPartials, Math.ceil(E / rowsO)); i < E; i++) {
        ok(Number.isNaN(gotSums[i]), `${tag}: sums written past the producers at ${i}`);
      }
      if (wq && wk && wv) {
        // Q, K (rotated) and V of rmsnorm(x) · γ_next, and K before RoPE.
        let ss2 = 0;
        for (const v of want) ss2 += v * v;
        const normed = want.map((v, i) => v * gammaN[i] / Math.sqrt(ss2 / E + eps));
        const [gotQ, gotK, gotV, gotKPre] = await Promise.all(outs.map((b) => gpu.readF32(b)));
        const q = Float32Array.from(matvec(wq.w, normed, qRows, E));
        const kPre = matvec(wk.w, normed, kvRows, E);
        const k = Float32Array.from(kPre);
        rope(q, 4, headDim, pos, invFreq);
        rope(k, 2, headDim, pos, invFreq);
        expectNear(`${tag} q`, gotQ, Float64Array.from(q), 1e-4);
        expectNear(`${tag} k`, gotK, Float64Array.from(k), 1e-4);
        expectNear(`${tag} k before RoPE`, gotKPre, kPre, 1e-4);
        expectNear(`${tag} v`, gotV, matvec(wv.w, normed, kvRows, E), 1e-4);
      }
      want = Float64Array.from(gotX); // the next run starts from the GPU's x
      deepEqual(
        [...new Uint32Array((await gpu.readF32(counters)).buffer)],
        new Array(FFN_CHAIN_COUNTER_BYTES / 4).fill(0),
        `${tag} counters`,
      );
    }
    for (const b of [aBuf, xBuf, gammaFBuf, gammaNBuf, xn, sums, hidden, counters, ...outs]) b.destroy();
    for (const w of [wo, gate, up, down, wq, wk, wv]) w?.weight.destroy();
  }
});

Deno.test("FFN chain: weights that do not chain and bad tunings are refused with the reason", async () => {
  const gpu = await getGpu();
  const buffer = gpu.buffer("b", 4096 * 4);
  const wo = randomWeight(gpu, "attn_output", "Q8_0", 64, 64);
  const gate = randomWeight(gpu, "ffn_gate", "Q8_0", 96, 64);
  const up = randomWeight(gpu, "ffn_up", "Q4_0", 96, 64);
  const down = randomWeight(gpu, "ffn_down", "Q8_0", 64, 96);
  const base = {
    label: "c",
    wo: wo.weight,
    gate: gate.weight,
    up: gate.weight,
    down: down.weight,
    att: buffer,
    x: buffer,
    xn: buffer,
    sums: buffer,
    hidden: buffer,
    ffnNorm: buffer,
    nextNorm: buffer,
    counters: buffer,
    eps: 1e-5,
  };
  throws(
    () => createFfnChain(gpu, { ...base, up: up.weight }),
    (e: Error) => e instanceof UnsupportedError && e.message.includes("ffn_gate and ffn_up differ"),
  );
  throws(
    () => createFfnChain(gpu, { ...base, down: gate.weight }),
    (e: Error) => e instanceof UnsupportedError && e.message.includes("do not chain"),
  );
  throws(
    () => createFfnChain(gpu, { ...base, tuning: { workgroupSize: 48 } }),
    (e: Error) => e instanceof BadFlagError && e.message.includes("power of two"),
  );
  throws(
    () => createFfnChain(gpu, { ...base, tuning: { rowsPerWorkgroup: [4, 9, 4] } }),
    (e: Error) => e instanceof BadFlagError && e.message.includes("rowsPerWorkgroup"),
  );
  for (const w of [wo, gate, up, down]) w.weight.destroy();
  buffer.destroy();
});
