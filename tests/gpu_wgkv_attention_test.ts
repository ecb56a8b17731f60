import { equal, ok } from "node:assert/strict";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createFlashDecode, createFlashPrefill } from "../src/gpu/ops/attention.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { createWgkvAppend } from "../src/gpu/ops/wgkv_append.ts";
import { createWgkvPromote } from "../src/gpu/ops/wgkv_promote.ts";
import { gateOutputBytes } from "../src/gpu/ops/write_gate.ts";
import { DualCache } from "../src/kv/dual_cache.ts";
import { PAGE_TOKENS, pageBytes, pagesForTokens } from "../src/kv/page_pool.ts";
import { admitsByRule, type WindowedPolicy } from "../src/kv/wgkv_policy.ts";
import { attendOne } from "../src/model/ops.ts";
import { attendedPositions, type MaskPolicy } from "../src/kv/wgkv_reference.ts";
import { randomF32, submitValidated } from "./gpu_ops_helpers.ts";

interface Shape {
  headDim: number;
  kvHeads: number;
  group: number;
  layers: number;
  maxBatch: number;
  maxShardBytes?: number;
}

/**
 * The dense reference mask (src/kv/wgkv_reference.ts) of one KV head, given that head's admission flags of
 * every position so far.
 */
type Visibility = (flags: Uint8Array) => MaskPolicy;

const wgkvMask = (window: number): Visibility => (flags) => ({
  kind: "wgkv",
  window,
  flags,
  length: flags.length,
});

/**
 * A dual cache with promote / append / attention ops of every layer, and a dense CPU mirror of every
 * token's f16 key and value and admission flag, per (layer, head).
 */
class Harness {
  readonly qHeads: number;
  readonly step: StepParams;
  readonly k: GPUBuffer[] = [];
  readonly v: GPUBuffer[] = [];
  readonly q: GPUBuffer[] = [];
  readonly out: GPUBuffer[] = [];
  readonly gateFlags: GPUBuffer;
  readonly promote: GpuOp;
  readonly prefill: GpuOp[][] = [];
  readonly decode: GpuOp[][] = [];
  /** keys[layer][head] = f16-rounded keys of every position, position-major. */
  readonly keys: number[][][];
  readonly values: number[][][];
  /** flags[layer][head][position]. */
  readonly flags: boolean[][][];
  readonly slot: number;
  /** Pages held by others before the sequence opened. */
  readonly baseline: number;

  constructor(readonly gpu: Gpu, readonly kv: DualCache, readonly shape: Shape) {
    const { headDim: D, kvHeads: H, group, layers: L, maxBatch } = shape;
    this.qHeads = H * group;
    this.step = new StepParams(gpu, maxBatch);
    this.gateFlags = gpu.buffer("gate flags", gateOutputBytes(maxBatch, L, H));
    this.promote = createWgkvPromote(gpu, { label: "promote", kv, maxTokens: 2 }); // a small grid: prefill plans take several strides
    const partials = gpu.buffer("partials", 32 * this.qHeads * (D + 2) * 4);
    for (let layer = 0; layer < L; layer++) {
      this.k.push(gpu.buffer(`k ${layer}`, maxBatch * H * D * 4));
      this.v.push(gpu.buffer(`v ${layer}`, maxBatch * H * D * 4));
      this.q.push(gpu.buffer(`q ${layer}`, maxBatch * this.qHeads * D * 4));
      this.out.push(gpu.buffer(`out ${layer}`, maxBatch * this.qHeads * D * 4));
      const append = createWgkvAppend(gpu, {
        label: `append ${layer}`,
        kv,
        layer,
        maxTokens: maxBatch,
        k: this.k[layer],
        v: this.v[layer],
        gateFlags: this.gateFlags,
        step: this.step,
      });
      const common = {
        kv,
        layer,
        qHeads: this.qHeads,
        q: this.q[layer],
        out: this.out[layer],
        wgkv: kv,
        step: this.step,
      };
      this.prefill.push([
        append,
        createFlashPrefill(gpu, { ...common, label: `prefill ${layer}`, maxTokens: maxBatch }),
      ]);
      this.decode.push([
        append,
        // Odd layers split (partials + reduce), even ones run the one-dispatch direct mode.
        createFlashDecode(gpu, {
          ...common,
          label: `decode ${layer}`,
          splits: 3,
          partials,
          directKeys: layer % 2 === 1 ? 0 : undefined,
        }),
      ]);
    }
    const nest = <T>() => Array.from({ length: L }, () => Array.from({ length: H }, () => [] as T[]));
    this.keys = nest();
    this.values = nest();
    this.flags = nest();
    this.baseline = kv.pool.usedPages;
    this.slot = kv.openSequence();
  }

