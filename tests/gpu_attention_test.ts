import { ok } from "node:assert/strict";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createFlashDecode, createFlashPrefill } from "../src/gpu/ops/attention.ts";
import { createKvAppend } from "../src/gpu/ops/kv_append.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { attendOne } from "../src/model/ops.ts";
import { submitValidated } from "./gpu_ops_helpers.ts";

/** Random values in [-2, 2), never all zero. */
function random(n: number): Float32Array<ArrayBuffer> {
  return Float32Array.from({ length: n }, () => Math.random() * 4 - 2);
}

interface Shape {
  headDim: number;
  kvHeads: number;
  group: number;
  layers: number;
  maxTokens: number; // largest prefill chunk
  maxTokensPerHead: number;
  seqSlots: number;
  splits?: number;
  maxShardBytes?: number;
}

/** One cache plus the ops of every layer, and the CPU mirror of what the cache should hold. */
class Harness {
  readonly qHeads: number;
  readonly step: StepParams;
  readonly kBuf: GPUBuffer;
  readonly vBuf: GPUBuffer;
  readonly qBuf: GPUBuffer;
  readonly outBuf: GPUBuffer;
  readonly prefill: GpuOp[][] = []; // [layer] = [append, attention]
  readonly decode: GpuOp[][] = [];
  /** keys[slot][layer][head] = f16-rounded keys, token-major. */
  readonly keys: number[][][][];
  readonly values: number[][][][];

  constructor(readonly gpu: Gpu, readonly kv: KvCache, readonly shape: Shape) {
    const { headDim: D, kvHeads, group, layers, maxTokens, seqSlots } = shape;
    this.qHeads = kvHeads * group;
    this.step = new StepParams(gpu, maxTokens);
    this.kBuf = gpu.buffer("k", maxTokens * kvHeads * D * 4);
    this.vBuf = gpu.buffer("v", maxTokens * kvHeads * D * 4);
    this.qBuf = gpu.buffer("q", maxTokens * this.qHeads * D * 4);
    this.outBuf = gpu.buffer("out", maxTokens * this.qHeads * D * 4);
    const partials = gpu.buffer("partials", (shape.splits ?? 32) * this.qHeads * (D + 2) * 4);
    for (let layer = 0; layer < layers; layer++) {
      const append = createKvAppend(gpu, {
        label: `append ${layer}`,
        kv,
        layer,
        maxTokens,
        k: this.kBuf,
        v: this.vBuf,
        step: this.step,
      });
      const common = { kv, layer, qHeads: this.qHeads, q: this.qBuf, out: this.outBuf };
      this.prefill.push([
        append,
        createFlashPrefill(gpu, { ...common, label: `prefill ${layer}`, maxTokens, step: this.step }),
      ]);
      this.decode.push([
        append,
        createFlashDecode(gpu, { ...common, label: `decode ${layer}`, splits: shape.splits, partials }),
      ]);
    }
    const nest = () =>
      Array.from(
        { length: seqSlots },
        () => Array.from({ length: layers }, () => Array.from({ length: kvHeads }, () => [] as number[])),
      );
    this.keys = nest();
    this.values = nest();
  }

  /** Runs `m` new tokens of `slot` through every layer (prefill ops, or decode ops when `decode`), checks them. */
  async run(slot: number, m: number, decode: boolean): Promise<void> {
    const { gpu, kv, shape } = this;
    const { headDim: D, kvHeads, layers } = shape;
    const qHeads = this.qHeads;
    kv.append(slot, m);
    kv.flush();
    kv.selectSequence(slot);
    this.step.set(m);
    for (let layer = 0; layer < layers; layer++) {
      const k = random(m * kvHeads * D), v = random(m * kvHeads * D), q = random(m * qHeads * D);
      gpu.device.queue.writeBuffer(this.kBuf, 0, k);
      gpu.device.queue.writeBuffer(this.vBuf, 0, v);
      gpu.device.queue.writeBuffer(this.qBuf, 0, q);
      gpu.device.queue.writeBuffer(this.outBuf, 0, new Float32Array(this.outBuf.size / 4).fill(NaN));
      await submitValidated(gpu, (decode ? this.decode : this.prefill)[layer]);
      for (let t = 0; t < m; t++) {
        for (let h = 0; h < kvHeads; h++) {
          for (let d = 0; d < D; d++) {
            this.keys[slot][layer][h].push(Math.f16round(k[(t * kvHeads + h) * D + d]));
            this.values[slot][layer][h].push(Math.f16round(v[(t * kvHeads + h) * D + d]));
          }
        }
      }
      const got = await gpu.readF32(this.outBuf, 0, m * qHeads * D);
      const want = new Float32Array(m * qHeads * D);
      for (let t = 0; t < m; t++) {
        for (let hq = 0; hq < qHeads; hq++) {
          const h = Math.floor(hq / shape.group);
          const len = kv.length(slot, layer, h); // ragged: each KV head has its own length
          const keys = Float32Array.from(this.keys[slot][layer][h]);
          const values = Float32Array.from(this.values[slot][layer][h]);
          const o = (t * qHeads + hq) * D;
          attendOne(want, q, keys, values, len - m + t + 1, D, D, 0, 1 / Math.sqrt(D), o, o);
        }
      }
      for (let i = 0; i < want.length; i++) {
        const err = Math.abs(got[i] - want[i]);
        ok(
          err <= 1e-4 + 1e-4 * Math.abs(want[i]), // K/V are rounded to f16 in the reference too
          `${decode ? "decode" : "prefill"} slot ${slot} layer ${layer} m ${m}: out[${i}] = ${got[i]}, want ${
            want[i]
          }`,
        );
      }
    }
  }
}

