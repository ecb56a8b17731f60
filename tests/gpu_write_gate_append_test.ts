import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { BadFlagError, UnsupportedError } from "../src/errors.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { createWgkvAppend } from "../src/gpu/ops/wgkv_append.ts";
import { createWgkvPromote } from "../src/gpu/ops/wgkv_promote.ts";
import {
  createWriteGate,
  gateLayerFloats,
  gateOutputBytes,
  gateScratchBytes,
} from "../src/gpu/ops/write_gate.ts";
import {
  WRITE_GATE_APPEND_STORAGE_BINDINGS,
  WRITE_GATE_CHAIN_STORAGE_BINDINGS,
  writeGateAppendBlocker,
} from "../src/gpu/ops/write_gate_append.ts";
import { DualCache } from "../src/kv/dual_cache.ts";
import { pageBytes } from "../src/kv/page_pool.ts";
import { expectSameDualCaches, randomF32, submitValidated, twinDualCaches } from "./gpu_ops_helpers.ts";

interface FusedAppendCase {
  headDim: number;
  kvHeads: number;
  layers: number;
  inner: number;
  maxBatch: number;
  window: number;
  /** Tokens of each step (several times around the ring). */
  steps: number[];
  /** Pool shards to force (the pages split evenly), or one. */
  shards?: number;
  /** The fused gates as a decode chain (`WriteGateOptions.chain`): each layer finishes the previous one. */
  chain?: boolean;
}

/** Random gate weights of one layer whose scores land on both sides of 0.1. */
function gateParams(gpu: Gpu, c: FusedAppendCase, layer: number): GPUBuffer {
  const shape = { kvHeads: c.kvHeads, headDim: c.headDim, inner: c.inner };
  const params = randomF32(gateLayerFloats(shape), 0.5);
  params.fill(1, 0, 2 * c.headDim); // norm weights
  const b2 = gateLayerFloats(shape) - c.kvHeads;
  for (let h = 0; h < c.kvHeads; h++) params[b2 + h] = -1.5;
  return gpu.buffer(`gate ${layer}`, params.byteLength, params);
}

