import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { getGpu } from "../src/gpu/device.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import {
  createWriteGate,
  GATE_EPSILON,
  gateLayerFloats,
  type GateLayerWeights,
  gateOutputBytes,
  type GateShape,
  packGateLayer,
  uploadGate,
} from "../src/gpu/ops/write_gate.ts";
import { BadFlagError, UnsupportedError } from "../src/errors.ts";
import type { GateWeights } from "../src/gate/format.ts";
import { gateScores } from "../src/gate/reference.ts";
import { expectClose, nanBuffer, randomF32 } from "./gpu_ops_helpers.ts";

/** erf in f64 to ~1e-15: Taylor series near 0, continued fraction of erfc beyond. */
function erf(x: number): number {
  const a = Math.abs(x);
  let r: number;
  if (a < 2.5) {
    let term = a, sum = a;
    for (let n = 1; n < 80; n++) {
      term *= -a * a / n;
      sum += term / (2 * n + 1);
    }
    r = sum * 2 / Math.sqrt(Math.PI);
  } else {
    let f = 0; // erfc(a) = exp(−a²)/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + …))))
    for (let k = 60; k >= 1; k--) f = (k / 2) / (a + f);
    r = 1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / (a + f);
  }
  return x < 0 ? -r : r;
}

/** The gate of one layer on the CPU in f64, from the checkpoint layout. */
function gateReference(
  w: GateLayerWeights,
  shape: GateShape,
  preK: Float32Array,
  postK: Float32Array,
  tokens: number,
): Float64Array {
  const { kvHeads: H, headDim: D, inner } = shape;
  const out = new Float64Array(tokens * H);
  const norm = (src: Float32Array, o: number, weight: Float32Array) => {
    let ss = 0;
    for (let d = 0; d < D; d++) ss += src[o + d] ** 2;
    const inv = 1 / Math.sqrt(ss / D + 1e-6);
    return Array.from({ length: D }, (_, d) => src[o + d] * inv * weight[d]);
  };
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < H; h++) {
      const o = (t * H + h) * D;
      const x = [...norm(preK, o, w.preNorm), ...norm(postK, o, w.postNorm)];
      let z = w.b2[h];
      for (let r = 0; r < inner; r++) {
        let a = w.b1[h * inner + r];
        for (let c = 0; c < 2 * D; c++) a += w.w1[(h * inner + r) * 2 * D + c] * x[c];
        z += w.w2[h * inner + r] * 0.5 * a * (1 + erf(a / Math.SQRT2));
      }
      out[t * H + h] = Math.max(1 / (1 + Math.exp(-z)), GATE_EPSILON);
    }
  }
  return out;
}

function randomWeights(shape: GateShape, spread: number): GateLayerWeights {
  const { kvHeads: H, headDim: D, inner } = shape;
  const f1 = 1 / Math.sqrt(2 * D), f2 = spread / Math.sqrt(inner);
  return {
    preNorm: Float32Array.from(randomF32(D), (v) => 1 + 0.5 * v),
    postNorm: Float32Array.from(randomF32(D), (v) => 1 + 0.5 * v),
    w1: randomF32(H * inner * 2 * D, f1),
    b1: randomF32(H * inner, f1),
    w2: randomF32(H * inner, f2),
    b2: randomF32(H, f2),
  };
}

async function runGate(
  shape: GateShape,
  layers: number,
  maxTokens: number,
  steps: number[],
  spread: number,
  activation: "gelu" | "silu" = "gelu",
) {
  const gpu = await getGpu();
  const { kvHeads: H, headDim: D } = shape;
  const step = new StepParams(gpu, maxTokens);
  const preK = gpu.buffer("pre k", maxTokens * H * D * 4);
  const postK = gpu.buffer("post k", maxTokens * H * D * 4);
  const scores = nanBuffer(gpu, "scores", maxTokens * layers * H);
  const flags = gpu.buffer("flags", gateOutputBytes(maxTokens, layers, H));
  const weights = Array.from({ length: layers }, () => randomWeights(shape, spread));
  const ops = weights.map((w, layer) =>
    createWriteGate(gpu, {
      ...shape,
      label: `gate ${layer}`,
      layers,
      layer,
      maxTokens,
      preK,
      postK,
      params: gpu.buffer(`gate ${layer}`, packGateLayer(w, shape).byteLength, packGateLayer(w, shape)),
      scores,
      flags,
      step,
      activation,
    })
  );
  let admitted = 0, total = 0;
  for (const n of steps) {
    const pre = randomF32(n * H * D, 2), post = randomF32(n * H * D, 2);
    gpu.device.queue.writeBuffer(preK, 0, pre as Float32Array<ArrayBuffer>);
    gpu.device.queue.writeBuffer(postK, 0, post as Float32Array<ArrayBuffer>);
    gpu.device.queue.writeBuffer(scores, 0, new Float32Array(maxTokens * layers * H).fill(NaN));
    gpu.device.queue.writeBuffer(flags, 0, new Uint32Array(maxTokens * layers * H).fill(7));
    step.set(n, 0);
    const encoder = gpu.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    for (const op of ops) op.encode(pass);
    pass.end();
    gpu.device.queue.submit([encoder.finish()]);
    const gotScores = await gpu.readF32(scores, 0, n * layers * H);
    const gotFlags = await gpu.readU32(flags, 0, n * layers * H);
    for (let layer = 0; layer < layers; layer++) {
      const want = gateReference(weights[layer], shape, pre, post, n);
      const got = new Float32Array(n * H);
      const gotF = new Uint32Array(n * H);
      for (let t = 0; t < n; t++) {
        for (let h = 0; h < H; h++) {
          got[t * H + h] = gotScores[(t * layers + layer) * H + h];
          gotF[t * H + h] = gotFlags[(t * layers + layer) * H + h];
        }
      }
      if (activation === "gelu") expectClose(`gate layer ${layer}, ${n} tokens`, got, want, 1e-5, 1e-7);
      // The shared CPU reference of src/gate agrees too (its output is [kvHeads][tokens]).
      const gate = {
        ...shape,
        activation,
        normEpsilon: 1e-6,
        scoreFloor: GATE_EPSILON,
        layers: weights,
      };
      const shared = gateScores(gate as unknown as GateWeights, layer, pre, post, n);
      const sharedTokenMajor = Float32Array.from(
        { length: n * H },
        (_, i) => shared[(i % H) * n + Math.floor(i / H)],
      );
      expectClose(`gate layer ${layer} vs src/gate reference`, got, sharedTokenMajor, 1e-5, 1e-7);
      for (let i = 0; i < n * H; i++) {
        equal(gotF[i], got[i] > Math.fround(0.1) ? 1 : 0, `flag ${i} with g = ${got[i]}`);
        admitted += gotF[i];
        total++;
      }
    }
  }
  return { admitted, total };
}