  /**
   * Runs `m` new tokens through every layer (prefill ops, or decode ops when `decode`) and checks every
   * output against the dense masked reference `visible`. Gate flags (policy wgkv) are drawn at random.
   */
  async run(m: number, decode: boolean, visible: Visibility): Promise<void> {
    const { gpu, kv, shape, slot } = this;
    const { headDim: D, kvHeads: H, layers: L, group } = shape;
    const qHeads = this.qHeads;
    const pos0 = kv.tokens(slot);
    kv.beginStep(slot, m, pos0);
    this.step.set(m, pos0);
    const gate = Uint32Array.from({ length: m * L * H }, () => Math.random() < 0.3 ? 1 : 0);
    gpu.device.queue.writeBuffer(this.gateFlags, 0, gate);
    const inputs = [];
    for (let layer = 0; layer < L; layer++) {
      const k = randomF32(m * H * D, 2), v = randomF32(m * H * D, 2), q = randomF32(m * qHeads * D, 2);
      gpu.device.queue.writeBuffer(this.k[layer], 0, k as Float32Array<ArrayBuffer>);
      gpu.device.queue.writeBuffer(this.v[layer], 0, v as Float32Array<ArrayBuffer>);
      gpu.device.queue.writeBuffer(this.q[layer], 0, q as Float32Array<ArrayBuffer>);
      gpu.device.queue.writeBuffer(this.out[layer], 0, new Float32Array(this.out[layer].size / 4).fill(NaN));
      inputs.push({ k, v, q });
    }
    await submitValidated(gpu, [this.promote, ...(decode ? this.decode : this.prefill).flat()]);
    kv.endStep(slot, gate);
    for (let layer = 0; layer < L; layer++) {
      const { k, v, q } = inputs[layer];
      for (let t = 0; t < m; t++) {
        for (let h = 0; h < H; h++) {
          for (let d = 0; d < D; d++) {
            this.keys[layer][h].push(Math.f16round(k[(t * H + h) * D + d]));
            this.values[layer][h].push(Math.f16round(v[(t * H + h) * D + d]));
          }
          const rule = admitsByRule(kv.policy, layer, h, pos0 + t);
          this.flags[layer][h].push(rule ?? gate[(t * L + layer) * H + h] === 1);
        }
      }
      const got = await gpu.readF32(this.out[layer], 0, m * qHeads * D);
      const want = new Float32Array(m * qHeads * D);
      for (let t = 0; t < m; t++) {
        const qPos = pos0 + t;
        for (let hq = 0; hq < qHeads; hq++) {
          const h = Math.floor(hq / group);
          const mask = visible(Uint8Array.from(this.flags[layer][h], (f) => f ? 1 : 0));
          const seen = attendedPositions(mask, 0, qPos);
          const keys = new Float32Array(seen.length * D), values = new Float32Array(seen.length * D);
          seen.forEach((p, i) => {
            keys.set(this.keys[layer][h].slice(p * D, p * D + D), i * D);
            values.set(this.values[layer][h].slice(p * D, p * D + D), i * D);
          });
          const o = (t * qHeads + hq) * D;
          attendOne(want, q, keys, values, seen.length, D, D, 0, 1 / Math.sqrt(D), o, o);
        }
      }
      for (let i = 0; i < want.length; i++) {
        const err = Math.abs(got[i] - want[i]);
        ok(
          err <= 1e-4 + 1e-4 * Math.abs(want[i]),
          `${decode ? "decode" : "prefill"} at ${pos0}+${m}, layer ${layer}: out[${i}] = ${got[i]}, want ${
            want[i]
          }`,
        );
      }
    }
    this.checkBookkeeping();
  }

  /** Lengths, global lengths and bytes follow from the flags; every page has exactly one owner. */
  checkBookkeeping(): void {
    const { kv, slot, shape } = this;
    const T = kv.tokens(slot), C = kv.ringTokens;
    const owners = new Map<number, string>();
    let pages = 0;
    for (let l = 0; l < shape.layers; l++) {
      for (let h = 0; h < shape.kvHeads; h++) {
        const promoted = this.flags[l][h].slice(0, Math.max(0, T - C)).filter((f) => f).length;
        equal(kv.globalLength(slot, l, h), promoted, `layer ${l} head ${h}: global tokens`);
        equal(kv.length(slot, l, h), Math.min(T, C) + promoted, `layer ${l} head ${h}: row length`);
        const row = kv.tables.rowOf(slot, l, h);
        const held = kv.tables.pagesOfRow(row, kv.ringPages + pagesForTokens(promoted));
        for (const p of held) {
          ok(kv.pool.isUsed(p), `page ${p} is held but free`);
          ok(!owners.has(p), `page ${p} owned by ${owners.get(p)} and layer ${l} head ${h}`);
          owners.set(p, `layer ${l} head ${h}`);
          pages++;
        }
      }
    }
    equal(pages + this.baseline, kv.pool.usedPages);
    const stats = kv.stats(slot);
    equal(stats.usedBytes, pages * pageBytes(shape.headDim));
    equal(stats.fullBytes, shape.layers * shape.kvHeads * pagesForTokens(T) * pageBytes(shape.headDim));
  }
}

