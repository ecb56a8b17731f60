import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { BINDING_OFFSET_ALIGNMENT, type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { createWgkvAppend } from "../src/gpu/ops/wgkv_append.ts";
import { createWgkvPromote } from "../src/gpu/ops/wgkv_promote.ts";
import { createWriteGate, gateLayerFloats, gateOutputBytes } from "../src/gpu/ops/write_gate.ts";
import {
  createWriteGateLayers,
  gateKeyRowsBytes,
  gateLayersScratchBytes,
  writeGateLayersBlocker,
} from "../src/gpu/ops/write_gate_layers.ts";
import { DualCache } from "../src/kv/dual_cache.ts";
import { expectSameDualCaches, randomF32, submitValidated, twinDualCaches } from "./gpu_ops_helpers.ts";

interface LayersCase {
  headDim: number;
  kvHeads: number;
  layers: number;
  inner: number;
  maxBatch: number;
  window: number;
  /** Tokens of each step (the ring wraps several times). */
  steps: number[];
  shards?: number;
}

/**
 * Random gate weights of every layer in one buffer (layer l from float l · stride), scores on both sides of
 * 0.1.
 */
function gateParams(gpu: Gpu, c: LayersCase): { buffer: GPUBuffer; strideFloats: number } {
  const floats = gateLayerFloats(c);
  const strideFloats = Math.ceil(floats / (BINDING_OFFSET_ALIGNMENT / 4)) * (BINDING_OFFSET_ALIGNMENT / 4);
  const all = new Float32Array((c.layers - 1) * strideFloats + floats);
  for (let l = 0; l < c.layers; l++) {
    const params = randomF32(floats, 0.5);
    params.fill(1, 0, 2 * c.headDim); // norm weights
    for (let h = 0; h < c.kvHeads; h++) params[floats - c.kvHeads + h] = -1.5;
    all.set(params, l * strideFloats);
  }
  all.fill(Number.NaN, floats, strideFloats); // the padding is never read
  return { buffer: gpu.buffer("gate layers", all.byteLength, all), strideFloats };
}

/**
 * Per layer the gate with its ring append (the reference) against, per layer, the ring store without flags
 * that the fused QKV does (here `createWgkvAppend` with zero flags) and then the gates of all layers in one
 * op: flags, scores, slot info and both pools word for word.
 */
async function compareLayerGates(c: LayersCase): Promise<void> {
  const gpu = await getGpu();
  const { headDim: D, kvHeads: H, layers: L, maxBatch } = c;
  const what = `head_dim ${D}, ${H} KV heads, ${L} layers, inner ${c.inner}, steps of up to ${maxBatch}`;
  const [refKv, fusedKv] = await twinDualCaches(gpu, c, 160, 96);
  equal(refKv.shards.length, c.shards ?? 1, `${what}: shards`);
  const C = refKv.ringTokens;
  ok(c.steps.reduce((a, b) => a + b, 0) > 2 * C, `${what}: the ring wraps twice`);
  const step = new StepParams(gpu, maxBatch);
  const rowBytes = gateKeyRowsBytes(maxBatch, H, D);
  const keys = (label: string) => gpu.buffer(label, L * rowBytes);
  const preK = keys("pre k"), postK = keys("post k"), v = keys("v");
  const layerRows = (b: GPUBuffer, l: number) => ({
    buffer: b,
    offset: l * rowBytes,
    size: maxBatch * H * D * 4,
  });
  const params = gateParams(gpu, c);
  const outputs = () => ({
    scores: gpu.buffer("scores", gateOutputBytes(maxBatch, L, H)),
    flags: gpu.buffer("flags", gateOutputBytes(maxBatch, L, H)),
  });
  const ref = outputs(), fused = outputs();
  const noFlags = gpu.buffer("no flags", gateOutputBytes(maxBatch, L, H));
  const ops: GpuOp[] = [createWgkvPromote(gpu, { label: "promote ref", kv: refKv })];
  const fusedOps: GpuOp[] = [createWgkvPromote(gpu, { label: "promote fused", kv: fusedKv })];
  for (let layer = 0; layer < L; layer++) {
    ops.push(createWriteGate(gpu, {
      label: `gate ${layer}`,
      kvHeads: H,
      headDim: D,
      inner: c.inner,
      layers: L,
      layer,
      maxTokens: maxBatch,
      step,
      preK: layerRows(preK, layer),
      postK: layerRows(postK, layer),
      params: {
        buffer: params.buffer,
        offset: layer * params.strideFloats * 4,
        size: gateLayerFloats(c) * 4,
      },
      ...ref,
      append: { kv: refKv, v: layerRows(v, layer) },
    }));
    fusedOps.push(createWgkvAppend(gpu, {
      label: `ring store ${layer}`,
      kv: fusedKv,
      layer,
      maxTokens: maxBatch,
      k: layerRows(postK, layer),
      v: layerRows(v, layer),
      gateFlags: noFlags,
      step,
    }));
  }
  const scratch = gpu.buffer("scratch", gateLayersScratchBytes(maxBatch, L, H, c.inner));
  fusedOps.push(createWriteGateLayers(gpu, {
    label: "gates",
    kvHeads: H,
    headDim: D,
    inner: c.inner,
    layers: L,
    maxTokens: maxBatch,
    step,
    preK,
    postK,
    params,
    ...fused,
    scratch,
    kv: fusedKv,
  }));
  const slot = refKv.openSequence();
  equal(fusedKv.openSequence(), slot);
  let pos = 0, admitted = 0, decided = 0;
  for (const n of c.steps) {
    for (const kv of [refKv, fusedKv]) kv.beginStep(slot, n, pos);
    step.set(n, pos);
    for (const b of [preK, postK, v]) {
      gpu.device.queue.writeBuffer(b, 0, randomF32(b.size / 4, 2) as Float32Array<ArrayBuffer>);
    }
    for (const b of [ref.flags, fused.flags]) {
      gpu.device.queue.writeBuffer(b, 0, new Uint32Array(maxBatch * L * H).fill(7));
    }
    await submitValidated(gpu, [...ops, ...fusedOps]);
    const words = n * L * H;
    const [refFlags, fusedFlags, refScores, fusedScores] = await Promise.all(
      [ref.flags, fused.flags, ref.scores, fused.scores].map((b) => gpu.readU32(b, 0, words)),
    );
    deepEqual(fusedFlags, refFlags, `${what}: flags at ${pos}+${n}`);
    deepEqual(fusedScores, refScores, `${what}: scores (bits) at ${pos}+${n}`);
    ok(refFlags.every((f) => f <= 1), `${what}: every flag written`);
    admitted += refFlags.reduce((a, b) => a + b, 0);
    decided += words;
    for (const kv of [refKv, fusedKv]) kv.endStep(slot, refFlags);
    pos += n;
  }
  ok(admitted > 0 && admitted < decided, `${what}: admitted ${admitted} of ${decided}, both decisions`);
  ok(refKv.stats().globalPages > 0, `${what}: tokens were promoted`);
  await expectSameDualCaches(gpu, refKv, fusedKv, what);
  for (const b of [preK, postK, v, params.buffer, noFlags, scratch, step.buffer]) b.destroy();
  for (const b of [ref.scores, ref.flags, fused.scores, fused.flags]) b.destroy();
  refKv.destroy();
  fusedKv.destroy();
}

Deno.test("write gates after the last layer: the flags, scores, slot info and pools of the per-layer gates (decode steps, odd shapes, shards)", async () => {
  await compareLayerGates({
    headDim: 8,
    kvHeads: 3,
    layers: 3,
    inner: 40,
    maxBatch: 1,
    window: 16,
    steps: Array.from({ length: 70 }, () => 1),
    shards: 3,
  });
  await compareLayerGates({
    headDim: 64,
    kvHeads: 2,
    layers: 2,
    inner: 33,
    maxBatch: 3,
    window: 16,
    steps: Array.from({ length: 40 }, (_, i) => [1, 3, 2, 1][i % 4]),
  });
});

Deno.test("write gates after the last layer: when they apply, and one-line errors", async () => {
  const gpu = await getGpu();
  const c = { headDim: 8, kvHeads: 2, layers: 2, inner: 8 };
  const kv = await DualCache.create(gpu, {
    ...c,
    policy: { kind: "wgkv", window: 4, threshold: 0.1, gate: null },
    maxBatch: 2,
    maxGlobalTokens: 32,
  });
  const step = new StepParams(gpu, 8);
  const rows = gpu.buffer("rows", c.layers * gateKeyRowsBytes(8, c.kvHeads, c.headDim));
  const params = gateParams(gpu, { ...c, maxBatch: 1, window: 4, steps: [] });
  const base = {
    label: "gates",
    ...c,
    maxTokens: 2,
    step,
    preK: rows,
    postK: rows,
    params,
    scores: gpu.buffer("scores", gateOutputBytes(8, c.layers, c.kvHeads)),
    flags: gpu.buffer("flags", gateOutputBytes(8, c.layers, c.kvHeads)),
    kv,
  };
  createWriteGateLayers(gpu, base);
  throws(
    () => createWriteGateLayers(gpu, { ...base, maxTokens: 5 }),
    (e) => e instanceof BadFlagError && /steps of at most the window \(4\), not 5/.test(e.message),
  );
  throws(
    () => createWriteGateLayers(gpu, { ...base, headDim: 16 }),
    (e) => e instanceof BadFlagError && /the gate has headDim 16, the cache 8/.test(e.message),
  );
  throws(
    () => createWriteGateLayers(gpu, { ...base, params: { ...params, strideFloats: 64 } }),
    (e) => e instanceof BadFlagError && /params stride 64 is below a layer's \d+ floats/.test(e.message),
  );
  throws(
    () => createWriteGateLayers(gpu, { ...base, preK: gpu.buffer("short", 64) }),
    (e) => e instanceof BadFlagError && /'preK'/.test(e.message),
  );
  // The blocker: all layers' weights in one binding, and the grid.
  const uploaded = { layers: [], buffers: [] };
  ok(/do not fit one binding/.test(writeGateLayersBlocker(gpu, uploaded, c, 2) ?? ""));
  equal(writeGateLayersBlocker(gpu, { ...uploaded, all: params }, c, 2), undefined);
  ok(/workgroups in one dimension/.test(
    writeGateLayersBlocker(gpu, { ...uploaded, all: params }, { ...c, inner: 32 * 65536 }, 2) ?? "",
  ));
  kv.destroy();
});