/** Cuts one (layer, head) row of `slot` to `tokens` tokens, in the cache and in the harness's mirror. */
function truncateHead(h: Harness, slot: number, layer: number, head: number, tokens: number): void {
  h.kv.truncateHead(slot, layer, head, tokens);
  h.keys[slot][layer][head].length = tokens * h.shape.headDim;
  h.values[slot][layer][head].length = tokens * h.shape.headDim;
}

/** Scatters the free list: allocates pages to a throw-away sequence in odd pieces and frees some of them. */
function scatterPages(kv: KvCache): void {
  const slot = kv.openSequence();
  const junk = kv.pool.allocate(Math.floor(kv.pool.freePages / 2));
  kv.pool.release(junk.filter((_, i) => i % 3 !== 1));
  kv.closeSequence(slot);
}

async function harness(shape: Shape): Promise<Harness> {
  const gpu = await getGpu();
  const kv = await KvCache.create(gpu, {
    layers: shape.layers,
    kvHeads: shape.kvHeads,
    headDim: shape.headDim,
    maxTokensPerHead: shape.maxTokensPerHead,
    seqSlots: shape.seqSlots,
    pages: shape.seqSlots * shape.layers * shape.kvHeads * Math.ceil(shape.maxTokensPerHead / 16) + 40,
    maxShardBytes: shape.maxShardBytes,
  });
  scatterPages(kv);
  return new Harness(gpu, kv, shape);
}

Deno.test("gpu attention: head_dim 8, G 2, prefill in two chunks then decode, 3 pool shards", async () => {
  const h = await harness({
    headDim: 8,
    kvHeads: 2,
    group: 2,
    layers: 2,
    maxTokens: 20,
    maxTokensPerHead: 64,
    seqSlots: 1,
    maxShardBytes: 12 * 512,
  });
  ok(h.kv.shards.length >= 3, `shards: ${h.kv.shards.length}`);
  const s = h.kv.openSequence();
  await h.run(s, 17, false); // 17
  await h.run(s, 16, false); // 33: the second chunk attends to the first through the cache
  for (let i = 0; i < 3; i++) await h.run(s, 1, true); // 34..36
  h.kv.destroy();
});

Deno.test("gpu attention: head_dim 16, G 4, one-token prefill then decode through 15, 16, 17", async () => {
  const h = await harness({
    headDim: 16,
    kvHeads: 1,
    group: 4,
    layers: 1,
    maxTokens: 16,
    maxTokensPerHead: 48,
    seqSlots: 1,
    splits: 3,
  });
  const s = h.kv.openSequence();
  await h.run(s, 1, false);
  for (let len = 2; len <= 17; len++) await h.run(s, 1, true);
  h.kv.destroy();
});

Deno.test("gpu attention: head_dim 64, G 1 and G 4, lengths 15, 33, 100", async () => {
  const a = await harness({
    headDim: 64,
    kvHeads: 2,
    group: 1,
    layers: 1,
    maxTokens: 100,
    maxTokensPerHead: 112,
    seqSlots: 1,
    maxShardBytes: 20 * 4096,
  });
  const s = a.kv.openSequence();
  await a.run(s, 100, false);
  await a.run(s, 1, true);
  a.kv.destroy();
  const b = await harness({
    headDim: 64,
    kvHeads: 1,
    group: 4,
    layers: 1,
    maxTokens: 18,
    maxTokensPerHead: 48,
    seqSlots: 1,
    splits: 2,
  });
  const t = b.kv.openSequence();
  await b.run(t, 15, false);
  await b.run(t, 18, false);
  await b.run(t, 1, true);
  b.kv.destroy();
});

Deno.test("gpu attention: several sequences share the pool, interleaved, one closed and reopened", async () => {
  const h = await harness({
    headDim: 8,
    kvHeads: 2,
    group: 2,
    layers: 2,
    maxTokens: 20,
    maxTokensPerHead: 64,
    seqSlots: 3,
    maxShardBytes: 16 * 512,
  });
  const a = h.kv.openSequence(), b = h.kv.openSequence();
  await h.run(a, 5, false);
  await h.run(b, 20, false);
  await h.run(a, 1, true);
  await h.run(b, 1, true);
  h.kv.closeSequence(a);
  for (const row of [...h.keys[a], ...h.values[a]]) for (const list of row) list.length = 0;
  const c = h.kv.openSequence();
  await h.run(c, 19, false);
  await h.run(b, 3, false);
  await h.run(c, 1, true);
  h.kv.destroy();
});

Deno.test("gpu attention: ragged lengths per KV head (rows cut to 3, 16, 17, 40 tokens), prefill and decode", async () => {
  const h = await harness({
    headDim: 16,
    kvHeads: 4,
    group: 2,
    layers: 2,
    maxTokens: 40,
    maxTokensPerHead: 96,
    seqSlots: 1,
    splits: 4,
  });
  const s = h.kv.openSequence();
  await h.run(s, 40, false);
  const cuts = [3, 16, 17, 40];
  for (let layer = 0; layer < 2; layer++) {
    for (let head = 0; head < 4; head++) truncateHead(h, s, layer, head, cuts[(head + layer) % 4]);
  }
  await h.run(s, 1, true);
  await h.run(s, 21, false);
  await h.run(s, 1, true);
  h.kv.destroy();
});