async function harness(shape: Shape, policy: WindowedPolicy, maxGlobalTokens = 128): Promise<Harness> {
  const gpu = await getGpu();
  const kv = await DualCache.create(gpu, {
    layers: shape.layers,
    kvHeads: shape.kvHeads,
    headDim: shape.headDim,
    policy,
    maxBatch: shape.maxBatch,
    maxGlobalTokens,
    pages: 200,
    maxShardBytes: shape.maxShardBytes,
  });
  // Scatter the free list so that rings and global pages are not contiguous.
  const junk = kv.pool.allocate(60);
  kv.pool.release(junk.filter((_, i) => i % 3 !== 1));
  return new Harness(gpu, kv, shape);
}

const small: Shape = { headDim: 8, kvHeads: 2, group: 2, layers: 2, maxBatch: 12, maxShardBytes: 40 * 512 };

Deno.test("wgkv attention: gate flags, W 16, prefill in chunks 12, 12, 7 then 40 decode steps (promotions)", async () => {
  const W = 16;
  const h = await harness(small, { kind: "wgkv", window: W, threshold: 0.1, gate: null });
  ok(h.kv.shards.length >= 2, `shards: ${h.kv.shards.length}`);
  equal(h.kv.ringTokens, 32); // ⌈(16 + 12 − 1) / 16⌉ · 16
  for (const m of [12, 12, 7]) await h.run(m, false, wgkvMask(W));
  for (let i = 0; i < 40; i++) await h.run(1, true, wgkvMask(W));
  ok(h.kv.stats().globalPages > 0, "tokens were promoted");
  h.kv.destroy();
});

Deno.test("wgkv attention: one 37-token prefill chunk (N > W = 20, W not a page multiple), then decode", async () => {
  const W = 20;
  const h = await harness({ ...small, maxBatch: 40, kvHeads: 1, group: 4, layers: 1 }, {
    kind: "wgkv",
    window: W,
    threshold: 0.1,
    gate: null,
  });
  await h.run(37, false, wgkvMask(W));
  for (let i = 0; i < 30; i++) await h.run(1, true, wgkvMask(W));
  await h.run(5, false, wgkvMask(W)); // a prefill chunk after decode (a new user turn)
  h.kv.destroy();
});

Deno.test("wgkv attention: all admitted ≡ full causal attention; none admitted ≡ sliding window", async () => {
  const W = 16;
  const all = await harness(small, { kind: "random", window: W, rate: 1, seed: 5 });
  const causal: Visibility = () => ({ kind: "full" });
  for (const m of [12, 9]) await all.run(m, false, causal);
  for (let i = 0; i < 20; i++) await all.run(1, true, causal);
  all.kv.destroy();
  const none = await harness(small, { kind: "window", window: W });
  const sliding: Visibility = () => ({ kind: "window", window: W });
  for (const m of [12, 9]) await none.run(m, false, sliding);
  for (let i = 0; i < 20; i++) await none.run(1, true, sliding);
  equal(none.kv.stats().globalPages, 0);
  none.kv.destroy();
});

Deno.test("wgkv attention: sink policy (4 sinks) and random policy (rate 0.4) match their dense masks", async () => {
  const W = 16;
  const sink = await harness(small, { kind: "sink", window: W, sinks: 4 });
  const sinkMask: Visibility = () => ({ kind: "sink", window: W, sinks: 4 });
  for (const m of [7, 12]) await sink.run(m, false, sinkMask);
  for (let i = 0; i < 20; i++) await sink.run(1, true, sinkMask);
  const s = sink.kv.stats();
  ok(Array.from(s.globalTokens).every((g) => g === 4), `global tokens ${s.globalTokens}`);
  sink.kv.destroy();
  const random = await harness(small, { kind: "random", window: W, rate: 0.4, seed: 1234 });
  for (const m of [12, 12]) await random.run(m, false, wgkvMask(W));
  for (let i = 0; i < 20; i++) await random.run(1, true, wgkvMask(W));
  const fractions = Array.from(random.kv.stats().admittedFraction);
  ok(fractions.every((f) => f > 0.1 && f < 0.75), `admitted fractions ${fractions}`);
  random.kv.destroy();
});

Deno.test("wgkv cache: pages return to the pool on close; page size is what the kernels assume", async () => {
  const h = await harness(small, { kind: "random", window: 16, rate: 0.5, seed: 9 });
  const before = h.baseline;
  await h.run(12, false, wgkvMask(16));
  for (let i = 0; i < 30; i++) await h.run(1, true, wgkvMask(16));
  h.kv.closeSequence(h.slot);
  equal(h.kv.pool.usedPages, before);
  equal(PAGE_TOKENS, 16);
  h.kv.destroy();
});