Deno.test("write gate: head_dim 16, 3 KV heads, inner 24, 2 layers, 13 then 1 then 8 tokens", async () => {
  const { admitted, total } = await runGate({ kvHeads: 3, headDim: 16, inner: 24 }, 2, 13, [13, 1, 8], 8);
  ok(admitted > 0 && admitted < total, `admitted ${admitted} of ${total}: both outcomes exercised`);
});

Deno.test("write gate: head_dim 64, 2 KV heads, inner 100 (chunks of 32 units, the last partial), 17 then 9 tokens", async () => {
  await runGate({ kvHeads: 2, headDim: 64, inner: 100 }, 1, 17, [17, 9], 4);
});

Deno.test("write gate: head_dim 12 (no full unrolled column step), 1 KV head, inner 40, 5 tokens", async () => {
  await runGate({ kvHeads: 1, headDim: 12, inner: 40 }, 3, 5, [5, 2], 6);
});

Deno.test("write gate: head_dim 160 and head_dim 6 take the looped W1 loads (too many columns; not a multiple of 8)", async () => {
  await runGate({ kvHeads: 1, headDim: 160, inner: 40 }, 1, 3, [3, 1], 4);
  await runGate({ kvHeads: 2, headDim: 6, inner: 20 }, 1, 4, [4, 1], 4);
});

Deno.test("write gate: SiLU activation, head_dim 32, 2 KV heads, inner 48, 11 tokens", async () => {
  await runGate({ kvHeads: 2, headDim: 32, inner: 48 }, 2, 11, [11, 3], 6, "silu");
});

Deno.test("write gate: a tensor of the wrong length is named", () => {
  const shape = { kvHeads: 2, headDim: 8, inner: 4 };
  const w = randomWeights(shape, 1);
  throws(() => packGateLayer({ ...w, b1: new Float32Array(7) }, shape), (e) => {
    ok(e instanceof BadFlagError);
    ok(/b1 has 7 values, expected 8/.test(e.message), e.message);
    return true;
  });
});

Deno.test("write gate: uploading a gate in Hugging Face key order is refused; GGUF order uploads every layer (one buffer where they fit one binding)", async () => {
  const gpu = await getGpu();
  const shape = { kvHeads: 2, headDim: 8, inner: 4 };
  const gate = {
    ...shape,
    keyOrder: "hf",
    normEpsilon: 1e-6,
    scoreFloor: GATE_EPSILON,
    layers: [randomWeights(shape, 1), randomWeights(shape, 1)],
  } as unknown as GateWeights;
  throws(
    () => uploadGate(gpu, gate, "g.gguf"),
    (e) => e instanceof UnsupportedError && /g.gguf: .*hf order/.test(e.message),
  );
  // All layers in one buffer, each layer's slice 256-byte aligned and holding its packed weights.
  const ggufGate = { ...gate, keyOrder: "gguf" } as GateWeights;
  const uploaded = uploadGate(gpu, ggufGate);
  equal(uploaded.layers.length, 2);
  equal(uploaded.buffers.length, 1);
  const all = uploaded.all!;
  ok(all.strideFloats >= gateLayerFloats(shape) && all.strideFloats % 64 === 0);
  const words = await gpu.readF32(all.buffer);
  for (let l = 0; l < 2; l++) {
    const slice = uploaded.layers[l] as GPUBufferBinding;
    equal(slice.buffer, all.buffer);
    equal(slice.offset, l * all.strideFloats * 4);
    equal(slice.size, gateLayerFloats(shape) * 4);
    const packed = packGateLayer(ggufGate.layers[l], shape);
    deepEqual(words.subarray(l * all.strideFloats, l * all.strideFloats + packed.length), packed);
  }
  // Where all layers do not fit one binding: a buffer per layer.
  const small: typeof gpu = Object.create(gpu, {
    limits: { value: { ...gpu.limits, maxStorageBufferBindingSize: gateLayerFloats(shape) * 4 } },
  });
  const separate = uploadGate(small, ggufGate);
  equal(separate.all, undefined);
  equal(separate.buffers.length, 2);
  ok(separate.buffers.every((b) => b.size >= gateLayerFloats(shape) * 4));
  for (const b of [...uploaded.buffers, ...separate.buffers]) b.destroy();
});
