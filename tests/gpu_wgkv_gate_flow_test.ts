import { equal, ok } from "node:assert/strict";
import { getGpu } from "../src/gpu/device.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { createWgkvAppend } from "../src/gpu/ops/wgkv_append.ts";
import { createWgkvPromote } from "../src/gpu/ops/wgkv_promote.ts";
import { createWriteGate, gateLayerFloats, gateOutputBytes } from "../src/gpu/ops/write_gate.ts";
import { DualCache } from "../src/kv/dual_cache.ts";
import { randomF32 } from "./gpu_ops_helpers.ts";

Deno.test("wgkv flow: gate flags → ring append → readback of the step's flags → promotions planned from them", async () => {
  const gpu = await getGpu();
  const L = 2, H = 2, D = 16, inner = 16, maxBatch = 8, W = 16;
  const kv = await DualCache.create(gpu, {
    layers: L,
    kvHeads: H,
    headDim: D,
    maxBatch,
    maxGlobalTokens: 64,
    policy: { kind: "wgkv", window: W, threshold: 0.1, gate: null },
  });
  const C = kv.ringTokens;
  const step = new StepParams(gpu, maxBatch);
  const k = gpu.buffer("k", maxBatch * H * D * 4), v = gpu.buffer("v", maxBatch * H * D * 4);
  const preK = gpu.buffer("pre k", maxBatch * H * D * 4);
  const scores = gpu.buffer("scores", gateOutputBytes(maxBatch, L, H));
  const flags = gpu.buffer("flags", gateOutputBytes(maxBatch, L, H));
  const readback = gpu.device.createBuffer({ size: gateOutputBytes(maxBatch, L, H), usage: 0x01 | 0x08 });
  const ops = [createWgkvPromote(gpu, { label: "promote", kv })];
  for (let layer = 0; layer < L; layer++) {
    // Random weights with a wide second layer, so that both decisions occur.
    const params = randomF32(gateLayerFloats({ kvHeads: H, headDim: D, inner }), 0.5);
    params.fill(1, 0, 2 * D);
    const b2 = gateLayerFloats({ kvHeads: H, headDim: D, inner }) - H;
    for (let h = 0; h < H; h++) params[b2 + h] = -1.5;
    const common = { kvHeads: H, headDim: D, inner, layers: L, layer, maxTokens: maxBatch, step };
    ops.push(
      createWriteGate(gpu, {
        ...common,
        label: `gate ${layer}`,
        preK,
        postK: k,
        params: gpu.buffer(`gate ${layer}`, params.byteLength, params),
        scores,
        flags,
      }),
      createWgkvAppend(gpu, {
        label: `append ${layer}`,
        kv,
        layer,
        maxTokens: maxBatch,
        k,
        v,
        gateFlags: flags,
        step,
      }),
    );
  }
  const slot = kv.openSequence();
  const history: number[][] = []; // [position][layer·H + head]
  let pos = 0;
  for (const n of [8, 8, 8, 1, 1, 1, 5, 8, 8]) {
    kv.beginStep(slot, n, pos);
    step.set(n, pos);
    gpu.device.queue.writeBuffer(k, 0, randomF32(maxBatch * H * D, 2) as Float32Array<ArrayBuffer>);
    gpu.device.queue.writeBuffer(v, 0, randomF32(maxBatch * H * D, 2) as Float32Array<ArrayBuffer>);
    gpu.device.queue.writeBuffer(preK, 0, randomF32(maxBatch * H * D, 2) as Float32Array<ArrayBuffer>);
    const encoder = gpu.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    for (const op of ops) op.encode(pass);
    pass.end();
    encoder.copyBufferToBuffer(flags, 0, readback, 0, n * L * H * 4); // what the forward pass reads back
    gpu.device.queue.submit([encoder.finish()]);
    await readback.mapAsync(0x0001, 0, n * L * H * 4);
    const stepFlags = new Uint32Array(readback.getMappedRange(0, n * L * H * 4).slice(0));
    readback.unmap();
    kv.endStep(slot, stepFlags);
    for (let t = 0; t < n; t++) history.push(Array.from(stepFlags.subarray(t * L * H, (t + 1) * L * H)));
    pos += n;
  }
  const all = history.flat();
  ok(all.includes(0) && all.includes(1), "both decisions occurred");
  const info = await gpu.readU32(kv.slotInfo);
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const row = kv.tables.rowOf(slot, l, h);
      for (let s = 0; s < C; s++) {
        const p = pos - 1 - ((pos - 1 - s) % C + C) % C; // newest position in slot s
        const want = p * 2 + history[p][l * H + h];
        equal(info[row * C + s], want, `layer ${l} head ${h} slot ${s}`);
      }
      const promoted = history.slice(0, pos - C).filter((f) => f[l * H + h] === 1).length;
      equal(kv.globalLength(slot, l, h), promoted);
    }
  }
  kv.destroy();
});