async function compareFusedAppend(c: FusedAppendCase): Promise<void> {
  const gpu = await getGpu();
  const { headDim: D, kvHeads: H, layers: L, maxBatch } = c;
  const what = `head_dim ${D}, ${H} KV heads, ${L} layers, steps ${c.steps}${c.chain ? ", chained" : ""}`;
  const [refKv, fusedKv] = await twinDualCaches(gpu, c, 120, 96);
  equal(refKv.shards.length, c.shards ?? 1, `${what}: shards`);
  const C = refKv.ringTokens;
  ok(c.steps.reduce((a, b) => a + b, 0) > 2 * C, `${what}: the ring wraps twice`);
  const step = new StepParams(gpu, maxBatch);
  const rowBytes = maxBatch * H * D * 4;
  const preK = gpu.buffer("pre k", rowBytes), postK = gpu.buffer("post k", rowBytes);
  const v = gpu.buffer("v", rowBytes);
  const outputs = () => ({
    scores: gpu.buffer("scores", gateOutputBytes(maxBatch, L, H)),
    flags: gpu.buffer("flags", gateOutputBytes(maxBatch, L, H)),
  });
  const ref = outputs(), fused = outputs();
  // Reference: promote, then per layer the gate and the separate append; fused: promote, then the gates.
  const ops: GpuOp[] = [createWgkvPromote(gpu, { label: "promote ref", kv: refKv })];
  const fusedOps: GpuOp[] = [createWgkvPromote(gpu, { label: "promote fused", kv: fusedKv })];
  const allParams: GPUBuffer[] = [];
  // A chain shares one scratch (each layer reads the previous layer's partial logits).
  const chainScratch = gpu.buffer("chain scratch", gateScratchBytes(maxBatch, H, c.inner, true));
  for (let layer = 0; layer < L; layer++) {
    const params = gateParams(gpu, c, layer);
    allParams.push(params);
    const common = {
      kvHeads: H,
      headDim: D,
      inner: c.inner,
      layers: L,
      layer,
      maxTokens: maxBatch,
      step,
      preK,
      postK,
      params,
    };
    ops.push(
      createWriteGate(gpu, { ...common, label: `gate ${layer}`, ...ref }),
      createWgkvAppend(gpu, {
        label: `append ${layer}`,
        kv: refKv,
        layer,
        maxTokens: maxBatch,
        k: postK,
        v,
        gateFlags: ref.flags,
        step,
      }),
    );
    fusedOps.push(
      createWriteGate(gpu, {
        ...common,
        label: `gate+append ${layer}`,
        ...fused,
        append: { kv: fusedKv, v },
        chain: c.chain
          ? { finishLater: layer < L - 1, previousParams: layer > 0 ? allParams[layer - 1] : undefined }
          : undefined,
        scratch: c.chain ? chainScratch : undefined,
      }),
    );
  }
  const slot = refKv.openSequence();
  equal(fusedKv.openSequence(), slot);
  let pos = 0, admitted = 0, decided = 0;
  for (const n of c.steps) {
    for (const kv of [refKv, fusedKv]) kv.beginStep(slot, n, pos);
    step.set(n, pos);
    for (const b of [preK, postK, v]) {
      gpu.device.queue.writeBuffer(b, 0, randomF32(maxBatch * H * D, 2) as Float32Array<ArrayBuffer>);
    }
    for (const b of [ref.flags, fused.flags]) {
      gpu.device.queue.writeBuffer(b, 0, new Uint32Array(maxBatch * L * H).fill(7));
    }
    await submitValidated(gpu, [...ops, ...fusedOps]);
    const words = n * L * H;
    const [refFlags, fusedFlags] = await Promise.all(
      [ref.flags, fused.flags].map((b) => gpu.readU32(b, 0, words)),
    );
    const [refScores, fusedScores] = await Promise.all(
      [ref.scores, fused.scores].map((b) => gpu.readU32(b, 0, words)),
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
  // Slot info, block tables and pools word for word, and the slot info what it must be.
  const { info: refInfo, nonZero } = await expectSameDualCaches(gpu, refKv, fusedKv, what);
  for (let r = 0; r < L * H; r++) {
    for (let s = 0; s < C; s++) {
      const newest = pos - 1 - ((pos - 1 - s) % C + C) % C;
      equal(refInfo[r * C + s] >>> 1, newest, `${what}: row ${r} slot ${s} position`);
    }
  }
  // Every ring slot holds a token (the ring wrapped), plus the promoted tokens: K and V words of each.
  const globalTokens = refKv.stats().globalTokens.reduce((a, b) => a + b, 0);
  equal(nonZero, (L * H * C + globalTokens) * D, `${what}: words written`);
  for (
    const b of [preK, postK, v, ref.scores, ref.flags, fused.scores, fused.flags, step.buffer, chainScratch]
  ) {
    b.destroy();
  }
  refKv.destroy();
  fusedKv.destroy();
}

Deno.test("write gate append: head_dim 8, 3 KV heads, 2 layers, 3 shards: decode and prefill steps, ring wrapping", async () => {
  for (const chain of [false, true]) {
    await compareFusedAppend({
      chain,
      headDim: 8,
      kvHeads: 3,
      layers: 2,
      inner: 24,
      maxBatch: 5,
      window: 16,
      steps: [5, 1, 1, 3, 5, 5, 1, 1, 1, 4, 5, 5, 2, 1, 1, 1, 5, 5, 5, 1, 1, 5, 3, 1, 5],
      shards: 3,
    });
  }
});

Deno.test("write gate append: head_dim 64, 2 KV heads, 4 shards, one token per step", async () => {
  await compareFusedAppend({
    headDim: 64,
    kvHeads: 2,
    layers: 1,
    inner: 40,
    maxBatch: 1,
    window: 20,
    steps: Array.from({ length: 70 }, () => 1),
    shards: 4,
  });
});

Deno.test("write gate append: head_dim 64, 1 KV head, 3 layers, one shard, several tokens per step", async () => {
  for (const chain of [false, true]) {
    await compareFusedAppend({
      chain,
      headDim: 64,
      kvHeads: 1,
      layers: 3,
      inner: 33,
      maxBatch: 7,
      window: 16,
      steps: [7, 6, 1, 7, 1, 1, 7, 3, 7, 7, 1, 2, 7, 5, 1, 7],
    });
  }
});

Deno.test("write gate append: when it applies, and one-line errors", async () => {
  const gpu = await getGpu();
  const D = 8, H = 2, L = 2, inner = 8;
  const kv = await DualCache.create(gpu, {
    layers: L,
    kvHeads: H,
    headDim: D,
    policy: { kind: "wgkv", window: 16, threshold: 0.1, gate: null },
    maxBatch: 2,
    maxGlobalTokens: 32,
    pages: 24,
    maxShardBytes: 8 * pageBytes(D),
  });
  const shards = kv.shards.length;
  equal(shards, 3);
  // The storage bindings: the gate's own with the values, block table and slot info, one per shard.
  const needed = WRITE_GATE_APPEND_STORAGE_BINDINGS + shards;
  equal(writeGateAppendBlocker({ maxStorageBuffersPerShaderStage: needed }, kv), undefined);
  ok(/binds 11 storage buffers \(3 pool shards\), this GPU allows 10/.test(
    writeGateAppendBlocker({ maxStorageBuffersPerShaderStage: needed - 1 }, kv) ?? "",
  ));
  const step = new StepParams(gpu, 2);
  // Large enough for a gate of head_dim 16 too (the shape mismatch below).
  const rows = gpu.buffer("rows", 2 * H * 16 * 4);
  const base = {
    label: "gate",
    kvHeads: H,
    headDim: D,
    inner,
    layers: L,
    layer: 1,
    maxTokens: 2,
    step,
    preK: rows,
    postK: rows,
    params: gpu.buffer("params", gateLayerFloats({ kvHeads: H, headDim: 16, inner }) * 4),
    scores: gpu.buffer("scores", gateOutputBytes(2, L, H)),
    flags: gpu.buffer("flags", gateOutputBytes(2, L, H)),
    append: { kv, v: rows },
  };
  createWriteGate(gpu, base);
  throws(() => createWriteGate(gpu, { ...base, append: { kv, v: gpu.buffer("v", 16) } }), /append.v/);
  throws(
    () => createWriteGate(gpu, { ...base, headDim: 16 }),
    (e) => e instanceof BadFlagError && /the gate has headDim 16, the cache 8/.test(e.message),
  );
  const windowKv = await DualCache.create(gpu, {
    layers: L,
    kvHeads: H,
    headDim: D,
    policy: { kind: "window", window: 16 },
    maxBatch: 2,
    maxGlobalTokens: 0,
  });
  throws(
    () => createWriteGate(gpu, { ...base, append: { kv: windowKv, v: rows } }),
    (e) => e instanceof BadFlagError && /policy is window/.test(e.message),
  );
  // A decode chain: one shared scratch, the append, a previous layer, steps within the window, and room for
  // the keys before RoPE and the previous layer's weights.
  const scratch = gpu.buffer("scratch", gateScratchBytes(2, H, inner, true));
  const chained = { ...base, scratch, chain: { finishLater: true, previousParams: base.params } };
  // A layer whose flags the next layer decides is one dispatch; the last of a chain, and a gate outside
  // one, keep the second.
  const dispatches = (op: GpuOp) => {
    let n = 0;
    op.encode({
      setPipeline() {},
      setBindGroup() {},
      dispatchWorkgroups() {
        n++;
      },
    } as unknown as GPUComputePassEncoder);
    return n;
  };
  equal(dispatches(createWriteGate(gpu, chained)), 1);
  equal(
    dispatches(
      createWriteGate(gpu, { ...chained, chain: { finishLater: false, previousParams: base.params } }),
    ),
    2,
  );
  equal(dispatches(createWriteGate(gpu, base)), 2);
  throws(() => createWriteGate(gpu, { ...chained, scratch: undefined }), /must share a scratch/);
  throws(
    () => createWriteGate(gpu, { ...chained, append: undefined }),
    /chain of write gates needs the ring/,
  );
  throws(() => createWriteGate(gpu, { ...chained, layer: 0 }), /layer 0 has no previous layer/);
  throws(
    () => createWriteGate(gpu, { ...chained, scratch: gpu.buffer("small", gateScratchBytes(2, H, inner)) }),
    /'scratch' holds/,
  );
  const bigStep = new StepParams(gpu, 17);
  const bigRows = gpu.buffer("big rows", 17 * H * D * 4);
  throws(
    () =>
      createWriteGate(gpu, {
        ...chained,
        step: bigStep,
        maxTokens: 17,
        preK: bigRows,
        postK: bigRows,
        scores: gpu.buffer("scores 17", gateOutputBytes(17, L, H)),
        flags: gpu.buffer("flags 17", gateOutputBytes(17, L, H)),
        scratch: gpu.buffer("scratch 17", gateScratchBytes(17, H, inner, true)),
        append: { kv, v: bigRows },
      }),
    /steps of at most the window \(16\), not 17/,
  );
  const chainNeeds = WRITE_GATE_CHAIN_STORAGE_BINDINGS + shards;
  equal(writeGateAppendBlocker({ maxStorageBuffersPerShaderStage: chainNeeds }, kv, true), undefined);
  ok(/in a chain binds 13 storage buffers \(3 pool shards\), this GPU allows 12/.test(
    writeGateAppendBlocker({ maxStorageBuffersPerShaderStage: chainNeeds - 1 }, kv, true) ?? "",
  ));
  // A GPU whose stage limit is too low for the shards refuses the fusion by name.
  const lowLimits = { limits: { maxStorageBuffersPerShaderStage: needed - 1 } } as unknown as Gpu;
  throws(
    () => createWriteGate(lowLimits, base),
    (e) => e instanceof UnsupportedError && /cannot append to the ring: .* allows 10/.test(e.message),
  );
  kv.destroy();
  windowKv.destroy();
});
